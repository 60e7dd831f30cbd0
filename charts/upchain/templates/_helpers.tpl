{{- define "upchain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels never change across chart versions: a Deployment's selector is immutable. */}}
{{- define "upchain.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "upchain.labels" -}}
{{ include "upchain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "upchain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "upchain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "upchain.runnerNamespace" -}}
{{- default .Release.Namespace .Values.runnerNamespace -}}
{{- end -}}

{{/* --metrics-tls of the operator, from metrics.tls.mode. */}}
{{- define "upchain.metricsTls" -}}
{{- get (dict "selfSigned" "self-signed" "secret" "files" "none" "none") .Values.metrics.tls.mode -}}
{{- end -}}

{{- define "upchain.metricsScheme" -}}
{{- if eq .Values.metrics.tls.mode "none" }}HTTP{{ else }}HTTPS{{ end -}}
{{- end -}}
