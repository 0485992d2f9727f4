"""The generic WSGI K8sJWTAuthMiddleware: a bare WSGI app under a real gunicorn on 127.0.0.1 (started once for the
module), the same app called directly (environ in, start_response out), and Falcon (`falcon.testing.TestClient`, a
resource reading `req.env["k8s_jwt_auth.workload"]`)."""

from __future__ import annotations

import inspect
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import httpx
import pytest

from k8s_jwt_auth import AlreadyInstalled, ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.wsgi import ENVIRON_KEY, K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, UnavailableKeys, bad_tokens, bearer, static_verifier
from ._audit import audit_dicts, capture, leaks
from ._servers import Example, example_env, serve


@pytest.fixture(autouse=True)
def _audit(caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return static_verifier(issuer)


def name(workload: Any) -> str | None:
    return None if workload is None else f"{workload.namespace}/{workload.service_account}"


# -- a bare WSGI app, called directly -------------------------------------------------------------------------


class Bare:
    """A bare WSGI app answering `{"workload", "path"}` from `environ["k8s_jwt_auth.workload"]`; keeps each environ."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environs.append(environ)
        body = json.dumps({"workload": name(environ[ENVIRON_KEY]), "path": environ["PATH_INFO"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def environ(path: str = "/whoami", authorization: str | None = None, **extra: Any) -> dict[str, Any]:
    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "test",
           "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
           "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), "wsgi.multithread": True,
           "wsgi.multiprocess": False, "wsgi.run_once": False}
    if authorization is not None:
        env["HTTP_AUTHORIZATION"] = authorization
    env.update(extra)
    return env


def call(app: Any, env: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """Call a WSGI app as a server does: status line, headers (lower-case names) and the whole body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    assert len(started) == 1
    status, headers = started[0]
    return status, {k.lower(): v for k, v in headers}, body


def test_the_workload_is_in_the_environ(verifier: TokenVerifier, issuer: FakeIssuer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    bare = Bare()
    token = issuer.mint("payments", "worker", pod="worker-1")
    status, _, body = call(K8sJWTAuthMiddleware(bare, verifier), environ(authorization=f"Bearer {token}"))
    assert status == "200 OK"
    assert json.loads(body)["workload"] == "payments/worker"
    assert bare.environs[0][ENVIRON_KEY].pod_name == "worker-1"
    assert [(r["decision"], r["path"], r["method"], r["transport"]) for r in audit_dicts(caplog)] == [
        ("allowed", "/whoami", "GET", "http")]
    assert leaks(caplog, token) == []


STATUS_LINES = {401: "401 Unauthorized", 403: "403 Forbidden", 503: "503 Service Unavailable"}


@pytest.mark.parametrize("case", ["missing", "expired", "tampered", "wrong_audience", "foreign_key", "garbage",
                                  "policy_denied", "keys_unavailable"])
def test_refusals(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture, case: str) -> None:
    tokens = {case: (token, 401, reason) for case, (token, reason) in bad_tokens(issuer).items()}
    tokens.update(missing=(None, 401, "missing_token"),
                  policy_denied=(issuer.mint("kube-system", "admin"), 403, "policy_denied"),
                  keys_unavailable=(issuer.mint("payments", "worker"), 503, "keys_unavailable"))
    token, expected, reason = tokens[case]
    keys = UnavailableKeys() if case == "keys_unavailable" else None
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks(), allow=["payments/*"])
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, TokenVerifier(config, keys=keys), realm="payments")
    status, headers, body = call(app, environ(authorization=None if token is None else f"Bearer {token}"))
    assert bare.environs == []  # the app is never called
    assert status == STATUS_LINES[expected]
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert set(answer) == {"error", "reason", "message"} and answer["reason"] == reason
    if expected == 503:
        assert (headers["retry-after"], "www-authenticate" in headers) == ("7", False)
        assert "issuer is down" not in answer["message"]
    elif reason == "missing_token":
        assert headers["www-authenticate"] == 'Bearer realm="payments"'
    else:
        assert headers["www-authenticate"].startswith(f'Bearer realm="payments", error="{answer["error"]}"')
    decision = {401: "rejected_token", 403: "denied_policy", 503: "unavailable"}[expected]
    assert [(r["decision"], r["reason"]) for r in audit_dicts(caplog)] == [(decision, reason)]


@pytest.mark.parametrize("header", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_headers_are_401(verifier: TokenVerifier, header: str) -> None:
    value = MALFORMED_HEADERS[header].decode("latin-1")  # PEP 3333: header bytes as Latin-1 characters
    status, headers, _ = call(K8sJWTAuthMiddleware(Bare(), verifier), environ(authorization=value))
    assert status == "401 Unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")


def test_a_repeated_header_joined_by_the_server_is_malformed(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    for joined in (f"Bearer {token}, Bearer {token}", f"Bearer {token},Bearer {token}"):  # werkzeug, gunicorn
        status, _, body = call(K8sJWTAuthMiddleware(Bare(), verifier), environ(authorization=joined))
        assert (status, json.loads(body)["reason"]) == ("401 Unauthorized", "malformed")


def test_optional_mode(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, verifier, optional=True)
    assert json.loads(call(app, environ())[2])["workload"] is None
    assert json.loads(call(app, environ(authorization="Basic dXNlcjpwYXNz"))[2])["workload"] is None
    assert call(app, environ(authorization="Bearer not-a-jwt"))[0] == "401 Unauthorized"
    assert bare.environs[0][ENVIRON_KEY] is None  # the key is always set for the app


@pytest.mark.parametrize(("script_name", "path_info", "exempt"), [
    ("", "/healthz", True), ("", "/public/a/b", True), ("", "/healthz/", False), ("/api", "/healthz", True),
    ("/api", "/whoami", False), ("", "/api/healthz", False), ("", "/caf\xc3\xa9", True)])  # /café, PEP 3333 style
def test_exempt_paths_are_matched_inside_the_app(verifier: TokenVerifier, caplog: pytest.LogCaptureFixture,
                                                 script_name: str, path_info: str, exempt: bool) -> None:
    """Exempt paths are app-relative (`PATH_INFO`, as Flask routes them); logs and records carry the full path."""
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, verifier, exempt_paths=["/healthz", "/public/*", "/café"])
    status, _, _ = call(app, environ(path_info, SCRIPT_NAME=script_name))
    assert status == ("200 OK" if exempt else "401 Unauthorized")
    if exempt:
        assert bare.environs[0][ENVIRON_KEY] is None
        assert audit_dicts(caplog) == []
    else:
        assert [r["path"] for r in audit_dicts(caplog)] == [script_name + path_info]


def test_the_header_option(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    app = K8sJWTAuthMiddleware(Bare(), verifier, header="X-Forwarded-Authorization")
    assert call(app, environ(HTTP_X_FORWARDED_AUTHORIZATION=f"Bearer {token}"))[0] == "200 OK"
    assert json.loads(call(app, environ(authorization=f"Bearer {token}"))[2])["reason"] == "missing_token"
    odd = K8sJWTAuthMiddleware(Bare(), verifier, header="Content-Type")  # PEP 3333: CONTENT_TYPE, no HTTP_
    assert call(odd, environ(CONTENT_TYPE=f"Bearer {token}"))[0] == "200 OK"


def test_remote_keys_are_fetched_without_an_event_loop(issuer: FakeIssuer) -> None:
    """A plain worker thread (no event loop anywhere) fetches the keys by discovery and answers."""
    app = K8sJWTAuthMiddleware(Bare(), VerifierConfig(issuer=issuer.issuer, audiences=["test"]))
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(
        call(app, environ(authorization=f"Bearer {issuer.mint()}"))[0]))
    worker.start()
    worker.join(10)
    assert results == ["200 OK"]
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


def test_no_token_in_logs_or_bodies(verifier: TokenVerifier, issuer: FakeIssuer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    tokens = [issuer.mint("payments", "worker"), issuer.mint("kube-system", "admin"),
              *(token for token, _ in bad_tokens(issuer).values())]
    app = K8sJWTAuthMiddleware(Bare(), verifier, policy=Policy.parse("payments/*"))
    bodies = [call(app, environ(authorization=f"Bearer {token}"))[2].decode() for token in tokens]
    assert "rejected http /whoami: 403 policy_denied" in caplog.text
    for token in tokens:
        for part in {token, *token.split(".")} - {""}:
            assert part not in caplog.text
            assert all(part not in body for body in bodies)


# -- construction ------------------------------------------------------------------------------------------


def test_the_signature_is_the_documented_one() -> None:
    parameters = inspect.signature(K8sJWTAuthMiddleware).parameters
    assert list(parameters)[:2] == ["app", "verifier"]
    assert parameters["verifier"].default is None
    defaults = {p.name: p.default for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert defaults == {"exempt_paths": (), "optional": False, "header": "authorization", "realm": None,
                        "policy": None}


@pytest.mark.parametrize(("options", "keyword"), [
    ({"header": "x_token"}, "header="), ({"realm": ""}, "realm="), ({"exempt_paths": "healthz"}, "exempt_paths="),
    ({"optional": "maybe"}, "optional=")])
def test_invalid_options_fail_at_construction(verifier: TokenVerifier, options: dict[str, Any],
                                              keyword: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        K8sJWTAuthMiddleware(Bare(), verifier, **options)
    assert str(raised.value).startswith(keyword)


class _Other:
    """Another WSGI middleware, the werkzeug way: the app it wraps is `.app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Any:  # pragma: no cover - never served
        return self.app(environ, start_response)


def test_installing_twice_raises(verifier: TokenVerifier) -> None:
    once = K8sJWTAuthMiddleware(Bare(), verifier)
    for wrapped in (once, _Other(once)):
        with pytest.raises(AlreadyInstalled) as raised:
            K8sJWTAuthMiddleware(wrapped, verifier)
        assert isinstance(raised.value, RuntimeError)


def test_importing_it_loads_no_web_framework() -> None:
    code = ("import json, sys\nimport k8s_jwt_auth.integrations.wsgi\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'starlette', 'fastapi', 'litestar', "
            "'quart', 'django', 'flask', 'werkzeug', 'falcon', 'gunicorn'})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(proc.stdout) == []


# -- Falcon -----------------------------------------------------------------------------------------------------


class WhoAmI:
    """A Falcon resource reading the workload the middleware stored in the WSGI environ."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        workload = req.env["k8s_jwt_auth.workload"]  # a k8s_jwt_auth.WorkloadIdentity, or None
        resp.media = {"workload": name(workload), "pod": workload.pod_name if workload else None}


def falcon_app(verifier: TokenVerifier, **options: Any) -> K8sJWTAuthMiddleware:
    app = falcon.App()
    app.add_route("/whoami", WhoAmI())
    app.add_route("/healthz", WhoAmI())
    return K8sJWTAuthMiddleware(app, verifier, exempt_paths=["/healthz"], **options)


def test_falcon(verifier: TokenVerifier, issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    client = falcon.testing.TestClient(falcon_app(verifier, policy=Policy.parse("payments/*")))
    good = client.simulate_get("/whoami", headers=bearer(issuer.mint("payments", "worker", pod="worker-1")))
    missing = client.simulate_get("/whoami")
    denied = client.simulate_get("/whoami", headers=bearer(issuer.mint("kube-system", "admin")))
    exempt = client.simulate_get("/healthz", headers=bearer("not-a-jwt"))
    mounted = client.simulate_get("/whoami", headers=bearer(issuer.mint("payments", "worker")),
                                  extras={"SCRIPT_NAME": "/api"})
    assert (good.status_code, good.json) == (200, {"workload": "payments/worker", "pod": "worker-1"})
    assert (missing.status, missing.headers["www-authenticate"], missing.json["reason"]) == (
        "401 Unauthorized", "Bearer", "missing_token")
    assert (denied.status_code, denied.json["error"], denied.json["reason"]) == (
        403, "insufficient_scope", "policy_denied")
    assert denied.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert exempt.json == {"workload": None, "pod": None}
    assert mounted.status_code == 200
    assert [(r["decision"], r["path"]) for r in audit_dicts(caplog)] == [
        ("allowed", "/whoami"), ("rejected_token", "/whoami"), ("denied_policy", "/whoami"), ("allowed", "/api/whoami")]


def test_falcon_keys_unavailable(issuer: FakeIssuer) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    client = falcon.testing.TestClient(falcon_app(TokenVerifier(config, keys=UnavailableKeys())))
    result = client.simulate_get("/whoami", headers=bearer(issuer.mint()))
    assert (result.status, result.headers["retry-after"], result.json["reason"]) == (
        "503 Service Unavailable", "7", "keys_unavailable")
    assert "www-authenticate" not in result.headers
    assert client.simulate_get("/healthz").status_code == 200  # what needs no token still answers


# -- a real server: gunicorn on 127.0.0.1 -------------------------------------------------------------------------

GUNICORN_APP = '''
"""A bare WSGI app behind K8sJWTAuthMiddleware, configured from K8S_JWT_AUTH_* (verifier=None)."""
import json

from k8s_jwt_auth.integrations.wsgi import K8sJWTAuthMiddleware


def hello(environ, start_response):
    workload = environ["k8s_jwt_auth.workload"]
    body = json.dumps({"workload": None if workload is None else workload.username,
                       "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = K8sJWTAuthMiddleware(hello, exempt_paths=["/healthz", "/\u00f1/*"], realm="bare")
'''


@pytest.fixture(scope="module")
def gunicorn(k8s_issuer_session: FakeIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The bare app under `gunicorn --workers 1` on an ephemeral port of 127.0.0.1, for this module."""
    directory: Path = tmp_path_factory.mktemp("gunicorn_app")
    (directory / "bare_app.py").write_text(textwrap.dedent(GUNICORN_APP))
    (directory / "jwks.json").write_text(json.dumps(k8s_issuer_session.jwks()))
    env = example_env(ISSUER=k8s_issuer_session.issuer, AUDIENCES="test", JWKS_FILE=str(directory / "jwks.json"),
                      ALLOW="payments/*")
    with serve(Example("gunicorn", ("--chdir", str(directory), "bare_app:app")), env) as client:
        yield client


def test_gunicorn(gunicorn: httpx.Client, issuer: FakeIssuer) -> None:
    token = issuer.mint("payments", "worker")
    good = gunicorn.get("/whoami", headers=bearer(token))
    assert (good.status_code, good.json()) == (200, {"workload": "system:serviceaccount:payments:worker",
                                                     "path": "/whoami"})
    missing = gunicorn.get("/whoami")
    assert (missing.status_code, missing.reason_phrase, missing.headers["www-authenticate"]) == (
        401, "Unauthorized", 'Bearer realm="bare"')
    assert missing.json()["reason"] == "missing_token"
    assert int(missing.headers["content-length"]) == len(missing.content)
    denied = gunicorn.get("/whoami", headers=bearer(issuer.mint("kube-system", "admin")))
    assert (denied.status_code, denied.json()["reason"]) == (403, "policy_denied")
    repeated = gunicorn.get("/whoami", headers=[("Authorization", f"Bearer {token}")] * 2)
    assert (repeated.status_code, repeated.json()["reason"]) == (401, "malformed")  # gunicorn joins them with ","
    exempt = gunicorn.get("/%C3%B1/docs")  # /ñ/docs: PEP 3333 hands it over as Latin-1, matched decoded
    assert (exempt.status_code, exempt.json()["workload"]) == (200, None)
