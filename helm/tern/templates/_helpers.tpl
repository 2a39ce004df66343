{{- define "tern.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tern.headless" -}}
{{- printf "%s-headless" (include "tern.fullname" .) -}}
{{- end -}}

{{- define "tern.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tern.labels" -}}
{{ include "tern.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
tern.io/region: {{ .Values.cluster.region | quote }}
{{- end -}}

{{/* The seed of this release: its pod 0, as ID@host:port. */}}
{{- define "tern.localSeed" -}}
{{- printf "%d@%s-0.%s.%s.svc.cluster.local:7946" (int .Values.cluster.nodeIdOffset) (include "tern.fullname" .) (include "tern.headless" .) .Release.Namespace -}}
{{- end -}}
