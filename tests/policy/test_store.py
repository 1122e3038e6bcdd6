"""The policy in force changes only to another valid policy."""

from __future__ import annotations

import pytest

from intercept_proxy.policy.credentials import AwsKeys
from intercept_proxy.policy.input import url_input
from intercept_proxy.policy.model import PolicyError
from intercept_proxy.policy.store import PolicyStore


def allowed(store: PolicyStore, url: str) -> bool:
    return store.engine.evaluate(url_input("GET", url)).allow


def test_valid_change_applies_invalid_change_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("allowed_domains: [pypi.org]\n")
    outcomes = []
    store = PolicyStore(path, outcomes.append)
    assert allowed(store, "https://pypi.org/")

    path.write_text("allowed_domains: [github.com]\n")
    assert store.reload() is True
    assert not allowed(store, "https://pypi.org/")
    assert allowed(store, "https://github.com/")

    good_revision = store.engine.revision
    path.write_text("allowed_domains: [github.com, 'not a domain']\n")
    assert store.reload() is False
    assert store.engine.revision == good_revision
    assert allowed(store, "https://github.com/")
    assert outcomes == [True, False]


def test_invalid_initial_policy_refuses_to_start(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("allowed_domains: 5\n")
    with pytest.raises(PolicyError):
        PolicyStore(path)


def test_watched_files_include_custom_modules(tmp_path):
    (tmp_path / "m.rego").write_text("package intercept.custom\n")
    path = tmp_path / "p.yaml"
    path.write_text("rego_modules: [m.rego]\n")
    assert PolicyStore(path).files() == [path, tmp_path / "m.rego"]


def test_unexpected_failures_keep_the_last_good_policy(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("allowed_domains: [pypi.org]\n")
    store = PolicyStore(path)
    for text in ("? [a]\n: 1\n", 'rego_modules: ["a\\0b"]\n'):
        path.write_text(text)
        assert store.reload() is False
        assert allowed(store, "https://pypi.org/")


def test_a_module_named_by_a_rejected_policy_is_watched(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("allowed_domains: [pypi.org]\n")
    store = PolicyStore(path)
    path.write_text("allowed_domains: [pypi.org]\nrego_modules: [later.rego]\n")
    assert store.reload() is False  # later.rego does not exist yet
    assert tmp_path / "later.rego" in store.files()
    (tmp_path / "later.rego").write_text("package intercept.custom\n")
    assert store.reload() is True
    assert store.files() == [path, tmp_path / "later.rego"]


def test_credentials_secrets_are_read_with_the_policy(tmp_path, monkeypatch):
    """A policy whose secrets cannot be read is rejected like one that does not parse; the
    error names the variable or file, never a value."""
    key = tmp_path / "key"
    key.write_text("file-secret-value\n")
    path = tmp_path / "p.yaml"
    path.write_text(f"credentials: [{{host: b.test, file: {key}}}]\n")
    for mode in (0o644, 0o640, 0o620):
        key.chmod(mode)
        with pytest.raises(PolicyError, match=f"only its owner may read \\(mode {mode:04o}"):
            PolicyStore(path)
    (tmp_path / "link").symlink_to(key)
    key.chmod(0o600)
    path.write_text(f"credentials: [{{host: b.test, file: {tmp_path / 'link'}}}]\n")
    with pytest.raises(PolicyError, match="cannot read the secret"):
        PolicyStore(path)
    path = tmp_path / "p.yaml"
    path.write_text(f"credentials: [{{host: a.test, env: K}}, {{host: b.test, file: {key}}}]\n")
    monkeypatch.setenv("K", "env-secret-value")
    store = PolicyStore(path)
    assert store.secrets == ("env-secret-value", "file-secret-value")
    assert store.files() == [path, key]  # a rotated secret is read again

    good = store.engine.revision
    for text, message in [
        ("credentials: [{host: a.test, env: UNSET_VARIABLE}]", "UNSET_VARIABLE is not set"),
        (f"credentials: [{{host: a.test, file: {tmp_path}/none}}]", "cannot read the secret"),
    ]:
        path.write_text(text + "\n")
        assert store.reload() is False
        assert (store.engine.revision, store.secrets[0]) == (good, "env-secret-value")
        with pytest.raises(PolicyError, match=message) as e:
            PolicyStore(path)
        assert "secret-value" not in str(e.value)
    monkeypatch.setenv("K", "short")
    path.write_text("credentials: [{host: a.test, env: K}]\n")
    with pytest.raises(PolicyError, match="8 to 256 printable characters") as e:
        PolicyStore(path)
    assert "short" not in str(e.value).replace("(env K)", "")


def test_aws_keys_are_read_with_the_policy(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    signing = "aws_signing: [{host: s3.test, service: s3, region: r, session_token_env: TOKEN}]"
    path.write_text(signing + "\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret/with+symbols=")
    monkeypatch.delenv("TOKEN", raising=False)
    with pytest.raises(PolicyError, match=r"aws_signing\[0\].session_token_env: TOKEN is not set"):
        PolicyStore(path)
    for value, message in [
        ("short", "8 to 8192 printable characters without spaces"),
        ("has a space in it", "8 to 8192 printable characters without spaces"),
        ("intercept-proxy-placeholder", "TOKEN is the placeholder"),
    ]:
        monkeypatch.setenv("TOKEN", value)
        with pytest.raises(PolicyError, match=message) as e:
            PolicyStore(path)
        assert value not in str(e.value).replace("placeholder", "")
    monkeypatch.setenv("TOKEN", "t" * 2000)
    store = PolicyStore(path)
    assert store.aws_keys == (AwsKeys("AKIDEXAMPLEKEY01", "secret/with+symbols=", "t" * 2000),)


def test_a_temporary_aws_key_needs_its_session_token(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("aws_signing: [{host: s3.test, service: s3, region: r}]\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-access-key")
    with pytest.raises(PolicyError, match="temporary key: name its session token's variable"):
        PolicyStore(path)
