{{/* Names, labels and shared pieces of the thaw chart. */}}

{{- define "thaw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "thaw.fullname" -}}
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

{{- define "thaw.operator.fullname" -}}
{{- printf "%s-operator" (include "thaw.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.activator.fullname" -}}
{{- printf "%s-activator" (include "thaw.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "thaw.labels" -}}
helm.sh/chart: {{ include "thaw.chart" . }}
app.kubernetes.io/name: {{ include "thaw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: thaw
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "thaw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thaw.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects; call like thaw.selectorLabels. */}}
{{- define "thaw.componentLabels" -}}
{{ include "thaw.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The activator pods' selector labels as a label selector string. */}}
{{- define "thaw.activatorSelector" -}}
{{- $labels := include "thaw.selectorLabels" (dict "ctx" . "component" "activator") | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "thaw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The one namespace both components watch, or "" for all namespaces. thaw's
binaries take a single --watch-namespace, so more than one is refused.
*/}}
{{- define "thaw.watchNamespace" -}}
{{- $namespaces := .Values.watchNamespaces | default list }}
{{- if gt (len $namespaces) 1 }}
{{- fail (printf "watchNamespaces: thaw watches one namespace or all of them for now, not %d (%s); give one namespace, or leave the list empty for all namespaces" (len $namespaces) (join ", " $namespaces)) }}
{{- end }}
{{- if eq (len $namespaces) 1 }}
{{- first $namespaces }}
{{- end }}
{{- end }}

{{/* The operator's Service, through which activators deliver stats. */}}
{{- define "thaw.autoscalerURL" -}}
{{- printf "http://%s.%s.svc:9090/v1/stats" (include "thaw.operator.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The activator Service's cluster DNS name, the target of every Function's ExternalName Service. */}}
{{- define "thaw.activatorHost" -}}
{{- printf "%s.%s.svc.%s" (include "thaw.activator.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* Environment both components get. */}}
{{- define "thaw.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}
