"""intercept-proxy: an egress sandbox that judges every outbound HTTP(S) request by a policy."""

__version__ = "0.1.0"
