"""`run_discover` (the `discover` command) against the fake issuer: key listing and plain-words diagnoses."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from k8s_jwt_auth import ConfigurationError
from k8s_jwt_auth._discover import run_discover
from k8s_jwt_auth.cli import main
from k8s_jwt_auth.testing import FakeIssuer

RBAC_ROLE = "system:service-account-issuer-discovery"
#: How library messages name settings; the CLI has flags only, so discover must never print these.
SETTING_WORDS = ("token_file", "ca_file", "allow_insecure_http", "set jwks_uri", "or jwks_uri", "K8S_JWT_AUTH_")


def discover(issuer: str, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    kwargs.setdefault("ca_file", None)
    kwargs.setdefault("token_file", None)
    code = run_discover(issuer, out=out, **kwargs)
    text = out.getvalue()
    assert "Traceback" not in text
    assert not [w for w in SETTING_WORDS if w in text], text
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
        ("http://kubernetes.example.com", {}, "--issuer 'http://kubernetes.example.com' must be an https:// URL"),
        ("not-a-url", {}, "--issuer 'not-a-url' must be an https:// URL"),
        ("https://k", {"jwks_uri": "http://10.0.0.1:6443/openid/v1/jwks"}, "--jwks-uri 'http://10.0.0.1:6443/"),
        ("", {}, "--issuer is required"),
        ("https://kubernetes.default.svc", {"ca_file": "/nonexistent/ca.crt"},
         "--ca-file '/nonexistent/ca.crt' does not exist"),
        ("https://kubernetes.default.svc", {"token_file": "/nonexistent/token"},
         "--token-file '/nonexistent/token' does not exist"),
        ("https://kubernetes.default.svc", {"timeout": 0}, "--timeout must be a number of seconds > 0, not 0"),
        ("https://kubernetes.default.svc", {"timeout": float("nan")}, "--timeout must be"),
    ],
)
def test_usage_errors_raise_and_print_nothing(issuer: str, kwargs: dict[str, Any], words: str) -> None:
    out = io.StringIO()
    with pytest.raises(ConfigurationError) as info:
        run_discover(issuer, out=out, **{"ca_file": None, "token_file": None, **kwargs})
    assert words in info.value.message and out.getvalue() == ""
    assert not [w for w in SETTING_WORDS if w in info.value.message]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--issuer", "not-a-url"], "--issuer 'not-a-url' must be an https:// URL (plain http only for loopback"),
        (["--issuer", "http://kubernetes.example"], "--issuer 'http://kubernetes.example' must be an https:// URL"),
        (["--issuer", "https://k", "--timeout", "0"], "--timeout must be a number of seconds > 0"),
        (["--issuer", "https://k", "--timeout", "soon"], "usage: argument --timeout: 'soon' is not a number"),
        (["--issuer", "https://k", "--ca-file", "/nonexistent/ca.crt"], "'/nonexistent/ca.crt' does not exist"),
        (["--issuer", "https://k", "--token-file", "."], "--token-file '.' is a directory, not a file"),
        ([], "usage: the following arguments are required: --issuer"),
    ],
)
def test_cli_usage_errors_are_the_json_error_with_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                         words: str) -> None:
    assert main(["discover", *argv]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["error"] == "configuration_error" and body["reason"] == "invalid_config"
    assert words in body["message"] and not [w for w in SETTING_WORDS if w in body["message"]]


def test_empty_token_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           k8s_issuer: FakeIssuer) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    assert main(["discover", "--issuer", k8s_issuer.issuer, "--token-file", str(token_file)]) == 2
    assert json.loads(capsys.readouterr().out)["message"] == f"--token-file {str(token_file)!r} is empty"
    assert k8s_issuer.discovery_fetches == 0


class _AnonymousForbidden(FakeIssuer):
    """kube-apiserver with anonymous auth on and no RBAC for system:anonymous: 403 without a bearer token."""

    def _answer(self, endpoint: str, failure: str | None, headers: Any) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Authorization") is None:
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                               "code": 403, "message": 'forbidden: User "system:anonymous" cannot get path '
                               '"/.well-known/openid-configuration"'}).encode()
            return 403, {"Content-Type": "application/json"}, body
        return super()._answer(endpoint, failure, headers)


def test_anonymous_403_suggests_token_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("reader-token\n")
    with _AnonymousForbidden(require_token="reader-token") as issuer:
        assert main(["discover", "--issuer", issuer.issuer]) == 4
        text = capsys.readouterr().out
        assert [r.get("authorization") for r in issuer.requests] == [None]
        failed, hint = (line for line in text.splitlines() if line.startswith(("FAILED:", "hint:")))
        assert "HTTP 403" in failed and "system:anonymous" in failed
        assert hint.startswith("hint:       the API server refuses anonymous requests: pass --token-file")
        assert RBAC_ROLE in hint and not [w for w in SETTING_WORDS if w in text]
        assert main(["discover", "--issuer", issuer.issuer, "--token-file", str(token_file)]) == 0
        text = capsys.readouterr().out
        assert issuer.key.kid in text and "reader-token" not in text
        assert issuer.requests[-1]["authorization"] == "Bearer reader-token"


@pytest.mark.parametrize(("mode", "status"), [("forbidden", "403"), ("unauthorized", "401")])
def test_anonymous_refusal_suggests_token_file(k8s_issuer: FakeIssuer, mode: Any, status: str) -> None:
    k8s_issuer.fail(mode)
    code, text = discover(k8s_issuer.issuer)
    hint = text.split("hint:")[1]
    assert code == 4 and f"HTTP {status}" in text and "pass --token-file" in hint and RBAC_ROLE in hint


def test_401_with_a_token_says_the_token_was_not_accepted(k8s_issuer: FakeIssuer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired-token")
    k8s_issuer.fail("unauthorized")
    code, text = discover(k8s_issuer.issuer, token_file=str(token_file))
    assert code == 4 and "HTTP 401" in text and "expired-token" not in text
    assert "hint:       the API server did not accept the token of --token-file" in text


def test_404_names_the_flags(k8s_issuer: FakeIssuer) -> None:
    code, text = discover(k8s_issuer.issuer, jwks_uri=k8s_issuer.issuer + "/no/such/jwks")
    assert code == 4 and "HTTP 404" in text and "(or --jwks-uri)" in text


def test_plain_http_jwks_uri_from_discovery(k8s_issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    document = {**k8s_issuer.discovery(), "jwks_uri": "http://10.0.0.1:6443/openid/v1/jwks"}
    monkeypatch.setattr(k8s_issuer, "discovery", lambda: document)
    code, text = discover(k8s_issuer.issuer)
    assert code == 4 and "must be an https:// URL (plain http only for loopback addresses)" in text
    assert "pass an https --jwks-uri" in text


def test_jwks_uri_on_another_host_suggests_the_flag(k8s_issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    other_host = k8s_issuer.jwks_uri.replace("127.0.0.1", "localhost")
    document = {**k8s_issuer.discovery(), "jwks_uri": other_host}
    monkeypatch.setattr(k8s_issuer, "discovery", lambda: document)
    code, text = discover(k8s_issuer.issuer)
    assert code == 0 and "on another host than the issuer" in text and "pass --jwks-uri" in text
