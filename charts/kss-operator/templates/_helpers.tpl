{{/*
The chart name, or nameOverride.
*/}}
{{- define "kss-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else "<release>-<chart>" (or
the release name alone when it already contains the chart name). Truncated to 63
characters (the DNS label limit). Cluster-scoped objects (the ClusterRole and its
binding) are named by it too, so two releases need two release names.
*/}}
{{- define "kss-operator.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kss-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "kss-operator.labels" -}}
helm.sh/chart: {{ include "kss-operator.chart" . }}
{{ include "kss-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kss
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "kss-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kss-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kss-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kss-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image, tag defaulting to the appVersion.
*/}}
{{- define "kss-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The keyserver image the operator deploys by default, tag defaulting to the appVersion.
*/}}
{{- define "kss-operator.keyserverImage" -}}
{{- printf "%s:%s" .Values.keyserverImage.repository (.Values.keyserverImage.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The name of the leader-election Lease.
*/}}
{{- define "kss-operator.leaseName" -}}
{{- printf "%s-leader" (include "kss-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the KssPolicy and KeyShardCluster of the values go: the watched namespace, else
the release namespace.
*/}}
{{- define "kss-operator.resourceNamespace" -}}
{{- .Values.watchNamespace | default (first .Values.watchNamespaces) | default .Release.Namespace }}
{{- end }}

{{/*
The operator's rules (identical to manifests/install/20-rbac.yaml's ClusterRole): it
reads its resources and writes only their status and, once, the pinned
spec.bootstrap.keyserverId; it creates and patches what it owns
(Secrets, Services, StatefulSets, PodDisruptionBudgets, NetworkPolicies); it deletes
only Secrets (the transient bootstrap identity) and a cluster's NetworkPolicy when the
cluster disables it; it reads pods (their IPs) and records Events.
*/}}
{{- define "kss-operator.rules" -}}
- apiGroups: ["kss.dev"]
  resources: ["keyshardclusters", "ksspolicies"]
  verbs: ["get", "list", "watch"]
# patch: the operator pins spec.bootstrap.keyserverId once it knows the keyserver.
- apiGroups: ["kss.dev"]
  resources: ["keyshardclusters"]
  verbs: ["patch"]
- apiGroups: ["kss.dev"]
  resources: ["keyshardclusters/status", "ksspolicies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# delete: a cluster's NetworkPolicy when its spec.networkPolicy.enabled turns false.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The watched namespaces, a JSON list: watchNamespace and watchNamespaces together (empty:
all namespaces).
*/}}
{{- define "kss-operator.watchedNamespaces" -}}
{{- $all := list }}
{{- with .Values.watchNamespace }}{{ $all = append $all . }}{{ end }}
{{- range .Values.watchNamespaces }}{{ if not (has . $all) }}{{ $all = append $all . }}{{ end }}{{ end }}
{{- $all | toJson }}
{{- end }}
