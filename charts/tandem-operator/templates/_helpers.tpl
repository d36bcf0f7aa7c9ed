{{/*
Names, labels and shared fragments. Every helper is namespaced with the chart name.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tandem-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of this release's resources: fullnameOverride, else "<release>-<name>", or just
the release name when it already contains the chart name.
*/}}
{{- define "tandem-operator.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "tandem-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them on upgrade. */}}
{{- define "tandem-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource of the release. */}}
{{- define "tandem-operator.labels" -}}
helm.sh/chart: {{ include "tandem-operator.chart" . }}
{{ include "tandem-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "tandem-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tandem-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "tandem-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it serves. They are bound by a ClusterRole
when it watches all namespaces, and by a Role in each namespace of watchNamespaces.
*/}}
{{- define "tandem-operator.operatorRules" -}}
# The operator's watch streams (kopf lists, then watches, each kind) feed its caches: runs,
# the Automations they reference, AgentQuotaOverrides (B7 guardrail resume) and
# AgentEndpoints (executors). `get` is for point reads of runs and Automations after a
# write conflict or a cache miss.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automationruns", "automations", "agentquotaoverrides", "agentendpoints"]
  verbs: ["get", "list", "watch"]
# The operator's only write to runs: one JSON merge patch of the status subresource per
# decision, carrying metadata.resourceVersion. No access to the runs themselves, so it can
# never change a spec (users own it).
- apiGroups: ["automation.tandem.dev"]
  resources: ["automationruns/status"]
  verbs: ["patch"]
# AgentEndpoint executors read their bearer token from the Secret named in
# spec.authSecretRef, by name. No list or watch: the operator cannot enumerate Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# kopf posts a core v1 Event for every run transition (`kubectl describe automationrun`).
# Events are only created, never read back or changed.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if not .Values.settings.disableContainerExecutor }}
# The container executor runs each attempt of a container node in its own Pod in the run's
# namespace: create it, follow it (a watch of that one Pod, by name and the
# automation.tandem.dev/run label), list a run's Pods to adopt them after a restart (C5), and
# delete them on pause, cancel, rework, stale reaping and once an attempt ended. No update or
# patch: the operator never changes a Pod it created; no pods/exec or pods/log.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "get", "list", "watch", "delete"]
{{- end }}
{{- end }}
