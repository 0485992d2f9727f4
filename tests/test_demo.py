"""`k8s-jwt-auth demo`: real HTTP to a protected service on loopback, with the fake issuer or a 'real' one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from k8s_jwt_auth.cli import main
from k8s_jwt_auth.integrations._demo import run_demo, tamper
from k8s_jwt_auth.testing import FakeIssuer


def summary(out: str) -> dict[str, int]:
    return json.loads(out.strip().splitlines()[-1])


def test_demo_with_the_fake_issuer_has_every_expected_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert summary(out) == {"calls": 6, "unexpected": 0}
    audit = out.split("audit log of the service")[1].splitlines()[1:7]
    assert [line.split()[0] for line in audit] == ["allowed", "denied_policy"] + ["rejected_token"] * 4
    assert all("(token " in line for line in audit) and "eyJ" not in out  # fingerprints, never tokens
    for line, reason in [("allowed workload", "payments/worker pod=worker-7d9f"), ("other namespace", "policy_denied"),
                         ("expired token", "expired"), ("tampered token", "bad_signature"),
                         ("no token", "missing_token")]:
        row = next(r for r in out.splitlines() if r.startswith(line))
        assert reason in row and row.endswith("ok")


def write(tmp_path: Path, name: str, token: str) -> str:
    path = tmp_path / name
    path.write_text(token + "\n")
    return str(path)


def test_demo_against_an_issuer_named_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
        monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "orders-api")
        monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", "shop/*")
        good = write(tmp_path, "good", issuer.mint("shop", "cart", audiences="orders-api"))
        other = write(tmp_path, "other", issuer.mint("batch", "job", audiences="orders-api"))
        expired = write(tmp_path, "expired", issuer.mint("shop", "cart", audiences="orders-api", lifetime=-600))
        out = io.StringIO()
        assert run_demo(token_file=good, other_token_file=other, expired_token_file=expired, out=out) == 0
        assert summary(out.getvalue()) == {"calls": 5, "unexpected": 0}
        assert "shop/cart" in out.getvalue()
        # a token the policy denies, given as the allowed one: the demo must say so and fail
        out = io.StringIO()
        assert run_demo(token_file=other, out=out) == 1
        assert "UNEXPECTED" in out.getvalue() and summary(out.getvalue())["unexpected"] == 1


def test_demo_reports_an_unreachable_issuer_as_unexpected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        token = write(tmp_path, "t", issuer.mint("shop", "cart", audiences="a"))
        issuer.fail("error")
        monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
        monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "a")
        out = io.StringIO()
        assert run_demo(token_file=token, out=out) == 1
        assert "keys_unavailable" in out.getvalue()


def test_demo_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", "https://kubernetes.default.svc.cluster.local")
    assert main(["demo"]) == 2  # no K8S_JWT_AUTH_AUDIENCES
    assert json.loads(capsys.readouterr().out)["reason"] == "invalid_config"
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "a")
    assert main(["demo", "--token-file", "/nonexistent/token"]) == 2
    assert "/nonexistent/token" in json.loads(capsys.readouterr().out)["message"]


def test_tamper_keeps_the_shape_but_changes_the_payload() -> None:
    token = "aGVhZA.cGF5bG9hZA.c2ln"
    forged = tamper(token)
    assert forged != token and forged.split(".")[0::2] == token.split(".")[0::2]


def test_demo_expectations_follow_an_open_or_dry_run_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
        monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "a")
        good = write(tmp_path, "good", issuer.mint("shop", "cart", audiences="a"))
        other = write(tmp_path, "other", issuer.mint("batch", "job", audiences="a"))
        out = io.StringIO()
        assert run_demo(token_file=good, other_token_file=other, out=out) == 0  # no rules: the other call is 200
        assert "no K8S_JWT_AUTH_ALLOW rules" in out.getvalue()
        monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", "shop/*")
        monkeypatch.setenv("K8S_JWT_AUTH_DRY_RUN", "true")
        out = io.StringIO()
        assert run_demo(token_file=good, other_token_file=other, out=out) == 0
        assert "dry run" in out.getvalue()


def test_token_files_without_a_real_issuer_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--token-file", "/etc/hostname"]) == 2
    assert "K8S_JWT_AUTH_ISSUER" in json.loads(capsys.readouterr().out)["message"]
