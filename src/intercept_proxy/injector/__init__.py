"""The injector: one pure function from a Pod to the intercepted Pod (Kubernetes and local)."""
