"""`run_discover` (the `discover` command) against the fake issuer: key listing and plain-words diagnoses."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest

from k8s_jwt_auth._discover import run_discover
from k8s_jwt_auth.testing import FakeIssuer

RBAC_ROLE = "system:service-account-issuer-discovery"


def discover(issuer: str, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    kwargs.setdefault("ca_file", None)
    kwargs.setdefault("token_file", None)
    code = run_discover(issuer, out=out, **kwargs)
    text = out.getvalue()
    assert "Traceback" not in text
    return code, text


def test_lists_every_key_with_its_type_and_algorithm(k8s_issuer: FakeIssuer) -> None:
    ec = k8s_issuer.add_key("ES256")
    rsa = k8s_issuer.keys[0]
    code, text = discover(k8s_issuer.issuer)
    assert code == 0
    assert f"issuer:     {k8s_issuer.issuer}\n" in text
    assert f"jwks_uri:   {k8s_issuer.jwks_uri}\n" in text
    assert f"kid={rsa.kid}  kty=RSA (2048 bits)  alg=RS256\n" in text
    assert f"kid={ec.kid}  kty=EC (P-256)  alg=ES256\n" in text
    assert "2 usable, 0 skipped" in text and "max-age:    3600 s" in text
    assert (k8s_issuer.discovery_fetches, k8s_issuer.jwks_fetches) == (1, 1)


def test_counts_skipped_keys(k8s_issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    good = k8s_issuer.key.public_jwk()
    monkeypatch.setattr(k8s_issuer, "jwks", lambda: {"keys": [{"kty": "oct", "kid": "hmac", "k": "eA"}, good]})
    code, text = discover(k8s_issuer.issuer)
    assert code == 0 and "1 usable, 1 skipped" in text and "hmac" not in text


def test_jwks_uri_skips_discovery(k8s_issuer: FakeIssuer) -> None:
    code, text = discover("https://kubernetes.default.svc.cluster.local", jwks_uri=k8s_issuer.jwks_uri)
    assert code == 0 and "skipped (jwks_uri given)" in text and k8s_issuer.key.kid in text
    assert (k8s_issuer.discovery_fetches, k8s_issuer.jwks_fetches) == (0, 1)


def test_issuer_mismatch(k8s_issuer: FakeIssuer) -> None:
    k8s_issuer.fail("issuer_mismatch")
    code, text = discover(k8s_issuer.issuer)
    assert code == 4 and "issuer mismatch" in text and "https://attacker.example" in text
    assert "--issuer exactly as the cluster's --service-account-issuer" in text


def test_tls_failure_suggests_ca_file(tmp_path: Path) -> None:
    with FakeIssuer(tls=True) as issuer:
        code, text = discover(issuer.issuer)
        assert code == 4 and "TLS" in text and "--ca-file" in text and "ca.crt" in text
        assert issuer.ca_pem is not None
        (tmp_path / "ca.crt").write_text(issuer.ca_pem)
        code, text = discover(issuer.issuer, ca_file=str(tmp_path / "ca.crt"))
        assert code == 0 and issuer.key.kid in text


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, text = discover(f"http://127.0.0.1:{port}")
    assert code == 4 and "cannot connect" in text and "--jwks-uri" in text


def test_timeout(k8s_issuer: FakeIssuer) -> None:
    k8s_issuer.fail("slow", delay=3)
    code, text = discover(k8s_issuer.issuer, timeout=0.3)
    k8s_issuer.fail(None)
    assert code == 4 and "0.3 s timeout" in text and "--timeout" in text


def test_dropped_connection(k8s_issuer: FakeIssuer) -> None:
    k8s_issuer.fail("down")
    code, text = discover(k8s_issuer.issuer)
    assert code == 4 and "closed the connection" in text


def test_401_asks_for_a_token_and_403_for_rbac(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-right-token")
    with FakeIssuer(require_token="the-right-token") as issuer:
        code, text = discover(issuer.issuer)
        assert code == 4 and "HTTP 401" in text and "--token-file" in text and RBAC_ROLE in text
        code, text = discover(issuer.issuer, token_file=str(token_file))
        assert code == 4 and "HTTP 403" in text and "clusterrolebinding" in text and RBAC_ROLE in text
        assert "not-the-right-token" not in text and "the-right-token" not in text
        token_file.write_text("the-right-token\n")
        code, text = discover(issuer.issuer, token_file=str(token_file))
        assert code == 0 and issuer.key.kid in text and "the-right-token" not in text


class _NotAcceptable(FakeIssuer):
    def _answer(self, endpoint: str, failure: str | None, headers: Any) -> tuple[int, dict[str, str], bytes]:
        if endpoint == "jwks":
            body = (b'{"kind":"Status","status":"Failure","message":"406: Not Acceptable\\n\\nAvailable '
                    b'representations: application/jwk-set+json","reason":"NotAcceptable","code":406}')
            return 406, {"Content-Type": "application/json"}, body
        return super()._answer(endpoint, failure, headers)


def test_406_is_explained() -> None:
    with _NotAcceptable() as issuer:
        code, text = discover(issuer.issuer)
    assert code == 4 and "HTTP 406" in text and "Available representations: application/jwk-set+json" in text
    assert "Accept header" in text


@pytest.mark.parametrize(("mode", "words"), [("garbage", "is not JSON"), ("empty", "no usable key"),
                                             ("oversized", "larger than"), ("error", "HTTP 500")])
def test_bad_answers(k8s_issuer: FakeIssuer, mode: Any, words: str) -> None:
    k8s_issuer.fail(mode, endpoint="jwks")
    code, text = discover(k8s_issuer.issuer)
    assert code == 4 and words in text and "hint:" in text


@pytest.mark.parametrize(
    ("issuer", "kwargs", "words"),
    [
        ("http://kubernetes.example.com", {}, "must be an https:// URL"),
        ("", {}, "--issuer is required"),
        ("https://kubernetes.default.svc", {"ca_file": "/nonexistent/ca.crt"}, "--ca-file"),
        ("https://kubernetes.default.svc", {"token_file": "/nonexistent/token"}, "--token-file"),
        ("https://kubernetes.default.svc", {"timeout": 0}, "timeout"),
    ],
)
def test_usage_errors_exit_2(issuer: str, kwargs: dict[str, Any], words: str) -> None:
    code, text = discover(issuer, **kwargs)
    assert code == 2 and text.startswith("error: ") and words in text
