{{/*
Names and labels shared by every object of the chart.
*/}}

{{- define "vlm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name alone when it already contains the
chart name (helm install vlm-operator ...), so objects are not vlm-operator-vlm-operator.
*/}}
{{- define "vlm-operator.fullname" -}}
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

{{- define "vlm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Every value interpolated into YAML is quoted: a name, namespace or key such as
"true", "null" or "123" is a string of the schema's and must stay one.
*/}}
{{- define "vlm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlm-operator.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{- define "vlm-operator.labels" -}}
helm.sh/chart: {{ include "vlm-operator.chart" . | quote }}
{{ include "vlm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels from the values (list $ $labels) less the keys the chart sets itself,
as YAML, to follow vlm-operator.labels: the chart's own win (a selector label
overridden would leave the Deployment's pods unselected, and a key given twice
is invalid YAML).
*/}}
{{- define "vlm-operator.extraLabels" -}}
{{- $own := include "vlm-operator.labels" (index . 0) | fromYaml }}
{{- $extra := dict }}
{{- range $key, $value := index . 1 }}
{{- if not (hasKey $own $key) }}
{{- $_ := set $extra $key $value }}
{{- end }}
{{- end }}
{{- with $extra }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "vlm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vlm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- /* Not the namespace's "default": every pod running as it would get the operator's roles. */ -}}
{{- required "serviceAccount.name: with serviceAccount.create false, name the existing account the operator runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of a cluster-scoped object of this release: the release's namespace is part
of it, so that releases of the same name in two namespaces do not share one.
*/}}
{{- define "vlm-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "vlm-operator.fullname" .) }}
{{- end }}

{{- define "vlm-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules on namespaced resources: exactly the requests the operator makes
(tests/test_rbac.py records them against the emulated API and compares both ways).
Children are read (get) before each patch, for what the operator applied last
(the keys no longer rendered are removed), and the optional ones (PodMonitor,
NetworkPolicy) are deleted when the spec stops asking for them; other reads
come from kopf's watches. Pods are patched only for their deletion-cost
annotation before a scale-down.
Owner references: every child carries a controller reference to its
VLMService with blockOwnerDeletion, and the OwnerReferencesPermissionEnforcement
admission plugin (on by default on OpenShift) lets a write set one only for
who may update the owner's finalizers (vlmservices/finalizers: a check of that
plugin, never a request of the operator), and change a child's references
only for who may delete the child: hence "delete" on every child kind, needed
when a user strips the references by hand and the next apply restores them.
*/}}
{{- define "vlm-operator.namespacedRules" -}}
- apiGroups: ["vlm-operator.io"]
  resources: ["vlmservices"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["vlm-operator.io"]
  resources: ["vlmservices/status"]
  verbs: ["patch"]
- apiGroups: ["vlm-operator.io"]
  resources: ["vlmservices/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  {{- if .Values.watchPodMonitors }}
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
  {{- else }}
  verbs: ["get", "create", "patch", "delete"]
  {{- end }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cluster-scoped reads kopf makes whatever it watches (resource discovery).
*/}}
{{- define "vlm-operator.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}


{{/*
What kopf adds when it serves a list of namespaces: it follows the namespaces
themselves (to pick up patterns), cluster-wide.
*/}}
{{- define "vlm-operator.namespaceRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
