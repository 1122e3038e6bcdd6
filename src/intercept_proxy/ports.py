"""Port conventions: 15000-15099 is reserved for the sidecars (the workload may not reach it)."""

SIDECAR_RANGE = (15000, 15099)

ENVOY_ADMIN = 15000
ENVOY_TLS = 15001  # TLS listener: HTTPS traffic, terminated with an on-demand certificate
ENVOY_HTTP = 15002  # plain-HTTP listener
AGENT_HTTP = 15020  # agent: liveness and readiness (kubelet probes: open from outside the pod)
AGENT_AUTHZ = 15021  # agent: Envoy ext_authz (gRPC)
AGENT_METRICS = 15022  # agent: Prometheus metrics (closed from outside unless opened)
AGENT_DNS = 15053  # agent: the DNS sinkhole (UDP and TCP) the workload's DNS is redirected to
AGENT_XDS = 15090  # agent: ADS and on-demand SDS (gRPC)
# The egress gateway's listener (an explicit proxy, as the seeds' egress-proxy Service): outside
# the sidecars' range, it is for clients.
ENVOY_GATEWAY = 3128
