{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "modeld.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, which should carry the task (e.g. modeld-credit-risk). */}}
{{- define "modeld.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "modeld.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "modeld.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The task as a label value (task names may hold characters labels do not). */}}
{{- define "modeld.taskLabel" -}}
{{- regexReplaceAll "[^A-Za-z0-9_.-]" .Values.task "-" | trunc 63 | trimAll "-_." }}
{{- end }}

{{- define "modeld.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeld.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* What every pod serving this task shares, across releases (stable and canary). */}}
{{- define "modeld.taskSelectorLabels" -}}
app.kubernetes.io/name: {{ include "modeld.name" . }}
modeld.io/task: {{ include "modeld.taskLabel" . }}
{{- end }}

{{- define "modeld.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "modeld.selectorLabels" . }}
modeld.io/task: {{ include "modeld.taskLabel" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "modeld.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modeld.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modeld.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Longer than preStop + drain, so the kubelet never kills a pod that is still draining. */}}
{{- define "modeld.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdown.preStopSeconds .Values.shutdown.drainSeconds .Values.shutdown.marginSeconds }}
{{- end }}
