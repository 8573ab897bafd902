{{/* Chart name, truncated to a DNS label. */}}
{{- define "llmstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource-name prefix: the release name, plus the chart name unless it already contains it. */}}
{{- define "llmstack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "llmstack.labels" -}}
{{- include "llmstack.checkLabels" (dict "labels" .Values.commonLabels "path" "commonLabels" "reserved" (include "llmstack.chartLabelKeys" . | fromJsonArray)) }}
helm.sh/chart: {{ include "llmstack.chart" . | quote }}
{{ include "llmstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: llmstack
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Label values are quoted: a name such as "405", "no" or "on" must stay a string. */}}
{{- define "llmstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmstack.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{/* Label keys the chart sets itself (a JSON list): user labels may not repeat them. */}}
{{- define "llmstack.chartLabelKeys" -}}
{{- list "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" "app.kubernetes.io/component" "model" | toJson }}
{{- end }}

{{/* Fails when a user label map repeats a key of `reserved` (a duplicate key, or a pod label
that no longer matches its Deployment's selector). Call with (dict "labels" L "path" P "reserved" R). */}}
{{- define "llmstack.checkLabels" -}}
{{- range $k, $_ := (.labels | default dict) }}
{{- if has $k $.reserved }}
{{- fail (printf "%s: the label %q is set by the chart (selectors and standard labels use it); remove it (reserved: %s)" $.path $k (join ", " $.reserved)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The router: name and selector labels. */}}
{{- define "llmstack.routerName" -}}
{{- printf "%s-router" (include "llmstack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when router replicas share their in-flight load (routerSpec.shareLoad). */}}
{{- define "llmstack.routerSharesLoad" -}}
{{- $r := .Values.routerSpec -}}
{{- $reads := not (has $r.routingLogic (list "roundrobin" "random")) -}}
{{- $many := or (gt ($r.replicaCount | int) 1) $r.autoscaling.enabled -}}
{{- if and $r.enableRouter $r.shareLoad $reads $many }}true{{ end -}}
{{- end }}

{{- define "llmstack.routerPeersName" -}}
{{- printf "%s-peers" (include "llmstack.routerName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmstack.routerSelectorLabels" -}}
{{ include "llmstack.selectorLabels" . }}
app.kubernetes.io/component: router
{{- end }}

{{/* Fails when a model name is used twice, or when two objects of one kind would get the
same name: engine names (and the router's) are truncated to 63 characters, which can make
them equal. */}}
{{- define "llmstack.checkNames" -}}
{{- $seen := dict }}
{{- if .Values.routerSpec.enableRouter }}
{{- $_ := set $seen (include "llmstack.routerName" .) "the router" }}
{{- end }}
{{- if .Values.servingEngineSpec.enableEngine }}
{{- $models := dict }}
{{- range .Values.servingEngineSpec.modelSpec }}
{{- if hasKey $models .name }}
{{- fail (printf "servingEngineSpec.modelSpec: the name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $models .name true }}
{{- end }}
{{- range $model := .Values.servingEngineSpec.modelSpec }}
{{- $name := include "llmstack.engineName" (dict "root" $ "model" $model) }}
{{- if hasKey $seen $name }}
{{- fail (printf "servingEngineSpec.modelSpec[%s]: its engine name %q (<fullname>-<model name>-engine, truncated to 63 characters) is also the name of %s; shorten the release name, fullnameOverride or the model names" $model.name $name (get $seen $name)) }}
{{- end }}
{{- $_ := set $seen $name (printf "servingEngineSpec.modelSpec[%s]'s engines" $model.name) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmstack.routerServiceAccountName" -}}
{{- $sa := .Values.routerSpec.serviceAccount }}
{{- if $sa.create }}
{{- default (include "llmstack.routerName" .) $sa.name }}
{{- else }}
{{- required "routerSpec.serviceAccount.name is required when routerSpec.serviceAccount.create is false (the existing ServiceAccount the router runs as; it needs get, list and watch on pods)" $sa.name }}
{{- end }}
{{- end }}

{{/* The engines of one modelSpec entry; call with (dict "root" $ "model" $model). */}}
{{- define "llmstack.engineName" -}}
{{- printf "%s-%s-engine" (include "llmstack.fullname" .root) .model.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by all engine pods of this release; the router's default selector. */}}
{{- define "llmstack.engineCommonSelectorLabels" -}}
{{ include "llmstack.selectorLabels" . }}
app.kubernetes.io/component: engine
{{- end }}

{{- define "llmstack.engineSelectorLabels" -}}
{{ include "llmstack.engineCommonSelectorLabels" .root }}
model: {{ .model.name | quote }}
{{- end }}

{{/* Labels of a model's engine objects (Deployment, Service, PVC, ScaledObject): the common
labels, component and model; with (dict ... "extra" true) also servingEngineSpec.labels and the
model's labels (the model's win). Keys the chart sets are refused (llmstack.checkLabels). */}}
{{- define "llmstack.engineLabels" -}}
{{- $spec := .root.Values.servingEngineSpec }}
{{- $reserved := include "llmstack.chartLabelKeys" .root | fromJsonArray }}
{{- include "llmstack.checkLabels" (dict "labels" $spec.labels "path" "servingEngineSpec.labels" "reserved" $reserved) }}
{{- include "llmstack.checkLabels" (dict "labels" .model.labels "path" (printf "servingEngineSpec.modelSpec[%s].labels" .model.name) "reserved" $reserved) }}
{{- $labels := include "llmstack.labels" .root | fromYaml }}
{{- if .extra }}
{{- $labels = merge (dict) (.model.labels | default dict) ($spec.labels | default dict) $labels }}
{{- end }}
{{- $_ := set $labels "app.kubernetes.io/component" "engine" }}
{{- $_ := set $labels "model" (toString .model.name) }}
{{- toYaml $labels }}
{{- end }}

{{/* Extra labels of a model's engine pods: servingEngineSpec.labels and the model's (the
model's win), checked against the chart's keys. */}}
{{- define "llmstack.engineExtraPodLabels" -}}
{{- $spec := .root.Values.servingEngineSpec }}
{{- $reserved := include "llmstack.chartLabelKeys" .root | fromJsonArray }}
{{- include "llmstack.checkLabels" (dict "labels" $spec.labels "path" "servingEngineSpec.labels" "reserved" $reserved) }}
{{- include "llmstack.checkLabels" (dict "labels" .model.labels "path" (printf "servingEngineSpec.modelSpec[%s].labels" .model.name) "reserved" $reserved) }}
{{- with (merge (dict) (.model.labels | default dict) ($spec.labels | default dict)) }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Engine replicas of a modelSpec entry: replicaCount (0 stays 0), default 1. */}}
{{- define "llmstack.engineReplicas" -}}
{{- if hasKey . "replicaCount" }}{{ .replicaCount | int }}{{ else }}1{{ end }}
{{- end }}

{{/* GPUs of a vLLM engine: requestGPU, else tensorParallelSize when that is set (one GPU per
tensor-parallel worker), else none; fails when requestGPU < a tensorParallelSize that is set. */}}
{{- define "llmstack.engineGPUs" -}}
{{- $vc := .vllmConfig | default dict }}
{{- $tp := $vc.tensorParallelSize | default 1 | int }}
{{- $gpus := 0 }}
{{- if hasKey . "requestGPU" }}
{{- $gpus = .requestGPU | int }}
{{- else if hasKey $vc "tensorParallelSize" }}
{{- $gpus = $tp }}
{{- end }}
{{- if and (hasKey $vc "tensorParallelSize") (lt $gpus $tp) }}
{{- fail (printf "servingEngineSpec.modelSpec[%s]: requestGPU (%d) is less than vllmConfig.tensorParallelSize (%d); vLLM needs one GPU per tensor-parallel worker (leave requestGPU unset to request %d)" .name $gpus $tp $tp) }}
{{- end }}
{{- $gpus }}
{{- end }}

{{/* Fails when `args` (extraArgs) repeat a flag of `flags` (a dict flag -> the value that sets
it), as `--flag` or `--flag=value`: the router and llmstack-sim refuse a flag given twice.
Call with (dict "args" A "flags" F "path" P). */}}
{{- define "llmstack.checkExtraArgs" -}}
{{- range .args }}
{{- $f := first (splitList "=" (toString .)) }}
{{- if hasKey $.flags $f }}
{{- fail (printf "%s: %s is already passed by the chart (its value comes from %s); a flag given twice stops the process at start. Flags the chart passes: %s" $.path $f (get $.flags $f) (join ", " (keys $.flags | sortAlpha))) }}
{{- end }}
{{- end }}
{{- end }}

{{/* vLLM's --kv-events-config of every engine (servingEngineSpec.kvEvents), as JSON; fails
when its ports clash with each other or with the engines' HTTP port. */}}
{{- define "llmstack.kvEventsConfig" -}}
{{- $spec := .Values.servingEngineSpec }}
{{- $kv := $spec.kvEvents }}
{{- $port := $kv.port | int }}
{{- $replay := $kv.replayPort | default 0 | int }}
{{- if eq $port ($spec.containerPort | int) }}
{{- fail (printf "servingEngineSpec.kvEvents.port %d is also servingEngineSpec.containerPort (the engines' HTTP port); pick another port" $port) }}
{{- end }}
{{- if and (gt $replay 0) (has $replay (list $port ($spec.containerPort | int))) }}
{{- fail (printf "servingEngineSpec.kvEvents.replayPort %d is also the %s; pick another port (or 0: no replay socket)" $replay (ternary "KV-event PUB port (servingEngineSpec.kvEvents.port)" "engines' HTTP port (servingEngineSpec.containerPort)" (eq $replay $port))) }}
{{- end }}
{{- $config := dict "enable_kv_cache_events" true "publisher" "zmq" "endpoint" (printf "tcp://*:%d" $port) "topic" $kv.topic }}
{{- if gt $replay 0 }}
{{- $_ := set $config "replay_endpoint" (printf "tcp://*:%d" $replay) }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/* routerSpec.routingLogic kvaware: fails unless the engines publish KV events (kvEvents
on, prefix caching on in every model). */}}
{{- define "llmstack.checkKvaware" -}}
{{- $spec := .Values.servingEngineSpec }}
{{- if not $spec.kvEvents.enabled }}
{{- fail "routerSpec.routingLogic kvaware routes on the engines' KV-cache events, but servingEngineSpec.kvEvents.enabled is false: set servingEngineSpec.kvEvents.enabled: true (and keep prefix caching on), or pick another routingLogic (prefixaware needs no events)" }}
{{- end }}
{{- if $spec.enableEngine }}
{{- range $spec.modelSpec }}
{{- if eq (toString (.vllmConfig | default dict).enablePrefixCaching) "false" }}
{{- fail (printf "routerSpec.routingLogic kvaware routes on the engines' KV-cache events, but servingEngineSpec.modelSpec[%s] has vllmConfig.enablePrefixCaching: false, so its engines publish none: remove it (prefix caching is on by default), or pick another routingLogic (prefixaware needs no events)" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where routerSpec.tokenizerVolume and routerSpec.hfCache are mounted in the router. */}}
{{- define "llmstack.tokenizersDir" -}}
/tokenizers
{{- end }}

{{- define "llmstack.hfCacheDir" -}}
/hf-cache
{{- end }}

{{/* routerSpec.tokenizers as --tokenizer values ([<model>=]<path>), a JSON list; fails on a
model listed twice or two entries without a model. */}}
{{- define "llmstack.tokenizerArgs" -}}
{{- $seen := dict }}
{{- $out := list }}
{{- range $i, $t := .Values.routerSpec.tokenizers }}
{{- $key := $t.model | default "" | toString }}
{{- if hasKey $seen $key }}
{{- if $key }}
{{- fail (printf "routerSpec.tokenizers[%d]: model %q already has a tokenizer (tokenizers[%d])" $i $key (get $seen $key)) }}
{{- else }}
{{- fail (printf "routerSpec.tokenizers[%d]: a second entry without model (tokenizers[%d] is already the tokenizer of every model that has no entry of its own); give it a model" $i (get $seen $key)) }}
{{- end }}
{{- end }}
{{- $_ := set $seen $key $i }}
{{- $out = append $out (ternary (printf "%s=%s" $key $t.path) (toString $t.path) (ne $key "")) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* --k8s-label-selector: routerSpec.labelSelector, else this release's engine pods. */}}
{{- define "llmstack.engineLabelSelector" -}}
{{- if .Values.routerSpec.labelSelector }}
{{- .Values.routerSpec.labelSelector }}
{{- else }}
{{- $parts := list }}
{{- range $k, $v := (include "llmstack.engineCommonSelectorLabels" . | fromYaml) }}
{{- $parts = append $parts (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $parts }}
{{- end }}
{{- end }}

{{/* Image of the engine containers of a modelSpec entry (dict "root" "model"). */}}
{{- define "llmstack.engineImage" -}}
{{- if eq .root.Values.servingEngineSpec.engine "sim" }}
{{- printf "%s:%s" .root.Values.servingEngineSpec.simRepository (default .root.Chart.AppVersion .root.Values.servingEngineSpec.simTag) }}
{{- else }}
{{- printf "%s:%s" (required (printf "servingEngineSpec.modelSpec[%s].repository is required with engine: vllm" .model.name) .model.repository) (toString (required (printf "servingEngineSpec.modelSpec[%s].tag is required with engine: vllm" .model.name) .model.tag)) }}
{{- end }}
{{- end }}

{{- define "llmstack.routerImage" -}}
{{- printf "%s:%s" .Values.routerSpec.repository (default .Chart.AppVersion .Values.routerSpec.tag) }}
{{- end }}

{{/* Secret holding the keys given as plain strings (HF tokens, the vLLM API key). */}}
{{- define "llmstack.secretName" -}}
{{- printf "%s-secrets" (include "llmstack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret the chart creates for routerSpec.apiKeys.keys. */}}
{{- define "llmstack.apiKeysSecretName" -}}
{{- printf "%s-api-keys" (include "llmstack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the router's keys file: "" when routerSpec.apiKeys is off (neither
`keys` nor `existingSecret`); fails when both are set. */}}
{{- define "llmstack.apiKeysSecret" -}}
{{- $a := .Values.routerSpec.apiKeys }}
{{- if and $a.keys $a.existingSecret }}
{{- fail "routerSpec.apiKeys: set either keys (the chart stores them in a Secret) or existingSecret (a Secret of yours), not both" }}
{{- end }}
{{- if $a.existingSecret }}
{{- $a.existingSecret }}
{{- else if $a.keys }}
{{- include "llmstack.apiKeysSecretName" . }}
{{- end }}
{{- end }}

{{/* Where the router's keys file is mounted (a directory, never subPath: the kubelet then
updates the file in place and the router's reload sees it). */}}
{{- define "llmstack.apiKeysDir" -}}
/etc/llmstack/keys
{{- end }}

{{/* An env var from a string (stored in the chart's Secret under `key`) or an existing
Secret ref {secretName, secretKey}. Call with (dict "root" $ "name" ENV "value" V "key" K). */}}
{{- define "llmstack.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
{{- if kindIs "string" .value }}
      name: {{ include "llmstack.secretName" .root }}
      key: {{ .key }}
{{- else }}
      name: {{ required (printf "%s: secretName is required" .name) .value.secretName }}
      key: {{ required (printf "%s: secretKey is required" .name) .value.secretKey }}
{{- end }}
{{- end }}

{{/* policy/v1 PodDisruptionBudget from Kubernetes 1.21, policy/v1beta1 before. */}}
{{- define "llmstack.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}

{{/* autoscaling/v2 HorizontalPodAutoscaler from Kubernetes 1.23, autoscaling/v2beta2 before. */}}
{{- define "llmstack.hpaApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" }}autoscaling/v2{{ else }}autoscaling/v2beta2{{ end }}
{{- end }}

{{/* Router replicas that are sure to run (the HPA's minimum when it is on). */}}
{{- define "llmstack.routerMinReplicas" -}}
{{- if .Values.routerSpec.autoscaling.enabled }}{{ .Values.routerSpec.autoscaling.minReplicas | int }}{{ else }}{{ .Values.routerSpec.replicaCount | int }}{{ end }}
{{- end }}
