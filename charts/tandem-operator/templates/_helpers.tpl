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
# The operator's watch streams (each kind listed, then watched) feed its caches: runs,
# the Automations they reference, AgentQuotaOverrides (B7 guardrail resume) and
# AgentEndpoints (executors). `get` is for point reads of runs and Automations after a
# write conflict or a cache miss.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automationruns", "automations", "agentquotaoverrides", "agentendpoints"]
  verbs: ["get", "list", "watch"]
# The operator's lifecycle writes to runs: one JSON merge patch of the status subresource
# per decision, carrying metadata.resourceVersion.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automationruns/status"]
  verbs: ["patch"]
# Schedules and retention (contract section 9). `create`: a schedule starts one run per due
# time (B19a), named from the due time, so a repeated create is refused with 409. `patch`:
# the only spec change the operator makes is `desiredState: Cancelled` on the unfinished runs
# of a schedule with concurrencyPolicy Replace (B19c); users own every other spec field.
# `delete`: finished runs beyond a schedule's history limits (B20a) and past their
# ttlSecondsAfterFinished (B20b), each with its uid as a precondition. No `update`: the
# operator never replaces a run.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automationruns"]
  verbs: ["create", "patch", "delete"]
# The schedule's state (B19b): lastScheduleTime, nextScheduleTime, activeRuns, the watermark
# lastConsideredTime and the Ready/Stalled conditions, one merge patch with resourceVersion.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automations/status"]
  verbs: ["patch"]
# The runs a schedule creates are owned by their Automation with blockOwnerDeletion: true
# (so a foreground deletion of the Automation waits for them). With the
# OwnerReferencesPermissionEnforcement admission plugin, setting that needs `update` on the
# owner's finalizers subresource; nothing else uses it.
- apiGroups: ["automation.tandem.dev"]
  resources: ["automations/finalizers"]
  verbs: ["update"]
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

{{/*
The fields every webhook of this release shares (see admission.yaml). Arguments: root,
resource, path, fail (failurePolicy Fail, else Ignore), service, ca (base64 PEM).
*/}}
{{- define "tandem-operator.webhookCommon" -}}
{{- $root := .root -}}
admissionReviewVersions: ["v1"]
sideEffects: None
failurePolicy: {{ ternary "Fail" "Ignore" .fail }}
matchPolicy: Equivalent
timeoutSeconds: 10
rules:
  - apiGroups: ["automation.tandem.dev"]
    apiVersions: ["*"]
    resources: [{{ .resource }}]
    operations: ["CREATE", "UPDATE"]
    scope: Namespaced
{{- if $root.Values.watchNamespaces }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values:
        {{- range (sortAlpha $root.Values.watchNamespaces) }}
        - {{ . }}
        {{- end }}
{{- else }}
namespaceSelector: {}
{{- end }}
clientConfig:
  service:
    namespace: {{ $root.Release.Namespace }}
    name: {{ .service }}
    port: 443
    path: {{ .path }}
  caBundle: {{ .ca }}
{{- end }}

{{/*
The webhook's certificate as JSON {crt, key, ca} (base64 PEM): the stored Secret's when it
exists (upgrades keep it), else a new CA and serving certificate for the webhook Service.
Made once per render and kept in a dict on .Values, so admission.yaml and the Deployment's
checksum see the same one whichever is rendered first.
*/}}
{{- define "tandem-operator.webhookTLS" -}}
{{- if not (hasKey .Values "__webhookTLS") -}}
{{- $fullname := include "tandem-operator.fullname" . -}}
{{- $service := printf "%s-webhook" $fullname -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-webhook-tls" $fullname) -}}
{{- $data := dict -}}
{{- if $existing -}}{{- $data = $existing.data | default dict -}}{{- end -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- $_ := set .Values "__webhookTLS" (dict "crt" (index $data "tls.crt") "key" (index $data "tls.key") "ca" (index $data "ca.crt")) -}}
{{- else -}}
{{- $authority := genCA (printf "%s-webhook-ca" $fullname) 3650 -}}
{{- $host := printf "%s.%s.svc" $service .Release.Namespace -}}
{{- $cert := genSignedCert $host nil (list $host (printf "%s.cluster.local" $host)) 3650 $authority -}}
{{- $_ := set .Values "__webhookTLS" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($authority.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- get .Values "__webhookTLS" | toJson -}}
{{- end }}
