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
{{- if eq (toString .enabled) "false" }}{{ continue }}{{ end }}
{{- if hasKey $models .name }}
{{- fail (printf "servingEngineSpec.modelSpec: the name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $models .name true }}
{{- end }}
{{- range $model := .Values.servingEngineSpec.modelSpec }}
{{- if eq (toString $model.enabled) "false" }}{{ continue }}{{ end }}
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
{{- if .Values.routerSpec.serviceAccountName }}
{{- .Values.routerSpec.serviceAccountName }}
{{- else if $sa.create }}
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
{{- $pp := $vc.pipelineParallelSize | default 1 | int }}
{{- $need := mul $tp $pp }}
{{- $sized := or (hasKey $vc "tensorParallelSize") (hasKey $vc "pipelineParallelSize") }}
{{- $gpus := 0 }}
{{- if hasKey . "requestGPU" }}
{{- $gpus = .requestGPU | int }}
{{- else if $sized }}
{{- $gpus = $need }}
{{- end }}
{{- if and $sized (lt $gpus $need) }}
{{- if hasKey $vc "pipelineParallelSize" }}
{{- fail (printf "servingEngineSpec.modelSpec[%s]: requestGPU (%d) is less than vllmConfig.tensorParallelSize x pipelineParallelSize (%d x %d); vLLM needs one GPU per worker (leave requestGPU unset to request %d)" .name $gpus $tp $pp $need) }}
{{- else }}
{{- fail (printf "servingEngineSpec.modelSpec[%s]: requestGPU (%d) is less than vllmConfig.tensorParallelSize (%d); vLLM needs one GPU per tensor-parallel worker (leave requestGPU unset to request %d)" .name $gpus $tp $tp) }}
{{- end }}
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
{{- if and (ne (toString .enabled) "false") (eq (toString (.vllmConfig | default dict).enablePrefixCaching) "false") }}
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
{{- if include "llmstack.routerIsProductionStackImage" . }}
{{- printf "ghcr.io/llmstack/llmstack-server:%s" .Chart.AppVersion }}
{{- else }}
{{- printf "%s:%s" .Values.routerSpec.repository (default .Chart.AppVersion .Values.routerSpec.tag) }}
{{- end }}
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

{{/* ---- production-stack compatibility (docs/helm-production-stack.md) ---- */}}

{{/* "true" when a secret value is set: a non-empty string, or a reference with a secretName
(production-stack's default {secretName: "", secretKey: ""} is none). */}}
{{- define "llmstack.secretSet" -}}
{{- if kindIs "string" . }}{{ if . }}true{{ end }}{{ else if kindIs "map" . }}{{ if .secretName }}true{{ end }}{{ end }}
{{- end }}

{{/* Access modes of a model's PVC, a JSON list: pvcAccessMode as one mode or a list
(production-stack's form); default ReadWriteOnce. */}}
{{- define "llmstack.pvcAccessModes" -}}
{{- $m := .pvcAccessMode | default "ReadWriteOnce" }}
{{- if kindIs "slice" $m }}{{ toJson $m }}{{ else }}{{ list $m | toJson }}{{ end }}
{{- end }}

{{/* "true" when a model's storage is a PVC the chart creates (pvcStorage a size, no
pvcExistingClaimName, not the simulator). */}}
{{- define "llmstack.chartPVC" -}}
{{- if and (ne .root.Values.servingEngineSpec.engine "sim") .model.pvcStorage (not (kindIs "map" .model.pvcStorage)) (not .model.pvcExistingClaimName) }}true{{ end }}
{{- end }}

{{/* "true" when the chart's PVC of a model can be mounted by one node (or pod) only. */}}
{{- define "llmstack.pvcSingleNode" -}}
{{- if include "llmstack.chartPVC" . }}
{{- $modes := include "llmstack.pvcAccessModes" .model | fromJsonArray }}
{{- if not (or (has "ReadWriteMany" $modes) (has "ReadOnlyMany" $modes)) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The replicas a model may reach: KEDA's maximum when on, else replicaCount. */}}
{{- define "llmstack.engineMaxReplicas" -}}
{{- $keda := .keda | default dict }}
{{- if $keda.enabled }}{{ $keda.maxReplicaCount | default 4 | int }}{{ else }}{{ include "llmstack.engineReplicas" . }}{{ end }}
{{- end }}

{{/* A probe: the chart's handler (`default`, an httpGet on the port `http`) merged under the
user's settings; a user handler of another kind (exec, tcpSocket, grpc) replaces it, and the
port names of production-stack's chart (and its port numbers) are read as `http`. Call with
(dict "default" D "user" U "aliases" L). */}}
{{- define "llmstack.probe" -}}
{{- $user := deepCopy (.user | default dict) }}
{{- $probe := dict }}
{{- if or $user.exec $user.tcpSocket $user.grpc }}
{{- $probe = $user }}
{{- else }}
{{- $probe = merge $user (deepCopy .default) }}
{{- $port := $probe.httpGet.port }}
{{- if has (toString $port) .aliases }}
{{- $_ := set $probe.httpGet "port" "http" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* The router's image: production-stack's router images (lmcache/lmstack-router, ...) are read
as this chart's router, llmstack-server (their flags are not llmstack-server's). */}}
{{- define "llmstack.routerIsProductionStackImage" -}}
{{- if regexMatch "(^|/)(lmstack-router|vllm-router|production-stack-router)$" .Values.routerSpec.repository }}true{{ end }}
{{- end }}

{{/* Fails, naming the key, on the production-stack values this chart does not implement yet
(included by checks.yaml). modelSpec entries with `enabled: false` are skipped here as in every
engine template (production-stack's meaning). */}}
{{- define "llmstack.checkNotImplemented" -}}
{{- $v := .Values }}
{{- if ($v.cacheserverSpec | default dict).enabled }}
{{- fail "cacheserverSpec.enabled: production-stack's LMCache cache server is not implemented by this chart yet; deploy an LMCache server yourself and point the engines at it with modelSpec[].env (LMCACHE_REMOTE_URL), or set cacheserverSpec.enabled: false" }}
{{- end }}
{{- range $i, $a := ($v.loraAdapters | default list) }}
{{- if ne (toString $a.enabled) "false" }}
{{- fail (printf "loraAdapters[%d] (%s): production-stack's LoraAdapter resources (and their controller) are not implemented by this chart yet; load adapters with vllmConfig.extraArgs (--lora-modules) and enableLoRA, or set loraAdapters[%d].enabled: false" $i ($a.name | default "") $i) }}
{{- end }}
{{- end }}
{{- if ($v.loraController | default dict).enableLoraController }}
{{- fail "loraController.enableLoraController: production-stack's LoRA controller is not implemented by this chart yet; set it to false" }}
{{- end }}
{{- if ($v.sharedPvcStorage | default dict).enabled }}
{{- fail "sharedPvcStorage.enabled: a volume shared by every model is not implemented by this chart yet; give each model modelSpec[].extraVolumes / extraVolumeMounts with your ReadWriteMany claim, or pvcExistingClaimName, instead" }}
{{- end }}
{{- if (index $v "kube-prometheus-stack" | default dict).enabled }}
{{- fail "kube-prometheus-stack.enabled: this chart has no subcharts; install kube-prometheus-stack as its own release (the chart's ServiceMonitors and dashboards are found by it), and set kube-prometheus-stack.enabled: false" }}
{{- end }}
{{- if (index $v "prometheus-adapter" | default dict).enabled }}
{{- fail "prometheus-adapter.enabled: this chart has no subcharts; install prometheus-adapter as its own release (routerSpec.autoscaling.targetInFlightRequests reads its llmstack_in_flight_requests), and set prometheus-adapter.enabled: false" }}
{{- end }}
{{- $r := $v.routerSpec }}
{{- if $r.enableRouter }}
{{- if has $r.routingLogic (list "disaggregated_prefill" "disaggregated_prefill_orchestrated") }}
{{- fail (printf "routerSpec.routingLogic %s: disaggregated prefill is not implemented by llmstack's router yet; use roundrobin, session, prefixaware, kvaware or leastloaded" $r.routingLogic) }}
{{- end }}
{{- if $r.enablePD }}
{{- fail "routerSpec.enablePD: disaggregated prefill is not implemented by llmstack's router yet; set routerSpec.enablePD: false" }}
{{- end }}
{{- if eq ($r.k8sServiceDiscoveryType | default "pod-ip") "service-name" }}
{{- fail "routerSpec.k8sServiceDiscoveryType service-name: routing to engine Service names is not implemented; use pod-ip (the default: the router watches the engine pods)" }}
{{- end }}
{{- if eq $r.serviceType "ExternalName" }}
{{- fail "routerSpec.serviceType ExternalName: the router's Service selects the router pods; an ExternalName Service cannot. Use ClusterIP, NodePort or LoadBalancer" }}
{{- end }}
{{- $otel := $r.otel | default dict }}
{{- if and $otel.secure $otel.endpoint (contains "://" $otel.endpoint) (not (hasSuffix ":4317" $otel.endpoint)) }}
{{- fail (printf "routerSpec.otel.secure: TLS goes with OTLP/gRPC; give routerSpec.otel.endpoint as host:4317 (production-stack's form), not %s" $otel.endpoint) }}
{{- end }}
{{- if and $r.autoscaling.enabled (lt ($r.autoscaling.minReplicas | int) 1) }}
{{- fail "routerSpec.autoscaling.minReplicas 0: a HorizontalPodAutoscaler cannot scale to zero (HPAScaleToZero is an alpha feature gate); set it to 1 or more" }}
{{- end }}
{{- if and (eq ($r.serviceDiscovery | default "k8s") "static") (not $r.staticBackends) }}
{{- fail "routerSpec.staticBackends is required with routerSpec.serviceDiscovery static (comma-separated engine URLs)" }}
{{- end }}
{{- end }}
{{- if $v.servingEngineSpec.enableEngine }}
{{- range $v.servingEngineSpec.modelSpec }}
{{- if ne (toString .enabled) "false" }}
{{- if (.raySpec | default dict).enabled }}
{{- fail (printf "servingEngineSpec.modelSpec[%s].raySpec.enabled: KubeRay clusters (pipeline parallelism across nodes) are not implemented by this chart yet; set raySpec.enabled: false (vllmConfig.tensorParallelSize and pipeline parallelism within one node work)" .name) }}
{{- end }}
{{- $k := .keda | default dict }}
{{- if and $k.enabled (hasKey $k "minReplicaCount") (eq ($k.minReplicaCount | int) 0) (not $k.triggers) }}
{{- fail (printf "servingEngineSpec.modelSpec[%s].keda.minReplicaCount 0: the default trigger's queue metric comes from the engines, so from zero replicas nothing would scale them back up; set keda.minReplicaCount: 1, or give keda.triggers of your own" .name) }}
{{- end }}
{{- if and (include "llmstack.chartPVC" (dict "root" $ "model" .)) (has "ReadWriteOncePod" (include "llmstack.pvcAccessModes" . | fromJsonArray)) (gt (include "llmstack.engineMaxReplicas" . | int) 1) }}
{{- fail (printf "servingEngineSpec.modelSpec[%s]: %d replicas with a ReadWriteOncePod PVC (pvcStorage), which one pod only can mount; set pvcAccessMode: ReadWriteMany (or ReadWriteOnce, all replicas on one node), replicaCount: 1, or no pvcStorage" .name (include "llmstack.engineMaxReplicas" . | int)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* production-stack values this chart accepts and ignores, when set (a JSON list of
"key: why"); NOTES.txt lists them. */}}
{{- define "llmstack.ignoredValues" -}}
{{- $r := .Values.routerSpec }}
{{- $out := list }}
{{- if $r.requestStatsWindow }}{{ $out = append $out "routerSpec.requestStatsWindow: the router's metrics are Prometheus counters and histograms (no sliding window)" }}{{ end }}
{{- if ($r.lmcacheConfig | default dict).logLevel }}{{ $out = append $out "routerSpec.lmcacheConfig.logLevel: the router has no LMCache client (routerSpec.logLevel sets its log level)" }}{{ end }}
{{- range $k := list "lmcacheControllerPort" "lmcacheControllerReplyPort" "lmcacheControllerHeartbeatPort" }}
{{- if get $r $k }}{{ $out = append $out (printf "routerSpec.%s: kvaware routes on vLLM's KV-cache events (servingEngineSpec.kvEvents), not on an LMCache controller" $k) }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* observability.grafanaDashboards with production-stack's top-level grafanaDashboards over it
(each key set there wins, false included), as JSON. */}}
{{- define "llmstack.grafanaDashboards" -}}
{{- $g := deepCopy .Values.observability.grafanaDashboards }}
{{- range $k, $v := (.Values.grafanaDashboards | default dict) }}{{ $_ := set $g $k $v }}{{ end }}
{{- toJson $g }}
{{- end }}
