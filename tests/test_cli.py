"""The CLI contract: JSON on stdout, exit codes 0/1/2/3/4, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from k8s_jwt_auth.cli import main
from k8s_jwt_auth.testing import FakeIssuer

from .conftest import FIXTURES, REAL_ISSUER, REAL_NOW, real_detail

IDENTITY_KEYS = {"issuer", "subject", "namespace", "service_account", "service_account_uid", "pod_name", "pod_uid",
                 "node_name", "node_uid", "audiences", "issued_at", "expires_at", "token_id"}
POD_TOKEN = str(FIXTURES / "tokens" / "pub-pod-bound-1h.jwt")
BASE = ["verify", "--issuer", REAL_ISSUER, "--audience", "payments-api", "--jwks-file", str(FIXTURES / "jwks.json")]


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, dict[str, object]]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # exactly one JSON object
    return code, json.loads(lines[0])


def test_verify_real_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, body = run([*BASE, "--now", str(REAL_NOW), "--token-file", POD_TOKEN], capsys)
    assert code == 0
    assert set(body) == IDENTITY_KEYS
    payload = real_detail("pub-pod-bound-1h")["payload"]
    assert body["namespace"] == "frontend" and body["service_account"] == "web"
    assert (body["pod_name"], body["node_name"], body["token_id"]) == ("web-5c6b", "node-1", payload["jti"])
    assert body["audiences"] == ["payments-api"]
    assert (body["issued_at"], body["expires_at"]) == ("2026-11-23T09:59:16Z", "2026-11-23T10:59:16Z")


def test_verify_reads_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    token = Path(POD_TOKEN).read_text()
    code, body = run([*BASE, "--now", str(REAL_NOW)], capsys, stdin=token + "\n", monkeypatch=monkeypatch)
    assert (code, body["pod_uid"]) == (0, "79c7fbb2-2102-486a-9322-f155fb636387")


def test_unbound_token_prints_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    token = str(FIXTURES / "tokens" / "pub-aud-payments-api-1h.jwt")
    code, body = run([*BASE, "--now", str(REAL_NOW), "--token-file", token], capsys)
    assert code == 0 and body["pod_name"] is None and body["node_uid"] is None


@pytest.mark.parametrize(
    ("extra", "code", "reason"),
    [
        (["--now", "1795431556", "--leeway", "0"], 0, None),
        (["--now", "1795431557", "--leeway", "0"], 1, "expired"),
        (["--now", str(REAL_NOW), "--allow", "frontend/web"], 0, None),
        (["--now", str(REAL_NOW), "--allow", "payments/*"], 3, "policy_denied"),
        (["--now", str(REAL_NOW), "--allow", "*/*", "--allow", "!frontend/*"], 3, "policy_denied"),
        (["--now", str(REAL_NOW), "--audience", "other"], 0, None),
    ],
)
def test_verify_outcomes(capsys: pytest.CaptureFixture[str], extra: list[str], code: int,
                         reason: str | None) -> None:
    got, body = run([*BASE, *extra, "--token-file", POD_TOKEN], capsys)
    assert got == code
    if reason is None:
        assert body["namespace"] == "frontend"
    else:
        assert set(body) == {"error", "reason", "message"} and body["reason"] == reason


def test_wrong_audience_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["verify", "--issuer", REAL_ISSUER, "--audience", "orders-api", "--jwks-file",
            str(FIXTURES / "jwks.json"), "--now", str(REAL_NOW), "--token-file", POD_TOKEN]
    assert run(argv, capsys) == (1, {"error": "invalid_token", "reason": "bad_audience",
                                     "message": "the token is not meant for this audience"})


@pytest.mark.parametrize("stdin", ["", "   \n", "garbage", "a.b.c", "\x00\xff" * 10])
def test_bad_input_exit_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str) -> None:
    code, body = run(BASE, capsys, stdin=stdin, monkeypatch=monkeypatch)
    assert code == 1 and body["error"] == "invalid_token"
    assert body["reason"] in {"missing_token", "malformed"}


@pytest.mark.parametrize(
    "argv",
    [
        ["verify"],
        ["verify", "--issuer", REAL_ISSUER],
        [*BASE, "--now", "yesterday"],
        [*BASE, "--token-file", "/nonexistent/token"],
        [*BASE, "--jwks-uri", "https://x/jwks"],
        ["verify", "--issuer", REAL_ISSUER, "--audience", "a", "--jwks-file", "/nonexistent.json"],
        ["verify", "--issuer", REAL_ISSUER, "--audience", "a", "--jwks-file", POD_TOKEN],
        [*BASE, "--allow", "not-a-rule"],
        [*BASE, "--leeway", "-5"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_and_config_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, body = run(argv, capsys)
    assert code == 2 and body["reason"] == "invalid_config" and set(body) == {"error", "reason", "message"}


def test_keys_unavailable_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeIssuer() as issuer:
        issuer.fail("error")
        token = issuer.mint(audiences="a")
        argv = ["verify", "--issuer", issuer.issuer, "--audience", "a"]
        with pytest.MonkeyPatch.context() as mp:
            code, body = run(argv, capsys, stdin=token, monkeypatch=mp)
    assert code == 4 and body["error"] == "temporarily_unavailable" and body["reason"] == "keys_unavailable"


def test_verify_against_live_jwks_uri(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeIssuer() as issuer:
        token = issuer.mint("payments", "worker", audiences="a", pod="worker-1")
        argv = ["verify", "--issuer", issuer.issuer, "--audience", "a", "--jwks-uri", issuer.jwks_uri]
        with pytest.MonkeyPatch.context() as mp:
            code, body = run(argv, capsys, stdin=token, monkeypatch=mp)
        assert issuer.discovery_fetches == 0 and issuer.jwks_fetches == 1
    assert (code, body["namespace"], body["pod_name"]) == (0, "payments", "worker-1")


def test_inspect_says_loudly_that_nothing_is_verified(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--token-file", POD_TOKEN]) == 0
    captured = capsys.readouterr()
    assert "NOT VERIFIED" in captured.out and "NOT VERIFIED" in captured.err
    assert "2026-11-23T10:59:16Z" in captured.out
    assert '"kid": "8XiPkDm93LU5ZCKNJVMRNi9kIKRZ2WflqDqUSWgYxLo"' in captured.out


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", "--token-file", POD_TOKEN]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["verified"] is False
    assert body["claims"]["kubernetes.io"]["pod"]["name"] == "web-5c6b"
    assert body["times"]["exp"] == "2026-11-23T10:59:16Z"


def test_inspect_garbage(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["inspect"], capsys, stdin="not a token", monkeypatch=monkeypatch)[0] == 1


def test_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    for stdin in ["", "x.y.z", "\udcff" * 3]:
        proc = subprocess.run([sys.executable, "-m", "k8s_jwt_auth", *BASE], input=stdin.encode("utf-8", "replace"),
                              capture_output=True, timeout=60)
        assert proc.returncode == 1
        assert b"Traceback" not in proc.stderr + proc.stdout
        assert json.loads(proc.stdout)["error"] == "invalid_token"


def test_discover_lists_the_issuers_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeIssuer(algorithm="ES256") as issuer:
        second = issuer.add_key("RS256")
        assert main(["discover", "--issuer", issuer.issuer]) == 0
        out = capsys.readouterr().out
        for key in issuer.keys:
            assert f"kid={key.kid}" in out
        assert "alg=ES256" in out and f"kid={second.kid}  kty=RSA" in out
        assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


def test_discover_diagnoses_rbac_and_exits_4(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-right-token")
    with FakeIssuer(require_token="right-token") as issuer:
        assert main(["discover", "--issuer", issuer.issuer, "--token-file", str(token_file)]) == 4
        out = capsys.readouterr().out
        assert "403" in out and "system:service-account-issuer-discovery" in out
        assert "not-the-right-token" not in out
        token_file.write_text("right-token")
        assert main(["discover", "--issuer", issuer.issuer, "--token-file", str(token_file)]) == 0


def test_discover_refuses_plain_http_to_a_remote_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "--issuer", "http://kubernetes.example"]) == 2
    assert "https://" in capsys.readouterr().out


def test_verify_fetch_token_file_is_sent_to_the_issuer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("reader-token\n")
    with FakeIssuer(require_token="reader-token") as issuer:
        token = issuer.mint("payments", "worker", audiences="a")
        argv = ["verify", "--issuer", issuer.issuer, "--audience", "a"]
        with pytest.MonkeyPatch.context() as mp:
            assert run(argv, capsys, stdin=token, monkeypatch=mp)[0] == 4  # 401 without the fetch token
            code, body = run([*argv, "--fetch-token-file", str(token_file)], capsys, stdin=token, monkeypatch=mp)
    assert (code, body["namespace"]) == (0, "payments")
