"""The generic ASGI K8sJWTAuthMiddleware: a bare ASGI app (httpx's ASGITransport, direct scope calls, uvicorn on
127.0.0.1), Litestar (its TestClient, `request.state.workload`) and Quart (its test client, `request.scope`)."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from k8s_jwt_auth import AlreadyInstalled, ConfigurationError, Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.asgi import K8sJWTAuthMiddleware
from k8s_jwt_auth.testing import FakeIssuer

from ._asgi import MALFORMED_HEADERS, UnavailableKeys, bad_tokens, bearer, static_verifier
from ._audit import audit_dicts, capture, leaks
from ._threaded import uvicorn_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _audit(caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return static_verifier(issuer)


def name(workload: Any) -> str | None:
    return None if workload is None else f"{workload.namespace}/{workload.service_account}"


# -- a bare ASGI app ---------------------------------------------------------------------------------------


class Bare:
    """A bare ASGI app: HTTP answers `{"workload": "<ns>/<sa>" or null, "path": ...}` from `scope["state"]`;
    websockets are accepted and get the same JSON; lifespan puts `started` into the lifespan state."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.lifespan_state: dict[str, Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        elif scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(self.answer(scope))})
            await send({"type": "websocket.close", "code": 1000})
        else:
            body = json.dumps(self.answer(scope)).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

    @staticmethod
    def answer(scope: dict[str, Any]) -> dict[str, Any]:
        return {"workload": name(scope.get("state", {}).get("workload")), "path": scope["path"]}

    async def lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.lifespan_state = scope.get("state")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.lifespan_state is not None:
                    self.lifespan_state["started"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_the_workload_is_in_the_scope_state(verifier: TokenVerifier, issuer: FakeIssuer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    bare = Bare()
    token = issuer.mint("payments", "worker", pod="worker-1")
    async with client(K8sJWTAuthMiddleware(bare, verifier)) as http:
        response = await http.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"workload": "payments/worker", "path": "/whoami"}
    workload = bare.scopes[0]["state"]["workload"]
    assert workload.pod_name == "worker-1"
    assert set(bare.scopes[0]) & {"user", "auth"} == set()  # the Starlette keys are Starlette's middleware's
    records = audit_dicts(caplog)
    assert [(r["decision"], r["path"], r["method"], r["transport"]) for r in records] == [
        ("allowed", "/whoami", "GET", "http")]
    assert leaks(caplog, token) == []


def refusal_cases(issuer: FakeIssuer) -> dict[str, tuple[dict[str, str], int, str]]:
    cases = {case: (bearer(token), 401, reason) for case, (token, reason) in bad_tokens(issuer).items()}
    cases["missing"] = ({}, 401, "missing_token")
    cases["policy_denied"] = (bearer(issuer.mint("kube-system", "admin")), 403, "policy_denied")
    return cases


CASES = ["missing", "expired", "tampered", "wrong_audience", "foreign_key", "garbage", "policy_denied"]


@pytest.mark.parametrize("case", CASES)
async def test_refusals_are_json_with_an_rfc6750_challenge(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture,
                                                           case: str) -> None:
    headers, status, reason = refusal_cases(issuer)[case]
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, static_verifier(issuer), policy=Policy.parse("payments/*"), realm="payments")
    async with client(app) as http:
        response = await http.get("/whoami", headers=headers)
    assert bare.scopes == []  # the app is never called
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "reason", "message"}
    assert (body["error"], body["reason"]) == ("invalid_token" if status == 401 else "insufficient_scope", reason)
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    challenge = response.headers["www-authenticate"]
    if reason == "missing_token":
        assert challenge == 'Bearer realm="payments"'  # no error code (RFC 6750 3.1)
    else:
        assert challenge.startswith('Bearer realm="payments", error="' + body["error"] + '"')
    assert [(r["decision"], r["reason"]) for r in audit_dicts(caplog)] == [
        ("denied_policy" if status == 403 else "rejected_token", reason)]


async def test_keys_unavailable_is_503_with_retry_after_and_no_challenge(issuer: FakeIssuer,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
    async with client(K8sJWTAuthMiddleware(Bare(), TokenVerifier(config, keys=UnavailableKeys()))) as http:
        response = await http.get("/whoami", headers=bearer(issuer.mint()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "www-authenticate" not in response.headers
    assert response.json()["reason"] == "keys_unavailable"
    assert "issuer is down" not in response.text  # the detailed message is for the logs
    assert [r["decision"] for r in audit_dicts(caplog)] == ["unavailable"]


async def test_optional_mode_lets_requests_without_credentials_through(verifier: TokenVerifier,
                                                                       issuer: FakeIssuer) -> None:
    async with client(K8sJWTAuthMiddleware(Bare(), verifier, optional=True)) as http:
        anonymous = await http.get("/whoami")
        other_scheme = await http.get("/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        bad = await http.get("/whoami", headers=bearer("not-a-jwt"))
        good = await http.get("/whoami", headers=bearer(issuer.mint("payments", "worker")))
    assert anonymous.json()["workload"] is None and other_scheme.json()["workload"] is None
    assert (bad.status_code, bad.json()["reason"]) == (401, "malformed")
    assert good.json()["workload"] == "payments/worker"


# -- direct scope calls: paths, state, lifespan, websockets -------------------------------------------------


async def call(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Call `app` with `scope`; `incoming` are the messages it receives (then a disconnect). Returns what it sent."""
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


def http_scope(path: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    headers = [(b"host", b"testserver")] + ([(b"authorization", f"Bearer {token}".encode())] if token else [])
    return {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": headers, **extra}


def test_header_credentials_are_what_the_gate_takes() -> None:
    """Absent: `None`; once: the value as text (Latin-1, the gate's fast path); repeated: every value (malformed)."""
    from k8s_jwt_auth.integrations._asgi_common import header_credentials

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"headers": [(b"host", b"x"), *headers]}

    key = b"authorization"
    assert header_credentials(scope(), key) is None
    assert header_credentials({}, key) is None
    assert header_credentials(scope((b"authorization", b"Bearer \xe9")), key) == "Bearer \xe9"
    assert header_credentials(scope((b"Authorization", b"Bearer a")), key) == "Bearer a"  # a server that kept case
    assert header_credentials(scope((b"authorization", b"a"), (b"x-other-header", b"b"), (b"AUTHORIZATION", b"c")),
                              key) == [b"a", b"c"]


@pytest.mark.parametrize("header", sorted(MALFORMED_HEADERS))
async def test_malformed_authorization_headers_are_401(verifier: TokenVerifier, header: str) -> None:
    bare = Bare()
    scope = http_scope("/whoami")
    scope["headers"].append((b"authorization", MALFORMED_HEADERS[header]))
    sent = await call(K8sJWTAuthMiddleware(bare, verifier), scope)
    assert sent[0]["status"] == 401
    assert dict(sent[0]["headers"])[b"www-authenticate"].startswith(b"Bearer")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["more_body"] is False  # spelled out: Quart >= 0.23's test client reads it without a default
    assert bare.scopes == []


@pytest.mark.parametrize(("root_path", "path", "exempt"), [
    ("", "/healthz", True), ("", "/public", True), ("", "/public/docs/a", True), ("", "/healthz/", False),
    ("", "/publicity", False), ("/api", "/api/healthz", True), ("/api", "/api/public/x", True),
    ("/api", "/api/whoami", False), ("/api", "/healthz", True),  # a server that keeps root_path out of path
])
async def test_exempt_paths_are_matched_without_the_root_path(verifier: TokenVerifier, root_path: str, path: str,
                                                              exempt: bool) -> None:
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, verifier, exempt_paths=["/healthz", "/public/*"])
    sent = await call(app, http_scope(path, root_path=root_path))
    assert sent[0]["status"] == (200 if exempt else 401)
    if exempt:
        assert bare.scopes[0]["state"] == {"workload": None}


async def test_the_state_is_created_when_absent_and_written_into_when_given(verifier: TokenVerifier,
                                                                            issuer: FakeIssuer) -> None:
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, verifier)
    token = issuer.mint("payments", "worker")
    await call(app, http_scope("/whoami", token))
    assert list(bare.scopes[0]["state"]) == ["workload"]
    given = {"db": "pool"}  # a server's per-request copy of the lifespan state
    await call(app, http_scope("/whoami", token, state=given))
    assert bare.scopes[1]["state"] is given  # the same dict: what the app writes there stays visible to the server
    assert given["db"] == "pool" and name(given["workload"]) == "payments/worker"


async def test_every_admitted_request_has_the_key_so_no_earlier_workload_shows_through(verifier: TokenVerifier,
                                                                                        issuer: FakeIssuer) -> None:
    """Even under a server that gave every request the same state dict (against the ASGI spec), an exempt or
    anonymous request reads `None`, not the identity of the request before it."""
    bare = Bare()
    app = K8sJWTAuthMiddleware(bare, verifier, exempt_paths=["/healthz"], optional=True)
    shared: dict[str, Any] = {}
    await call(app, http_scope("/whoami", issuer.mint("payments", "worker"), state=shared))
    assert name(shared["workload"]) == "payments/worker"
    await call(app, http_scope("/healthz", state=shared))
    assert shared["workload"] is None
    await call(app, http_scope("/whoami", issuer.mint("payments", "worker"), state=shared))
    await call(app, http_scope("/whoami", state=shared))  # anonymous (optional)
    assert shared["workload"] is None


@pytest.mark.parametrize("kind", ["lifespan", "custom.extension"])
async def test_other_scope_types_pass_through_untouched(verifier: TokenVerifier, kind: str) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Any:  # pragma: no cover - never called
        raise AssertionError

    async def send(message: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    scope = {"type": kind, "asgi": {"version": "3.0"}, "state": {"db": "pool"}}
    await K8sJWTAuthMiddleware(inner, verifier)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert seen[0][0] is scope and scope == {"type": kind, "asgi": {"version": "3.0"}, "state": {"db": "pool"}}


def ws_scope(token: str | None = None) -> dict[str, Any]:
    scope = http_scope("/ws", token)
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    return scope


async def test_a_websocket_with_a_token_is_accepted(verifier: TokenVerifier, issuer: FakeIssuer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    bare = Bare()
    sent = await call(K8sJWTAuthMiddleware(bare, verifier), ws_scope(issuer.mint("payments", "worker")),
                      [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"])["workload"] == "payments/worker"
    assert [(r["decision"], r["transport"], r["method"]) for r in audit_dicts(caplog)] == [
        ("allowed", "websocket", None)]


@pytest.mark.parametrize(("case", "code", "reason"), [
    ("missing", 1008, "missing_token"), ("garbage", 1008, "malformed"), ("denied", 1008, "policy_denied"),
    ("keys_unavailable", 1013, "keys_unavailable")])
async def test_a_refused_websocket_is_closed_before_it_is_accepted(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture,
                                                                   case: str, code: int, reason: str) -> None:
    keys = UnavailableKeys() if case == "keys_unavailable" else None
    config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks(), allow=["payments/*"])
    token = {"missing": None, "garbage": "not-a-jwt", "denied": issuer.mint("kube-system", "admin"),
             "keys_unavailable": issuer.mint("payments", "worker")}[case]
    bare = Bare()
    sent = await call(K8sJWTAuthMiddleware(bare, TokenVerifier(config, keys=keys)), ws_scope(token),
                      [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": code, "reason": reason}]
    assert bare.scopes == []
    assert [(r["reason"], r["transport"]) for r in audit_dicts(caplog)] == [(reason, "websocket")]


async def test_websocket_false_lets_websockets_through(verifier: TokenVerifier) -> None:
    scope = ws_scope()
    sent = await call(K8sJWTAuthMiddleware(Bare(), verifier, websocket=False), scope, [{"type": "websocket.connect"}])
    assert sent[0]["type"] == "websocket.accept"
    assert "state" not in scope  # untouched


# -- construction ------------------------------------------------------------------------------------------


def test_the_signature_is_the_documented_one() -> None:
    parameters = inspect.signature(K8sJWTAuthMiddleware).parameters
    assert list(parameters)[:2] == ["app", "verifier"]
    assert parameters["verifier"].default is None
    defaults = {p.name: p.default for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert defaults == {"exempt_paths": (), "optional": False, "header": "authorization", "realm": None,
                        "policy": None, "websocket": True}


@pytest.mark.parametrize(("options", "keyword"), [
    ({"header": "x_token"}, "header="), ({"realm": ""}, "realm="), ({"exempt_paths": ["healthz"]}, "exempt_paths="),
    ({"exempt_paths": ["/a*"]}, "exempt_paths="), ({"optional": "maybe"}, "optional=")])
def test_invalid_options_fail_at_construction(verifier: TokenVerifier, options: dict[str, Any],
                                              keyword: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        K8sJWTAuthMiddleware(Bare(), verifier, **options)
    assert str(raised.value).startswith(keyword)


def test_the_verifier_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch, issuer: FakeIssuer) -> None:
    with pytest.raises(ConfigurationError):
        K8sJWTAuthMiddleware(Bare())
    monkeypatch.setenv("K8S_JWT_AUTH_ISSUER", issuer.issuer)
    monkeypatch.setenv("K8S_JWT_AUTH_AUDIENCES", "payments-api")
    monkeypatch.setenv("K8S_JWT_AUTH_ALLOW", "payments/*")
    middleware = K8sJWTAuthMiddleware(Bare())
    assert middleware.verifier.config.audiences == ("payments-api",)
    assert middleware.policy == Policy.parse("payments/*")


class _Other:
    """Another middleware, Starlette-style: the app it wraps is `.app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never served
        await self.app(scope, receive, send)


def test_installing_twice_raises(verifier: TokenVerifier) -> None:
    once = K8sJWTAuthMiddleware(Bare(), verifier)
    for wrapped in (once, _Other(_Other(once))):
        with pytest.raises(AlreadyInstalled) as raised:
            K8sJWTAuthMiddleware(wrapped, verifier)
        assert isinstance(raised.value, RuntimeError)


def test_starlettes_middleware_is_this_one_and_either_refuses_the_other(verifier: TokenVerifier) -> None:
    """One ASGI pipeline: Starlette's middleware subclasses this one (it stores `scope["user"]`/`scope["auth"]`);
    either one around the other, or around `AuthenticationMiddleware` with our backend, is installed twice."""
    from starlette.middleware.authentication import AuthenticationMiddleware

    from k8s_jwt_auth.integrations import starlette

    assert issubclass(starlette.K8sJWTAuthMiddleware, K8sJWTAuthMiddleware)
    backend = AuthenticationMiddleware(Bare(), backend=starlette.WorkloadAuthBackend(verifier),
                                       on_error=starlette.on_error)
    for outer, inner in [(K8sJWTAuthMiddleware, starlette.K8sJWTAuthMiddleware(Bare(), verifier)),
                         (starlette.K8sJWTAuthMiddleware, K8sJWTAuthMiddleware(Bare(), verifier)),
                         (starlette.K8sJWTAuthMiddleware, backend), (K8sJWTAuthMiddleware, backend)]:
        with pytest.raises(AlreadyInstalled):
            outer(inner, verifier)


def test_importing_it_loads_no_web_framework() -> None:
    code = ("import json, sys\nimport k8s_jwt_auth.integrations.asgi\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'starlette', 'fastapi', 'litestar', "
            "'quart', 'django', 'flask', 'werkzeug', 'falcon', 'uvicorn'})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(proc.stdout) == []


# -- a real server: uvicorn on 127.0.0.1 ----------------------------------------------------------------------


class Rendezvous(Bare):
    """`/pair` requests wait (bounded) until two are in flight, then answer what their scope state held before and
    after: with a state shared between requests, one would read the other's workload."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = 0
        self.both: asyncio.Event | None = None

    @staticmethod
    def answer(scope: dict[str, Any]) -> dict[str, Any]:
        return {"workload": name(scope["state"]["workload"]), "started": scope["state"].get("started")}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/pair":
            before = name(scope["state"]["workload"])
            self.arrived += 1
            if self.both is None:
                self.both = asyncio.Event()
            if self.arrived == 2:
                self.both.set()
            await asyncio.wait_for(self.both.wait(), timeout=5)
            scope["state"]["before"] = before
        await super().__call__(scope, receive, send)


@pytest.fixture(scope="module")
def served(k8s_issuer_session: FakeIssuer) -> Iterator[tuple[Rendezvous, str]]:
    config = VerifierConfig(issuer=k8s_issuer_session.issuer, audiences=["test"], jwks=k8s_issuer_session.jwks())
    app = Rendezvous()
    with uvicorn_server(K8sJWTAuthMiddleware(app, TokenVerifier(config), exempt_paths=["/healthz"])) as url:
        yield app, url


def test_under_uvicorn_each_request_has_its_own_state_and_lifespan_state_is_untouched(
        served: tuple[Rendezvous, str], issuer: FakeIssuer) -> None:
    app, url = served
    tokens = {"payments/worker": issuer.mint("payments", "worker"), "orders/api": issuer.mint("orders", "api")}
    answers: dict[str, Any] = {}

    def get(who: str) -> None:
        answers[who] = httpx.get(f"{url}/pair", headers=bearer(tokens[who]), timeout=10).json()

    threads = [threading.Thread(target=get, args=(who,)) for who in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == {who: {"workload": who, "started": True} for who in tokens}
    assert app.lifespan_state == {"started": True}  # the lifespan ran through the middleware; no workload leaked in
    with httpx.Client(base_url=url, timeout=10) as http:
        refused = http.get("/whoami")
        exempt = http.get("/healthz", headers=bearer("not-a-jwt"))
    assert (refused.status_code, refused.headers["www-authenticate"], refused.json()["reason"]) == (
        401, "Bearer", "missing_token")
    assert (exempt.status_code, exempt.json()["workload"]) == (200, None)


# -- Litestar ------------------------------------------------------------------------------------------------


def litestar_app(verifier: TokenVerifier) -> Any:
    from litestar import Litestar, Request, WebSocket, get, websocket
    from litestar.middleware import DefineMiddleware

    @get("/whoami")
    async def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
        workload = request.state.workload  # a k8s_jwt_auth.WorkloadIdentity, or None
        return {"workload": name(workload), "pod": workload.pod_name if workload else None}

    @get("/healthz")
    async def healthz(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"workload": name(request.state.workload)}

    @websocket("/ws")
    async def ws(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        await socket.send_json({"workload": name(socket.state.workload)})
        await socket.close()

    return Litestar([whoami, healthz, ws], middleware=[
        DefineMiddleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"])])


def test_litestar(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    from litestar.exceptions import WebSocketDisconnect
    from litestar.testing import TestClient

    token = issuer.mint("payments", "worker", pod="worker-1")
    with TestClient(litestar_app(verifier)) as http:
        good = http.get("/whoami", headers=bearer(token))
        missing = http.get("/whoami")
        expired = http.get("/whoami", headers=bearer(bad_tokens(issuer)["expired"][0]))
        exempt = http.get("/healthz")
        with http.websocket_connect("/ws", headers=bearer(token)) as ws:
            message = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as refused, http.websocket_connect("/ws"):
            pass  # pragma: no cover - the connection is refused before it opens
    assert good.json() == {"workload": "payments/worker", "pod": "worker-1"}
    assert (missing.status_code, missing.headers["www-authenticate"], missing.json()["reason"]) == (
        401, "Bearer", "missing_token")
    assert (expired.status_code, expired.json()["reason"]) == (401, "expired")
    assert expired.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert exempt.json() == {"workload": None}
    assert message == {"workload": "payments/worker"}
    assert refused.value.code == 1008


def test_litestar_middleware_twice_raises(verifier: TokenVerifier) -> None:
    from litestar import Litestar, get
    from litestar.middleware import DefineMiddleware

    @get("/")
    async def index() -> str:  # pragma: no cover - never served
        return "x"

    twice = [DefineMiddleware(K8sJWTAuthMiddleware, verifier=verifier)] * 2
    with pytest.raises(AlreadyInstalled):
        Litestar([index], middleware=twice)


# -- Quart ---------------------------------------------------------------------------------------------------


def quart_app(verifier: TokenVerifier) -> Any:
    from quart import Quart, request, websocket

    app = Quart("quart_test")
    app.config["lifespan"] = []

    @app.before_serving
    async def startup() -> None:
        app.config["lifespan"].append("startup")

    @app.after_serving
    async def shutdown() -> None:
        app.config["lifespan"].append("shutdown")

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        workload = request.scope["state"]["workload"]  # a k8s_jwt_auth.WorkloadIdentity, or None
        return {"workload": name(workload)}

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        await websocket.send_json({"workload": name(websocket.scope["state"]["workload"])})

    app.asgi_app = Closes(K8sJWTAuthMiddleware(app.asgi_app, verifier, exempt_paths=["/healthz"]))  # type: ignore[method-assign]
    return app


class Closes:
    """An ASGI layer that notes every `websocket.close` the app below sends (Quart's test client reports the close
    code up to 0.22 and not from 0.23 on, so the test reads it here)."""

    def __init__(self, app: Any) -> None:
        self.app, self.sent = app, asyncio.Queue()  # type: asyncio.Queue[dict[str, Any]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.close":
                self.sent.put_nowait(message)
            await send(message)

        await self.app(scope, receive, noting)


async def test_quart(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    app = quart_app(verifier)
    token = issuer.mint("payments", "worker")
    async with app.test_app() as test_app:  # runs the lifespan, through the middleware
        http = test_app.test_client()
        good = await http.get("/whoami", headers=bearer(token))
        missing = await http.get("/whoami")
        async with http.websocket("/ws", headers=bearer(token)) as ws:
            message = await ws.receive_json()
        while not app.asgi_app.sent.empty():  # the accepted connection's own close, once its handler returned
            app.asgi_app.sent.get_nowait()
        async with http.websocket("/ws") as refused_ws:  # refused before accept: closed with the reason
            closed = await asyncio.wait_for(app.asgi_app.sent.get(), 5)
            assert not refused_ws.accepted
        assert app.config["lifespan"] == ["startup"]
    assert app.config["lifespan"] == ["startup", "shutdown"]
    assert (good.status_code, await good.get_json()) == (200, {"workload": "payments/worker"})
    assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
    assert (await missing.get_json())["reason"] == "missing_token"
    assert message == {"workload": "payments/worker"}
    assert (closed["code"], closed["reason"]) == (1008, "missing_token")
    with pytest.raises(AlreadyInstalled):
        K8sJWTAuthMiddleware(app.asgi_app, verifier)
