"""The cluster fixtures (`cluster`, `kube`, `namespace`) are the session's, in tests/conftest.py:
one cluster serves every folder that uses it."""
