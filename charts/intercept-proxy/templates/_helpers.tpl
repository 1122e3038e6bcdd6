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

{{/* Pod selector of every rule: the label a platform engineer puts on a pod. */}}
{{- define "intercept-proxy.matchLabelledPods" -}}
any:
  - resources:
      kinds: [Pod]
      operations: [CREATE]
      selector:
        matchLabels:
          intercept-proxy/enabled: "true"
{{- end }}

{{- define "intercept-proxy.resources" -}}
{{ dict "requests" .requests "limits" .limits | toJson }}
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
periodSeconds: 1
timeoutSeconds: 1
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
{{- end }}

{{/* The interceptor's volumes, appended after the pod's own: the policy; the CA (made by the
agent in memory, or a Secret whose files are readable by the agent's UID), mounted into the agent
only; the trust bundle the agent writes and the workload reads; the pod's own policy from its
annotation, followed when the annotation changes. */}}
{{- define "intercept-proxy.volumes" -}}
- name: intercept-policy
  configMap:
    name: {{ .Release.Name }}-policy
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
          fieldPath: metadata.annotations['intercept-proxy/opa-data']
{{- end }}
{{- end }}

{{/* A Kyverno variable: `{{ <expression> }}` in the rendered policy. */}}
{{- define "intercept-proxy.var" -}}
{{ printf "{{ %s }}" . }}
{{- end }}

{{/* Pods the injection already went through are left alone (as by the injector). */}}
{{- define "intercept-proxy.excludeInjected" -}}
any:
  - resources:
      annotations:
        intercept-proxy/injected: "true"
{{- end }}
