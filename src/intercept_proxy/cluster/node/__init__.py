"""The cluster's node: an agent that registers a Node, binds pending pods to it and runs them
on the local pod runtime (`intercept_proxy.runtime`), reporting their status like a kubelet."""
