{{/*
Names and constants shared by the templates. The container specs below are the injector's
(src/intercept_proxy/injector/pod.py) written as templates: tests/chart renders them, applies
the Kyverno policy to sample pods and compares the result with inject_pod().
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

{{/* The Secret holding the shared CA (tls.crt, tls.key), in `secret` and `certManager` modes. */}}
{{- define "intercept-proxy.caSecret" -}}
{{- if eq .Values.ca.mode "secret" -}}
{{ .Values.ca.secretName | default (printf "%s-ca" .Release.Name) }}
{{- else -}}
{{ printf "%s-ca" .Release.Name }}
{{- end }}
{{- end }}

{{/* The variables through which common clients find their CA bundle (TRUST_VARIABLES). */}}
{{- define "intercept-proxy.trustVariables" -}}
- SSL_CERT_FILE
- REQUESTS_CA_BUNDLE
- CURL_CA_BUNDLE
- NODE_EXTRA_CA_CERTS
- GIT_SSL_CAINFO
- AWS_CA_BUNDLE
- PIP_CERT
- CARGO_HTTP_CAINFO
{{- end }}

{{/* The interceptor's own containers, which no workload container may be named after. */}}
{{- define "intercept-proxy.sidecarNames" -}}
- proxy-init
- intercept-agent
- envoy
{{- end }}

{{/* UIDs no workload may run as: root could undo the capture, the sidecars are exempt from it. */}}
{{- define "intercept-proxy.reservedUids" -}}
{{ list 0 (.Values.envoy.uid | int) (.Values.agent.uid | int) | toJson }}
{{- end }}

{{/* Pod selector of every rule: the label a platform engineer puts on a pod. The argument:
the operations, and optionally the kind (Pod, or a subresource such as Pod/ephemeralcontainers). */}}
{{- define "intercept-proxy.matchLabelledPods" -}}
any:
  - resources:
      kinds: [{{ .kind | default "Pod" }}]
      operations: [{{ .operations | join ", " }}]
      selector:
        matchLabels:
          intercept-proxy/enabled: "true"
{{- end }}

{{/* Fails the rendering on values the injector refuses too (InjectorSettings). */}}
{{- define "intercept-proxy.checkValues" -}}
{{- if eq (.Values.envoy.uid | int) (.Values.agent.uid | int) }}
{{- fail "envoy.uid and agent.uid must differ: each sidecar is exempted from the capture by its own UID" }}
{{- end }}
{{- range .Values.capture.tlsPorts }}
{{- if has . $.Values.capture.httpPorts }}
{{- fail (printf "capture.tlsPorts and capture.httpPorts both list port %v: a port goes to one listener" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A resource quantity as the API server writes it back (resource.Quantity's canonical form):
an integer with the largest suffix of its family that keeps it an integer (1000m is 1, 1024Mi is
1Gi). The sidecars are compared with their rendering once admitted, so nothing in them may be
rewritten on the way in. As canonical_quantity in src/intercept_proxy/injector/settings.py. */}}
{{- define "intercept-proxy.quantity" -}}
{{- $q := . -}}
{{- if kindIs "float64" $q -}}
{{- if ne (float64 (int64 $q)) $q -}}
{{- fail (printf "resource quantity %v: write an integer with a suffix (500m rather than 0.5)" $q) -}}
{{- end -}}
{{- $q = int64 $q -}}
{{- end -}}
{{- $q = toString $q -}}
{{- if not (regexMatch "^(0|[1-9][0-9]{0,17})(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$" $q) -}}
{{- fail (printf "resource quantity %q: write an integer with an optional suffix (500m, 1Gi)" $q) -}}
{{- end -}}
{{- $number := regexReplaceAll "[^0-9]+$" $q "" | int64 -}}
{{- $suffix := regexReplaceAll "^[0-9]+" $q "" -}}
{{- $binary := hasSuffix "i" $suffix -}}
{{- $suffixes := ternary (list "Ki" "Mi" "Gi" "Ti" "Pi" "Ei") (list "m" "" "k" "M" "G" "T" "P" "E") $binary -}}
{{- $base := ternary 1024 1000 $binary -}}
{{- $index := 0 -}}
{{- range $i, $s := $suffixes }}{{ if eq $s $suffix }}{{ $index = $i }}{{ end }}{{ end -}}
{{- range $suffixes -}}
{{- if and (ne $number 0) (eq (mod $number $base) 0) (lt (add1 $index) (len $suffixes)) -}}
{{- $number = div $number $base -}}
{{- $index = add1 $index -}}
{{- end -}}
{{- end -}}
{{- if eq $number 0 }}0{{ else }}{{ $number }}{{ index $suffixes $index }}{{ end -}}
{{- end }}

{{/* Requests and limits as the API server stores them (Resources.to_k8s): canonical
quantities, a limit without a request requested too, no empty map. */}}
{{- define "intercept-proxy.resources" -}}
{{- $limits := dict -}}
{{- range $name, $q := .limits }}{{ $_ := set $limits $name (include "intercept-proxy.quantity" $q) }}{{ end -}}
{{- $requests := deepCopy $limits -}}
{{- range $name, $q := .requests }}{{ $_ := set $requests $name (include "intercept-proxy.quantity" $q) }}{{ end -}}
{{- $out := dict -}}
{{- with $requests }}{{ $_ := set $out "requests" . }}{{ end -}}
{{- with $limits }}{{ $_ := set $out "limits" . }}{{ end -}}
{{ toJson $out }}
{{- end }}

{{/* With the token mounted, the sidecars hold an empty volume where the ServiceAccount plugin
would mount it (NO_TOKEN_MOUNT): a pod injected ahead of time reaches Kyverno as injected. */}}
{{- define "intercept-proxy.tokenMasks" -}}
{{- if .Values.serviceAccountToken.automount -}}
- name: intercept-no-token
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumeMounts of a sidecar that mounts nothing else. */}}
{{- define "intercept-proxy.maskedMounts" -}}
{{- with include "intercept-proxy.tokenMasks" . }}
volumeMounts:
  {{- . | nindent 2 }}
{{- end }}
{{- end }}

{{/* What the API server would fill in on a container (TERMINATION_MESSAGE). */}}
{{- define "intercept-proxy.containerDefaults" -}}
terminationMessagePath: /dev/termination-log
terminationMessagePolicy: File
{{- end }}

{{- define "intercept-proxy.sidecarSecurityContext" -}}
runAsUser: {{ . | int }}
runAsGroup: {{ . | int }}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "intercept-proxy.probe" -}}
httpGet:
  path: {{ .path }}
  port: 15020
  scheme: HTTP
periodSeconds: 1
timeoutSeconds: 1
successThreshold: 1
failureThreshold: {{ .failures }}
{{- end }}

{{/* proxy-init: the capture rules. The only root container, with NET_ADMIN and NET_RAW. */}}
{{- define "intercept-proxy.proxyInit" -}}
name: proxy-init
image: {{ include "intercept-proxy.image" .Values.image | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command:
  - intercept
  - proxy-init
  - --envoy-uid
  - {{ .Values.envoy.uid | int | toString | quote }}
  - --agent-uid
  - {{ .Values.agent.uid | int | toString | quote }}
  {{- range .Values.capture.tlsPorts }}
  - --tls-port
  - {{ . | int | toString | quote }}
  {{- end }}
  {{- range .Values.capture.httpPorts }}
  - --http-port
  - {{ . | int | toString | quote }}
  {{- end }}
  {{- range .Values.capture.allowedCidrs }}
  - --allow-cidr
  - {{ . | quote }}
  {{- end }}
  - --inbound-port
  - "15020"
  {{- range .Values.capture.inboundPorts }}
  - --inbound-port
  - {{ . | int | toString | quote }}
  {{- end }}
resources: {{ include "intercept-proxy.resources" .Values.proxyInit.resources }}
securityContext:
  runAsUser: 0
  runAsGroup: 0
  runAsNonRoot: false
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
    add: [NET_ADMIN, NET_RAW]
  seccompProfile:
    type: RuntimeDefault
{{- include "intercept-proxy.maskedMounts" . }}
{{ include "intercept-proxy.containerDefaults" . }}
{{- end }}

{{/* The agent: ADS for Envoy, certificates, ext_authz, the DNS sinkhole. A native sidecar. */}}
{{- define "intercept-proxy.agent" -}}
{{- $secretCa := ne .Values.ca.mode "ephemeral" -}}
name: intercept-agent
image: {{ include "intercept-proxy.image" .Values.image | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
restartPolicy: Always
command:
  - intercept
  - agent
  - run
  - --policy
  - /etc/intercept/policy/policy.yaml
  - --ca-cert
  - /var/run/intercept/ca/{{ ternary "tls.crt" "ca.pem" $secretCa }}
  - --ca-key
  - /var/run/intercept/ca/{{ ternary "tls.key" "ca.key" $secretCa }}
  - --trust-bundle
  - /var/run/intercept/trust/ca-bundle.pem
  - --cert-validity-hours
  {{- /* Python's "{:g}": six significant digits, no trailing zeros. */}}
  - {{ printf "%.6g" (float64 .Values.agent.certValidityHours) | quote }}
  - --health-address
  - 0.0.0.0
  - --health-address
  - "::"
  {{- range .Values.dns.forwardSuffixes }}
  - --dns-forward-suffix
  - {{ . | quote }}
  {{- end }}
  {{- if ne .Values.policy.podOverride "none" }}
  - --pod-policy
  - /etc/intercept/pod/policy.yaml
  - --pod-policy-mode
  - {{ .Values.policy.podOverride }}
  {{- end }}
resources: {{ include "intercept-proxy.resources" .Values.agent.resources }}
securityContext:
  {{- include "intercept-proxy.sidecarSecurityContext" .Values.agent.uid | nindent 2 }}
startupProbe:
  {{- include "intercept-proxy.probe" (dict "path" "/healthz" "failures" 60) | nindent 2 }}
livenessProbe:
  {{- include "intercept-proxy.probe" (dict "path" "/healthz" "failures" 10) | nindent 2 }}
volumeMounts:
  - name: intercept-policy
    mountPath: /etc/intercept/policy
    readOnly: true
  - name: intercept-ca
    mountPath: /var/run/intercept/ca
    readOnly: {{ $secretCa }}
  - name: intercept-trust
    mountPath: /var/run/intercept/trust
  {{- if ne .Values.policy.podOverride "none" }}
  - name: intercept-pod-policy
    mountPath: /etc/intercept/pod
    readOnly: true
  {{- end }}
  {{- with include "intercept-proxy.tokenMasks" . }}{{ . | nindent 2 }}{{ end }}
{{ include "intercept-proxy.containerDefaults" . }}
{{- end }}

{{/* Envoy, with the agent's minimal bootstrap (`intercept envoy bootstrap`). A native sidecar
whose startup probe holds every later container back until the interceptor is configured. */}}
{{- define "intercept-proxy.envoy" -}}
name: envoy
image: {{ include "intercept-proxy.image" .Values.envoy.image | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
restartPolicy: Always
command:
  - envoy
  - --config-yaml
  - {{ .Files.Get "files/envoy-bootstrap.json" | trim | toJson }}
  - --disable-hot-restart
  - --file-flush-interval-msec
  - "1000"
  - --log-level
  - warning
resources: {{ include "intercept-proxy.resources" .Values.envoy.resources }}
securityContext:
  {{- include "intercept-proxy.sidecarSecurityContext" .Values.envoy.uid | nindent 2 }}
startupProbe:
  {{- include "intercept-proxy.probe" (dict "path" "/readyz" "failures" 120) | nindent 2 }}
readinessProbe:
  {{- include "intercept-proxy.probe" (dict "path" "/readyz" "failures" 3) | nindent 2 }}
{{- include "intercept-proxy.maskedMounts" . }}
{{ include "intercept-proxy.containerDefaults" . }}
{{- end }}

{{/* The interceptor's volumes, appended after the pod's own: the policy; the CA (made by the
agent in memory, or a Secret whose files are readable by the agent's UID), mounted into the agent
only; the trust bundle the agent writes and the workload reads; the pod's own policy from its
annotation, followed when the annotation changes. */}}
{{- define "intercept-proxy.volumes" -}}
- name: intercept-policy
  configMap:
    name: {{ .Release.Name }}-policy
    defaultMode: 420
{{- if eq .Values.ca.mode "ephemeral" }}
- name: intercept-ca
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- else }}
- name: intercept-ca
  secret:
    secretName: {{ include "intercept-proxy.caSecret" . }}
    defaultMode: 292
{{- end }}
- name: intercept-trust
  emptyDir:
    medium: Memory
    sizeLimit: 4Mi
{{- if ne .Values.policy.podOverride "none" }}
- name: intercept-pod-policy
  downwardAPI:
    items:
      - path: policy.yaml
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.annotations['intercept-proxy/opa-data']
    defaultMode: 420
{{- end }}
{{- if .Values.serviceAccountToken.automount }}
- name: intercept-no-token
  emptyDir: {}
{{- end }}
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
