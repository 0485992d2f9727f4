"""The CLI contract: JSON on stdout, exit codes 0/1/2/3/4, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import k8s_jwt_auth
from k8s_jwt_auth.cli import main
from k8s_jwt_auth.testing import FakeIssuer

from .conftest import FIXTURES, REAL_ISSUER, REAL_NOW, real_detail

IDENTITY_KEYS = {"issuer", "subject", "namespace", "service_account", "service_account_uid", "pod_name", "pod_uid",
                 "node_name", "node_uid", "audiences", "issued_at", "expires_at", "token_id"}
POD_TOKEN = str(FIXTURES / "tokens" / "pub-pod-bound-1h.jwt")
POD_EXP = 1795431556  # 2026-11-23T10:59:16Z
BASE = ["verify", "--issuer", REAL_ISSUER, "--audience", "payments-api", "--jwks-file", str(FIXTURES / "jwks.json")]
ERROR_KEYS = {"error", "reason", "message"}


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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"k8s-jwt-auth {metadata.version('k8s-jwt-auth')}\n"


def test_version_without_package_metadata(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"k8s-jwt-auth {k8s_jwt_auth.__version__}\n"


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"], ["inspect", "-h"], ["discover", "--help"]])
def test_help_exits_0(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: k8s-jwt-auth") and "--help" in out and "error" not in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        ([*BASE, "--token-file", POD_TOKEN, "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
        ([], "give a command: verify, inspect, discover or demo"),
        (["discover"], "the following arguments are required: --issuer"),
        (["discover", "--issuer", "https://k", "--timeout", "soon"], "argument --timeout: 'soon' is not a number"),
        (["discover", "--issuer", "https://k", "--timeout", "inf"], "argument --timeout: 'inf' is not a finite number"),
        ([*BASE, "--now", "yesterday"], "argument --now: 'yesterday' is not a number"),
        ([*BASE, "--now", "nan"], "argument --now: 'nan' is not a finite number"),
        ([*BASE, "--leeway", "-5"], "argument --leeway: '-5' is negative: give a number of seconds >= 0"),
        ([*BASE, "--leeway", "1e400"], "argument --leeway: '1e400' is not a finite number"),
        (["inspect", "--now", "soon"], "argument --now: 'soon' is not a number"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argparse_usage_errors_are_the_json_error(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                  words: str) -> None:
    code = main(argv)
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert (code, set(body), body["error"], body["reason"]) == (2, ERROR_KEYS, "configuration_error", "invalid_config")
    assert body["message"].startswith(f"usage: {words}")
    assert captured.err.startswith("usage: k8s-jwt-auth")


def write(path: Path, content: str | None) -> str:
    """Make `path` a file holding `content`, a directory (`"<dir>"`), or nothing (`None`)."""
    if content == "<dir>":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    return str(path)


VERIFY_AT_REAL_NOW = ["verify", "--issuer", REAL_ISSUER, "--audience", "payments-api", "--now", str(REAL_NOW)]


@pytest.mark.parametrize(
    ("flag", "content", "code", "words"),
    [
        ("--jwks-file", None, 2, "does not exist"),
        ("--jwks-file", "<dir>", 2, "is a directory, not a file"),
        ("--jwks-file", " \n", 2, "is empty"),
        ("--jwks-file", Path(POD_TOKEN).read_text(), 2, "is not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("--jwks-file", '{"kid": "x"}', 2, 'is not a JWKS: a JWKS must be a JSON object with a "keys" list'),
        ("--jwks-file", '{"keys": [{"kty": "oct", "k": "eA"}]}', 2, "has no usable key (1 skipped;"),
        ("--token-file", None, 2, "cannot be read: No such file or directory"),
        ("--token-file", "<dir>", 2, "cannot be read: Is a directory"),
        ("--token-file", "\n", 1, "is empty: no token given"),
        ("--fetch-token-file", None, 2, "does not exist"),
        ("--fetch-token-file", "", 2, "is empty"),
        ("--ca-file", None, 2, "does not exist"),
        ("--ca-file", "", 2, "is empty"),
        ("--ca-file", Path(POD_TOKEN).read_text(), 2, "cannot load the CA bundle"),
    ],
)
def test_verify_messages_name_the_file_at_fault(capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str,
                                                content: str | None, code: int, words: str) -> None:
    path = write(tmp_path / "the-file", content)
    argv = [*VERIFY_AT_REAL_NOW, flag, path]
    if flag != "--token-file":
        argv += ["--token-file", POD_TOKEN]
    got, body = run(argv, capsys)
    assert got == code and set(body) == ERROR_KEYS
    assert body["reason"] == ("invalid_config" if code == 2 else "missing_token")
    assert path in body["message"] and words in body["message"]
    if flag != "--ca-file":  # the CA bundle message comes from the library and names the path only
        assert body["message"].startswith(f"{flag} {path!r}")
    token = Path(POD_TOKEN).read_text().strip()
    assert not [part for part in token.split(".") if part in body["message"]]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["inspect", "--token-file", "/nonexistent/token"], 2,
         "--token-file '/nonexistent/token' cannot be read: No such file or directory"),
        (["demo", "--token-file", "/nonexistent/token"], 2, "--token-file '/nonexistent/token' does not exist"),
        (["demo", "--expired-token-file", "."], 2, "--expired-token-file '.' is a directory, not a file"),
        (["verify", "--issuer", "not-a-url", "--audience", "a", "--token-file", POD_TOKEN], 2,
         "--issuer 'not-a-url' must be an https:// URL (plain http only for loopback addresses)"),
        (["verify", "--issuer", REAL_ISSUER, "--audience", " ", "--jwks-file", str(FIXTURES / "jwks.json")], 2,
         "--audience must list at least one non-empty audience: the value callers request with "
         "`serviceAccountToken.audience` (e.g. payments-api)"),
        ([*BASE, "--allow", "not-a-rule"], 2,
         "--allow: policy rule 'not-a-rule' is not NAMESPACE/SERVICEACCOUNT[/POD] (e.g. payments/*, */api, "
         "!kube-system/*)"),
    ],
)
def test_messages_name_the_flag(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str) -> None:
    assert run(argv, capsys) == (code, {"error": "configuration_error", "reason": "invalid_config",
                                        "message": message})


def test_empty_demo_token_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path / "token", "")
    assert run(["demo", "--other-token-file", path], capsys) == (
        2, {"error": "configuration_error", "reason": "invalid_config",
            "message": f"--other-token-file {path!r} is empty"})


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


@pytest.mark.parametrize(
    ("now", "line"),
    [
        (REAL_NOW, "expires: 2026-11-23T10:59:16Z (valid for another 59 minutes)"),
        (POD_EXP - 30, "expires: 2026-11-23T10:59:16Z (valid for another 30 seconds)"),
        (POD_EXP, "expires: 2026-11-23T10:59:16Z (expires within a second)"),
        (POD_EXP + 1, "expires: 2026-11-23T10:59:16Z (expired 1 second ago)"),
        (POD_EXP + 2 * 3600 + 5, "expires: 2026-11-23T10:59:16Z (expired 2 hours ago)"),
        (POD_EXP + 6 * 86400 + 3 * 3600, "expires: 2026-11-23T10:59:16Z (expired 6 days ago)"),
    ],
)
def test_inspect_says_when_the_token_expires(capsys: pytest.CaptureFixture[str], now: int, line: str) -> None:
    assert main(["inspect", "--now", str(now), "--token-file", POD_TOKEN]) == 0
    out = capsys.readouterr().out
    assert out.startswith("WARNING: NOT VERIFIED.") and out.endswith(f"\n\n{line}\n")


@pytest.mark.parametrize(
    ("now", "fields"),
    [
        (REAL_NOW, {"expired": False, "expires_at": "2026-11-23T10:59:16Z", "expires_in_seconds": 3540,
                    "checked_at": "2026-11-23T10:00:16Z"}),
        (POD_EXP, {"expired": False, "expires_at": "2026-11-23T10:59:16Z", "expires_in_seconds": 0,
                   "checked_at": "2026-11-23T10:59:16Z"}),
        (POD_EXP + 0.5, {"expired": True, "expires_at": "2026-11-23T10:59:16Z", "expires_in_seconds": -1,
                         "checked_at": "2026-11-23T10:59:16.500000Z"}),
        (POD_EXP + 6 * 86400, {"expired": True, "expires_at": "2026-11-23T10:59:16Z", "expires_in_seconds": -518400,
                               "checked_at": "2026-11-29T10:59:16Z"}),
    ],
)
def test_inspect_json_expiry_fields(capsys: pytest.CaptureFixture[str], now: float, fields: dict[str, object]) -> None:
    assert main(["inspect", "--json", "--now", str(now), "--token-file", POD_TOKEN]) == 0
    body = json.loads(capsys.readouterr().out)
    assert list(body) == ["verified", "warning", "expired", "expires_at", "expires_in_seconds", "checked_at",
                          "header", "claims", "times"]
    assert {name: body[name] for name in fields} == fields and body["verified"] is False


def test_inspect_uses_the_clock_without_now(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            k8s_issuer: FakeIssuer) -> None:
    for lifetime, expired, words in [(-3 * 3600, True, "(expired 3 hours ago)"),
                                     (2 * 86400 + 60, False, "(valid for another 2 days)")]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(k8s_issuer.mint(lifetime=lifetime)))
        assert main(["inspect", "--json"]) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["expired"] is expired and abs(body["expires_in_seconds"] - lifetime) <= 5
        monkeypatch.setattr(sys, "stdin", io.StringIO(k8s_issuer.mint(lifetime=lifetime)))
        assert main(["inspect"]) == 0
        assert capsys.readouterr().out.rstrip().endswith(words)


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"drop": ["exp"]}, "expires: never: the token has no exp claim (verify rejects it: missing_claim)"),
        ({"claims": {"exp": "soon"}},
         "expires: unknown: the exp claim is not a finite number (verify rejects it: malformed)"),
        ({"claims": {"exp": 10**400}},
         "expires: unknown: the exp claim is not a finite number (verify rejects it: malformed)"),
    ],
)
def test_inspect_token_without_a_usable_exp(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            k8s_issuer: FakeIssuer, kwargs: dict[str, Any], line: str) -> None:
    token = k8s_issuer.mint(**kwargs)
    monkeypatch.setattr(sys, "stdin", io.StringIO(token))
    assert main(["inspect"]) == 0
    assert capsys.readouterr().out.endswith(f"\n\n{line}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(token))
    assert main(["inspect", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["expired"], body["expires_at"], body["expires_in_seconds"]) == (None, None, None)


def test_inspect_garbage(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["inspect"], capsys, stdin="not a token", monkeypatch=monkeypatch)[0] == 1


def test_console_script_usage_error_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "k8s_jwt_auth", "verify", "--bogus"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr and proc.stderr.startswith(b"usage: ")
    assert json.loads(proc.stdout) == {"error": "configuration_error", "reason": "invalid_config",
                                       "message": "usage: the following arguments are required: --issuer, "
                                                  "--audience"}
    proc = subprocess.run([sys.executable, "-m", "k8s_jwt_auth", "--version"], capture_output=True, timeout=60)
    version = metadata.version("k8s-jwt-auth")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"k8s-jwt-auth {version}\n".encode(), b"")


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
            code, body = run(argv, capsys, stdin=token, monkeypatch=mp)  # 401 without the fetch token
            assert (code, body["reason"]) == (4, "keys_unavailable") and "HTTP 401" in body["message"]
            assert "its token must be sent (--fetch-token-file)" in body["message"]
            assert "token_file" not in body["message"]
            code, body = run([*argv, "--fetch-token-file", str(token_file)], capsys, stdin=token, monkeypatch=mp)
    assert (code, body["namespace"]) == (0, "payments")
