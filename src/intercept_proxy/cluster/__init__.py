"""A real control plane and a node of ours on this machine (`scripts/cluster`); see
docs/cluster.md. `client` and `kubeconfig` are also the image's (CNI mode's node agent reads the
API server with them), so this package imports nothing by itself."""
