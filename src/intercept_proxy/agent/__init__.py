"""The agent: the sidecar process serving xDS, on-demand certificates and ext_authz."""
