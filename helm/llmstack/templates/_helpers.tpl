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
helm.sh/chart: {{ include "llmstack.chart" . }}
{{ include "llmstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmstack
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llmstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmstack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The router: name and selector labels. */}}
{{- define "llmstack.routerName" -}}
{{- printf "%s-router" (include "llmstack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmstack.routerSelectorLabels" -}}
{{ include "llmstack.selectorLabels" . }}
app.kubernetes.io/component: router
{{- end }}

{{- define "llmstack.routerServiceAccountName" -}}
{{- default (include "llmstack.routerName" .) .Values.routerSpec.serviceAccount.name }}
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
model: {{ .model.name }}
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
