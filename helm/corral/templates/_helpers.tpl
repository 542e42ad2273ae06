{{/* Object name prefix: <release>-corral, or the release name when it already says corral. */}}
{{- define "corral.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corral.labels" -}}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "corral.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "corral.apiKeySecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "corral.fullname" .)) -}}
{{- end -}}

{{- define "corral.modelCacheClaim" -}}
{{- .Values.modelCache.existingClaim | default (printf "%s-model-cache" (include "corral.fullname" .)) -}}
{{- end -}}

{{/* The Serve config KubeRay deploys: one application built by corral from the fleet spec
     in the values, passed verbatim (corral.cluster.kuberay.serve_config_v2 builds the same). */}}
{{- define "corral.serveConfigV2" -}}
{{- $app := dict "name" (.Values.fleet.name | default "corral") "route_prefix" "/" "import_path" "corral.serving.app:app_builder" "args" (dict "fleet" .Values.fleet) -}}
{{- toYaml (dict "applications" (list $app)) -}}
{{- end -}}
