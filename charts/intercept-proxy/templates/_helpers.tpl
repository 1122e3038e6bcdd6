{{/*
Names and constants shared by the templates. What the injection adds (containers, volumes, the
trust bundle's variables) is not written here: it is rendered from the injector itself into
_injection.tpl (intercept_proxy.injector.template).
*/}}

{{- define "intercept-proxy.labels" -}}
{{ include "intercept-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Labels of what Kyverno generates: not Helm's to manage. */}}
{{- define "intercept-proxy.selectorLabels" -}}
app.kubernetes.io/name: intercept-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "intercept-proxy.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end }}

{{/* The Secret whose keys the agent reads into its environment (the policy's credentials). */}}
{{- define "intercept-proxy.credentialsSecret" -}}
{{ printf "%s-credentials" .Release.Name }}
{{- end }}

{{/* The Secret holding the shared CA (tls.crt, tls.key), in `secret` and `certManager` modes. */}}
{{- define "intercept-proxy.caSecret" -}}
{{- if eq .Values.ca.mode "secret" -}}
{{ .Values.ca.secretName | default (printf "%s-ca" .Release.Name) }}
{{- else -}}
{{ printf "%s-ca" .Release.Name }}
{{- end }}
{{- end }}

{{/* UIDs no workload may run as: root could undo the capture, the sidecars are exempt from it. */}}
{{- define "intercept-proxy.reservedUids" -}}
{{ list 0 (.Values.envoy.uid | int) (.Values.agent.uid | int) | toJson }}
{{- end }}

{{/* Pod selector of every rule: the label a platform engineer puts on a pod, in the namespaces
this release serves (injection.namespaceSelector: two releases in one cluster serve disjoint
namespaces). The argument: the root context, the operations, and optionally the kind (Pod, or a
subresource such as Pod/ephemeralcontainers). */}}
{{- define "intercept-proxy.matchLabelledPods" -}}
any:
  - resources:
      kinds: [{{ .kind | default "Pod" }}]
      operations: [{{ .operations | join ", " }}]
      selector:
        matchLabels:
          intercept-proxy/enabled: "true"
      {{- with .root.Values.injection.namespaceSelector }}
      namespaceSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* Fails the rendering on values the injector refuses too (InjectorSettings). */}}
{{- define "intercept-proxy.checkValues" -}}
{{- /* Kyverno refuses policy names over 63 characters: <release>-validate-pod-changes is the longest. */}}
{{- if gt (len .Release.Name) 42 }}
{{- fail (printf "the release name %q has %d characters: at most 42, for the ClusterPolicy %s-validate-pod-changes to stay within Kubernetes' 63" .Release.Name (len .Release.Name) .Release.Name) }}
{{- end }}
{{- if eq (.Values.envoy.uid | int) (.Values.agent.uid | int) }}
{{- fail "envoy.uid and agent.uid must differ: each sidecar is exempted from the capture by its own UID" }}
{{- end }}
{{- range .Values.capture.tlsPorts }}
{{- if has . $.Values.capture.httpPorts }}
{{- fail (printf "capture.tlsPorts and capture.httpPorts both list port %v: a port goes to one listener" .) }}
{{- end }}
{{- end }}
{{- with .Values.gateway }}
{{- if .enabled }}
{{- if eq .namespace $.Release.Namespace }}
{{- fail (printf "gateway.namespace: %s is the release's namespace; the gateway needs one of its own (Pod Security restricted, no copies of the sandboxes' objects)" .namespace) }}
{{- end }}
{{- $fewest := ternary .autoscaling.minReplicas .replicas .autoscaling.enabled | int }}
{{- if le $fewest (.podDisruptionBudget.minAvailable | int) }}
{{- fail (printf "gateway.podDisruptionBudget.minAvailable (%v) must be below the fewest replicas (%v): else no node with a replica could ever be drained" .podDisruptionBudget.minAvailable $fewest) }}
{{- end }}
{{- if and .autoscaling.enabled (gt (.autoscaling.minReplicas | int) (.autoscaling.maxReplicas | int)) }}
{{- fail (printf "gateway.autoscaling.minReplicas (%v) is above maxReplicas (%v)" .autoscaling.minReplicas .autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}


{{/* A label selector (matchLabels, matchExpressions) as the API's labelSelector query writes it. */}}
{{- define "intercept-proxy.labelSelector" -}}
{{- $terms := list -}}
{{- range $key, $value := .matchLabels }}{{ $terms = append $terms (printf "%s=%s" $key $value) }}{{ end -}}
{{- range .matchExpressions }}
{{- if eq .operator "In" }}{{ $terms = append $terms (printf "%s in (%s)" .key (join "," .values)) }}
{{- else if eq .operator "NotIn" }}{{ $terms = append $terms (printf "%s notin (%s)" .key (join "," .values)) }}
{{- else if eq .operator "Exists" }}{{ $terms = append $terms .key }}
{{- else }}{{ $terms = append $terms (printf "!%s" .key) }}
{{- end }}
{{- end -}}
{{ join "," $terms }}
{{- end }}

{{/* A Kyverno variable: `{{ <expression> }}` in the rendered policy. */}}
{{- define "intercept-proxy.var" -}}
{{ printf "{{ %s }}" . }}
{{- end }}

{{/* Pods the injection already went through are not injected again (the injector verifies
them instead; here <release>-validate-pods does). */}}
{{- define "intercept-proxy.excludeInjected" -}}
any:
  - resources:
      annotations:
        intercept-proxy/injected: "true"
{{- end }}

{{/* The name of a ClusterPolicy with synchronized generate rules (dict root, base, rules): Kyverno
lets such a policy gain rules but never change or lose one, so each rendering of its rules is a
policy of its own, named by their digest. The old one must be gone before the new one exists
(intercept-proxy.stalePolicies). 63 characters at most: Kyverno labels what it generates with
the name. */}}
{{- define "intercept-proxy.generatingPolicy" -}}
{{- printf "%s-%s" .root.Release.Name .base | trunc 54 | trimSuffix "-" }}-{{ .rules | sha256sum | trunc 8 }}
{{- end }}

{{/* The names of this rendering's generating ClusterPolicies (a JSON list). */}}
{{- define "intercept-proxy.generatingPolicies" -}}
{{- $names := list (include "intercept-proxy.generatingPolicy" (dict "root" . "base" "clone" "rules" (include "intercept-proxy.cloneRules" . | trim))) }}
{{- if .Values.networkPolicy.enabled }}
{{- $names = append $names (include "intercept-proxy.generatingPolicy" (dict "root" . "base" "egress" "rules" (include "intercept-proxy.egressRules" . | trim))) }}
{{- end }}
{{- if .Values.gateway.enabled }}
{{- $names = append $names (include "intercept-proxy.gatewayClientsPolicy" .) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The release's generating ClusterPolicies in the cluster that this rendering replaces: another
digest of a name of intercept-proxy.generatingPolicies (a JSON list; none where Helm cannot look,
as in `helm template`). A new policy and the old one it replaces, together, claim the same
copies; deleting the old one deletes the copies it held at that moment, by name, those its
successor has just taken over included. Measured: about one upgrade in four under load left a
namespace still selected without its copy of the policy, its new pods waiting, until Kyverno's
next background scan (an hour by default). So the pre-upgrade hook deletes these before Helm
creates their successors, which then generate the copies afresh. */}}
{{- define "intercept-proxy.stalePolicies" -}}
{{- $current := include "intercept-proxy.generatingPolicies" . | fromJsonArray }}
{{- $bases := list }}
{{- range $current }}{{ $bases = append $bases (regexReplaceAll "-[0-9a-f]{8}$" . "") }}{{ end }}
{{- $stale := list }}
{{- range (lookup "kyverno.io/v1" "ClusterPolicy" "" "").items | default list }}
{{- $name := .metadata.name }}
{{- $labels := dig "metadata" "labels" dict . }}
{{- $ours := and (eq (get $labels "app.kubernetes.io/instance") $.Release.Name) (eq (get $labels "app.kubernetes.io/name") "intercept-proxy") }}
{{- if and $ours (has (regexReplaceAll "-[0-9a-f]{8}$" $name "") $bases) (not (has $name $current)) }}
{{- $stale = append $stale $name }}
{{- end }}
{{- end }}
{{- toJson $stale }}
{{- end }}

{{/* Kyverno foreach entries giving every container and init container of a pod the variables
`env` (replacing its own of the same names, at the end of its env) and the mount `volumeMount`:
the list is created when absent, those names are removed (from the last, so that indices hold),
then the variables and the mount are appended. */}}
{{- define "intercept-proxy.setEnv" -}}
{{- $names := list -}}
{{- range .env }}{{ $names = append $names .name }}{{ end -}}
{{- $idx := include "intercept-proxy.var" "elementIndex" -}}
{{- $env := .env -}}
{{- $mount := .volumeMount -}}
{{- range $field, $list := dict "containers" "request.object.spec.containers" "initContainers" "request.object.spec.initContainers || `[]`" }}
- list: {{ $list | quote }}
  preconditions:
    all:
      - key: {{ include "intercept-proxy.var" "element.env || `[]` | length(@)" | quote }}
        operator: Equals
        value: 0
  patchesJson6902: |-
    - op: add
      path: /spec/{{ $field }}/{{ $idx }}/env
      value: []
- list: {{ $list | quote }}
  foreach:
    - list: "element.env || `[]`"
      order: Descending
      preconditions:
        all:
          - key: {{ include "intercept-proxy.var" "element.name" | quote }}
            operator: AnyIn
            value: {{ $names | toJson }}
      patchesJson6902: |-
        - op: remove
          path: /spec/{{ $field }}/{{ include "intercept-proxy.var" "elementIndex0" }}/env/{{ include "intercept-proxy.var" "elementIndex1" }}
- list: {{ $list | quote }}
  preconditions:
    all:
      - key: {{ include "intercept-proxy.var" "element.volumeMounts || `[]` | length(@)" | quote }}
        operator: Equals
        value: 0
  patchesJson6902: |-
    - op: add
      path: /spec/{{ $field }}/{{ $idx }}/volumeMounts
      value: []
- list: {{ $list | quote }}
  patchesJson6902: |-
    {{- range $env }}
    - op: add
      path: /spec/{{ $field }}/{{ $idx }}/env/-
      value: {{ toJson . }}
    {{- end }}
    - op: add
      path: /spec/{{ $field }}/{{ $idx }}/volumeMounts/-
      value: {{ toJson $mount }}
{{- end }}
{{- end }}

{{/* A namespace's Pod Security labels for a level: enforced, warned and audited alike. */}}
{{- define "intercept-proxy.podSecurityLabels" -}}
{{- range list "enforce" "audit" "warn" }}
pod-security.kubernetes.io/{{ . }}: {{ $ }}
{{- end }}
{{- end }}
