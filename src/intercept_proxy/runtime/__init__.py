"""The local pod runtime: a Pod spec run on this machine, as a kubelet would run it."""
