{{/* translation-api-<colour>: the name of every object of this release. */}}
{{- define "translation-api.fullname" -}}
{{- printf "translation-api-%s" .Values.colour | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "translation-api.selectorLabels" -}}
app.kubernetes.io/name: translation-api
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.colour | quote }}
{{- end }}

{{- define "translation-api.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "translation-api.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ .Values.partOf }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount of the pods. */}}
{{- define "translation-api.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "translation-api.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "translation-api.image" -}}
{{- $tag := .Values.image.tag | default (printf "release-v%s" .Chart.AppVersion) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
