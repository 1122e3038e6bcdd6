"""OPA and regorus decide alike on the differential corpus.

The corpus is test_differential's (the same generator and seed): every request becomes the
CheckRequest Envoy sends for it and then the input document the agent builds from that
(`authz.service.check_input`, the OPA-Envoy shape), with the path as the client wrote it (Envoy
normalises it first; the raw one only makes the Rego's work harder), plus a few inputs no
CheckRequest can carry (missing or mistyped fields). Both engines evaluate, for every input, the
decision (allow, rule, reason), `allow` and the OPA-Envoy output document, and must agree
exactly, for:

- a few policies: the chart's default (nothing allowed), examples/policy.yaml, the
  differential's (every grant, GitHub traps, AWS), and that one with administration;
- custom modules of every shape (tests/policy/custom_shapes.py) over the differential's policy,
  on a part of the corpus (half of it for the hosts the modules are about).

OPA loads each policy as the bundle `intercept policy compile --bundle` writes, and judges the
whole list in one `opa eval -b` process (`with input as` each); one test runs the compiled
tarball in `opa run --server` and asks it request by request, as OPA-Envoy would. No root and no
network namespace: only the two engines.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from intercept_proxy.authz.service import check_input
from intercept_proxy.policy.model import Policy, load_policy, parse_policy
from intercept_proxy.xds.routes import TRANSPORT_KEY
from tests.integration.test_differential import POLICY as DIFFERENTIAL_POLICY
from tests.integration.test_differential import generate
from tests.policy import opa
from tests.policy.custom_shapes import PROBES, SHAPES, write_shape

REPO = Path(__file__).resolve().parents[2]
CORPUS_SIZE, SEED = 1800, 20261202  # test_differential's corpus
SHAPE_CORPUS_SIZE = 80

POLICIES = {
    "default": "{}\n",
    "example": (REPO / "examples" / "policy.yaml").read_text(),
    "differential": DIFFERENTIAL_POLICY,
    "differential_admin": DIFFERENTIAL_POLICY + "github_admin_access_enabled: true\n",
}

# Inputs no CheckRequest carries: what OPA-Envoy might hand over, or a caller of OPA's API.
ODD_INPUTS: list[Any] = [
    {},
    "GET https://pypi.org/",
    [],
    None,
    1,
    {"attributes": "x"},
    {"attributes": {}},
    {"attributes": {"request": {"http": "x"}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": "/",
                                         "headers": "x", "scheme": 5}},
                    "tlsSession": {"sni": 5}, "contextExtensions": "x"}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": 5}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": "/",
                                         "headers": {"x-request-id": 5, "upgrade": 1}}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": 7, "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": ["GET"], "host": "pypi.org", "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": "/",
                                         "headers": {"content-length": "00"}}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": "/",
                                         "body": "x"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "PyPI.org.:443", "path": "/",
                                         "scheme": "https"}}, "tlsSession": {"sni": "PYPI.ORG."}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": "/"}},
                    "tlsSession": {}, "contextExtensions": {TRANSPORT_KEY: "tls"}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "a<b>&c.test", "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "x\u2028y", "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "\u212apypi.org",
                                         "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "a" * 64 + ".test",
                                         "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org:65535",
                                         "path": "/"}}}},
    {"attributes": {"request": {"http": {"method": "POST", "host": "api.github.com",
                                         "path": "/repos/octo/hello/issues?a=%zz&b",
                                         "scheme": "https"}},
                    "tlsSession": {"sni": "api.github.com"}}},
]  # fmt: skip


def check_request(request: dict, rng: random.Random) -> external_auth_pb2.CheckRequest:
    """The CheckRequest Envoy sends the agent for one corpus request."""
    host, path = request["host"], request["path"]
    absolute = re.match(r"^https?://([^/]*)(.*)$", path)
    if absolute:  # an absolute-form target names the host; Envoy judges its path alone
        host, path = absolute.group(1), absolute.group(2) or "/"
    scheme = "https" if request["tls"] else "http"
    headers = {
        ":authority": host,
        ":method": request["method"],
        ":path": path,
        ":scheme": scheme,
        "x-request-id": str(uuid.UUID(int=rng.getrandbits(128))),
    }
    body = b""
    if request.get("body") is not None:
        body = request["body"].encode()
        headers["content-length"] = str(len(body))
    elif request.get("chunked"):
        body = b"payload"
        headers["transfer-encoding"] = "chunked"
    for name, value in request.get("headers", []):
        headers[name.lower()] = value
    http_request = attribute_context_pb2.AttributeContext.HttpRequest(
        id=str(rng.getrandbits(63)),
        method=request["method"],
        host=host,
        path=path,
        scheme=scheme,
        protocol="HTTP/2" if request.get("h2") else "HTTP/1.1",
        headers=headers,
        raw_body=body,
    )
    attrs = attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http_request),
        context_extensions={TRANSPORT_KEY: "tls" if request["tls"] else "plain"},
    )
    # Envoy fills tls_session on plain connections too, with no name.
    attrs.tls_session.sni = (request.get("sni") or "") if request["tls"] else ""
    return external_auth_pb2.CheckRequest(attributes=attrs)


def corpus_inputs(count: int) -> list[dict]:
    rng = random.Random(SEED)
    return [check_input(check_request(r, rng)) for r in generate(count, seed=SEED)]


@pytest.fixture(scope="module")
def inputs():
    docs = corpus_inputs(CORPUS_SIZE)
    raw = [d["attributes"]["request"]["http"].get("rawBody") for d in docs]
    assert any(raw) and all(base64.b64decode(b) == b"payload" for b in raw if b)
    return docs + ODD_INPUTS


def shape_corpus(inputs: list[Any]) -> list[Any]:
    """The part of the corpus the custom shapes are judged on: requests for the hosts their
    modules are about (custom_shapes.HIT, in every spelling), and as many others."""
    hits, others = [], []
    for doc in inputs[:CORPUS_SIZE]:
        host = doc["attributes"]["request"]["http"]["host"].lower()
        about = any(name in host for name in ("pypi.org", "unknown.example"))
        (hits if about else others).append(doc)
    return hits[: SHAPE_CORPUS_SIZE // 2] + others[: SHAPE_CORPUS_SIZE // 2]


def _variants(tmp: Path) -> dict[str, tuple[Policy, bool]]:
    """name: (policy, whole corpus?)"""
    variants = {name: (parse_policy(text, f"<{name}>"), True) for name, text in POLICIES.items()}
    for name, shape in SHAPES.items():
        if shape.refused:  # both engines refuse it: tests/policy/test_opa.py
            continue
        policy = load_policy(write_shape(shape, tmp / name, DIFFERENTIAL_POLICY))
        variants[f"custom:{name}"] = (policy, False)
    return variants


@pytest.fixture(scope="module")
def judged(inputs, tmp_path_factory):
    """Every variant judged by both engines: {name: (inputs, regorus, opa, seconds)}. OPA runs
    in its own processes (one at a time, one core) while regorus runs here (the other)."""
    tmp = tmp_path_factory.mktemp("variants")
    shape_inputs = shape_corpus(inputs) + ODD_INPUTS + list(PROBES.values())
    started = time.monotonic()
    jobs = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        for name, (policy, whole) in _variants(tmp).items():
            docs = inputs if whole else shape_inputs
            bundle = opa.bundle_for(policy, tmp / name.replace(":", "_"))
            jobs[name] = (docs, policy, pool.submit(opa.evaluate, bundle, docs))
        results = {}
        for name, (docs, policy, future) in jobs.items():
            mine = [opa.comparable(r) for r in opa.regorus_results(policy, docs)]
            theirs = [opa.comparable(r) for r in future.result()]
            results[name] = (docs, mine, theirs)
    total = sum(len(docs) for docs, _, _ in results.values())
    print(
        f"\nOPA/regorus differential: {len(results)} variants, {total} evaluations per engine, "
        f"{time.monotonic() - started:.1f} s"
    )
    return results


def _names() -> list[str]:
    names = list(POLICIES)
    names += [f"custom:{n}" for n, s in SHAPES.items() if not s.refused]
    return names


@pytest.mark.parametrize("name", _names())
def test_opa_decides_as_regorus(judged, name):
    docs, mine, theirs = judged[name]
    errors = [(d, r) for d, r in zip(docs, mine, strict=True) if "error" in r]
    assert not errors, f"regorus failed to evaluate: {errors[:3]}"
    differences = [(doc, m, t) for doc, m, t in zip(docs, mine, theirs, strict=True) if m != t]
    assert not differences, f"{len(differences)} differ, first ones: {differences[:3]}"
    for r in mine:
        assert r["allow"] == r["decision"]["allow"] == r["envoy_response"]["allowed"]
        assert r["envoy_response"]["dynamic_metadata"] == r["decision"]


def test_the_corpus_exercises_the_policy(judged):
    """Both outcomes and most rules, so agreement means something."""
    _, mine, _ = judged["differential"]
    rules = {r["decision"]["rule"] for r in mine}
    assert {r["decision"]["allow"] for r in mine} == {True, False}
    assert len(rules) >= 12, rules
    for name in ("custom:deny_set_of_objects", "custom:allow_set_of_objects"):
        _, mine, _ = judged[name]
        assert any(r["decision"]["rule"] in ("no_hit", "hit_mirror") for r in mine), name


# --- the compiled tarball in `opa run --server`, asked as OPA-Envoy asks it ------------------

QUERY = "decision := data.intercept.decision; allow := data.intercept.allow; " + (
    "envoy_response := data.intercept.envoy_response"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpaServer:
    def __init__(self, bundle: Path, log: Path) -> None:
        self.bundle, self.log = bundle, log

    def __enter__(self) -> OpaServer:
        for _ in range(5):  # another process may take the port first
            self.port = _free_port()
            argv = [
                opa.opa(), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
                "--bundle", self.bundle, "--log-level", "error",
            ]  # fmt: skip
            with self.log.open("a") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            if self._ready():
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                return self
            self.proc.kill()
            self.proc.wait()
        raise AssertionError(f"opa run --server did not start: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health?bundles")  # 200 once the bundle is active
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def post(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = self.conn.getresponse()
        out = json.loads(response.read())
        assert response.status == 200, out
        return out

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_the_compiled_bundle_in_opa_run_decides_as_regorus(inputs, tmp_path):
    module = tmp_path / "custom.rego"
    module.write_text(SHAPES["documented_example"].modules["custom.rego"])
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(DIFFERENTIAL_POLICY + "rego_modules: [custom.rego]\n")
    tarball = tmp_path / "bundle.tar.gz"
    result = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "policy", "compile", str(policy_file),
         "--bundle", str(tarball)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    policy = load_policy(policy_file)
    # A third of the corpus, and some GitHub writes refused whatever else matches.
    every = opa.regorus_results(policy, inputs)
    writes = [
        d for d, r in zip(inputs, every, strict=True)
        if r["decision"]["rule"] == "github_write_not_allowed"
    ]  # fmt: skip
    docs = inputs[::3] + writes[:5]
    mine = [opa.comparable(r) for r in opa.regorus_results(policy, docs)]
    with OpaServer(tarball, tmp_path / "opa.log") as server:
        status = server.post("/v1/query", {"query": "r := data.system.bundles"})
        revisions = {b["manifest"]["revision"] for b in status["result"][0]["r"].values()}
        assert revisions == {policy.revision}
        theirs = []
        for doc in docs:
            out = server.post("/v1/query", {"query": QUERY, "input": doc})["result"]
            assert len(out) == 1, out
            theirs.append(opa.comparable(out[0]))
        # OPA-Envoy's own paths: `path: intercept/allow` and `path: intercept/envoy_response`.
        for doc, r in list(zip(docs, mine, strict=True))[:50]:
            assert server.post("/v1/data/intercept/allow", {"input": doc})["result"] == r["allow"]
            envoy = server.post("/v1/data/intercept/envoy_response", {"input": doc})["result"]
            assert (
                opa.comparable({"envoy_response": envoy})["envoy_response"] == (r["envoy_response"])
            )
    differences = [(d, m, t) for d, m, t in zip(docs, mine, theirs, strict=True) if m != t]
    assert not differences, f"{len(differences)} differ, first ones: {differences[:3]}"
    assert any(r["decision"]["rule"] == "github_write_not_allowed" for r in mine)
