// intercept-proxy-cni: the CNI plugin a node's container runtime runs in CNI mode. Go, and no
// dependency but Go's own library: it runs on the node's host, where the agent's Python is not.
module intercept-proxy/cni

go 1.26.0
