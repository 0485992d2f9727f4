"""Property-based fuzzing of the public entry points tests/test_fuzz.py does not cover (issue #14 item 1).

* `TokenReviewResult.from_response`: whatever the document, a `TokenReviewResult` or `TokenReviewUnavailable`
  (`review_unavailable`, 503), never `KeyError`/`TypeError`/`AttributeError`/`RecursionError`; the shared-store
  reader built on it (`decode_entry`) answers `None` for what it cannot use.
* `TokenReviewer.review` / `review_async` against a loopback API server answering any status, headers and body: the
  identity, `InvalidToken` or `TokenReviewUnavailable`, never another exception, never holding the token.
* Each ASGI/WSGI adapter's request path, through its framework's test client: the Starlette middleware, the FastAPI
  dependencies (`install` + `Workload` / `Depends(require_workload(...))`) and the Flask extension (enforcing mode
  and `@workload_required`), with generated credentials headers (tests/_fuzz_http.py) and, for Starlette, paths
  (exempt or not). The answer is exactly what the core says (200, or 401/403/503 with our JSON body, an RFC 6750
  challenge on 401/403 and `Retry-After` on 503), no exception escapes the client, and no token shows in the body,
  the headers or the logs. The Django middleware and DRF are fuzzed the same way in
  tests/django_tests/test_fuzz_adapters.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette import testclient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from k8s_jwt_auth import AuthError, InvalidToken, Policy, TokenReviewUnavailable, TokenVerifier, WorkloadIdentity
from k8s_jwt_auth._review_result import Entry, decode_entry
from k8s_jwt_auth.integrations.fastapi import Workload, install, require_workload
from k8s_jwt_auth.integrations.flask import K8sJWTAuth, current_workload, workload_required
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware, WorkloadUser
from k8s_jwt_auth.tokenreview import TokenReviewer, TokenReviewResult

from ._asgi import TestClient
from ._fuzz_http import ROUTE_RULES, Answer, Sent, check_answer, expected, fuzz_verifier, requests
from ._threaded import JsonHandler, handler_server
from .conftest import FIXTURES
from .test_fuzz import assert_holds_no_token, json_values
from .test_tokenreview import RECORDED_IDENTITY

RECORDED = sorted((FIXTURES / "tokenreview").glob("*.response.json"))

# -- TokenReviewResult.from_response ------------------------------------------------------------------------

# Leaves as the JSON decoder produces them, plus the field names and values a TokenReview answer uses, so that
# generated documents often get past the first checks.
field_names = st.sampled_from(["kind", "apiVersion", "status", "authenticated", "user", "username", "uid", "groups",
                               "extra", "audiences", "error", "authentication.kubernetes.io/pod-uid"])
leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
          | st.sampled_from(["TokenReview", "system:serviceaccount:a:b", "JTI=x", ""]))
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field_names | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def _recorded(path: Path) -> Any:
    return json.loads(path.read_text())


def _deep(value: object, depth: int, as_list: bool) -> object:
    for _ in range(depth):
        value = [value] if as_list else {"user": value}
    return value


def _containers(doc: object, limit: int = 40) -> list[tuple[object, object]]:
    """(container, key or index) of every value in `doc`, walked without recursion and at most `limit` deep."""
    found: list[tuple[object, object]] = []
    todo: list[tuple[object, int]] = [(doc, 0)]
    while todo:
        node, depth = todo.pop()
        if depth >= limit:
            continue
        slots = list(node.items()) if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in slots:
            found.append((node, key))
            todo.append((child, depth + 1))
    return found


replacements = st.one_of(
    json_values,
    st.integers(1, 200_000).map(lambda n: "x" * n),  # huge strings
    st.builds(_deep, json_values, st.integers(1, 5_000), st.booleans()),  # deep nesting, beyond the recursion limit
    # copied: a sampled [] or {} is one object, which a later "add" would change for every following example
    st.sampled_from([10**400, -(10**5000), float("nan"), float("inf"), True, 0, "", [], {}]).map(copy.deepcopy),
)


@st.composite
def mutated_recorded(draw: st.DrawFn) -> object:
    """A recorded kube-apiserver answer with a few keys dropped, replaced (wrong types, huge, deep) or added."""
    doc = copy.deepcopy(_recorded(draw(st.sampled_from(RECORDED))))
    for _ in range(draw(st.integers(1, 4))):
        slots = _containers(doc)
        if not slots:
            break
        node, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop":
            del node[key]  # type: ignore[attr-defined]
        elif action == "replace":
            node[key] = draw(replacements)  # type: ignore[index]
        elif isinstance(node[key], dict):  # type: ignore[index]
            node[key][draw(field_names | st.text(max_size=8))] = draw(replacements)  # type: ignore[index]
    return doc


def _parses_or_is_unavailable(doc: object) -> TokenReviewResult | None:
    """The contract: a well-typed result, or `TokenReviewUnavailable` with a short message; nothing else."""
    try:
        result = TokenReviewResult.from_response(doc)
    except TokenReviewUnavailable as exc:
        assert (exc.status_code, exc.reason) == (503, "review_unavailable")
        assert len(exc.message) < 300  # never echoes a huge value from the document
        return None
    assert isinstance(result.authenticated, bool)
    assert not result.authenticated or result.username
    for value in (result.username, result.uid, result.error):
        assert value is None or isinstance(value, str)
    assert all(isinstance(v, str) for v in (*result.groups, *result.audiences))
    assert all(isinstance(k, str) and all(isinstance(v, str) for v in vs) for k, vs in result.extra.items())
    assert TokenReviewResult.from_response({"status": result.to_status()}) == result
    return result


def test_the_recorded_answers_parse() -> None:
    parsed = [_parses_or_is_unavailable(_recorded(path)) for path in RECORDED]
    assert all(result is not None for result in parsed)


@pytest.mark.parametrize("kind", [_deep("TokenReview", 5_000, True), _deep("x", 5_000, False), 10**5000],
                         ids=["deep-list", "deep-object", "huge-int"])
def test_a_kind_that_cannot_be_printed_is_malformed_not_a_crash(kind: object) -> None:
    # The message used to show str(kind): a RecursionError for a deeply nested value, a ValueError for an integer
    # beyond int_max_str_digits. Python's json cannot build either, but the method takes any decoded document.
    doc = {**_recorded(RECORDED[0]), "kind": kind}
    with pytest.raises(TokenReviewUnavailable) as caught:
        TokenReviewResult.from_response(doc)
    assert caught.value.reason == "review_unavailable"


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_from_response_any_json_document(doc: object) -> None:
    _parses_or_is_unavailable(doc)


@settings(max_examples=200, deadline=None)
@given(status=documents)
def test_from_response_any_status_object(status: object) -> None:
    _parses_or_is_unavailable({"kind": "TokenReview", "status": status})


@settings(max_examples=300, deadline=None)
@given(doc=mutated_recorded())
def test_from_response_mutated_recorded_answers(doc: object) -> None:
    _parses_or_is_unavailable(doc)
    try:
        text = json.dumps(doc)
    except (RecursionError, ValueError):
        return  # deeper than json can write, or an integer it cannot print: no decoder could produce it
    _parses_or_is_unavailable(json.loads(text))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=200) | st.builds(lambda v, t, s: json.dumps({"v": v, "t": t, "s": s}).encode(),
                                                 st.sampled_from([1, 1, 2, "1", None]), json_values, documents))
def test_a_shared_store_value_is_an_entry_or_none(value: bytes) -> None:
    """Values another replica (or anything with access to the store) wrote are read back or ignored, never raise."""
    entry = decode_entry(value, now=0.0)
    assert entry is None or isinstance(entry, Entry)


# -- TokenReviewer: any HTTP answer of the API server -------------------------------------------------------


class _RawAnswer(JsonHandler):
    """Answers every POST with `server.answer`: (status, raw header lines, body), written byte for byte."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.wfile.write(b"HTTP/1.1 %d Answer\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, head, len(body)) + body)
        self.close_connection = True


@pytest.fixture(scope="module")
def api_server() -> Iterator[tuple[Any, str]]:
    with handler_server(_RawAnswer) as served:
        yield served


SSL_CONTEXT = ssl.create_default_context()  # unused on http://, but loading the CA bundle per reviewer is slow
REVIEWED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmdXp6In0.the-callers-signature-material"


def _review_raises_only_auth_errors(url: str) -> None:
    """Both drivers, each with a new reviewer (no cache, no backoff): the identity, or an `AuthError` that does not
    hold the token."""
    for review in (lambda r: r.review(REVIEWED_TOKEN, RECORDED_IDENTITY),
                   lambda r: asyncio.run(r.review_async(REVIEWED_TOKEN, RECORDED_IDENTITY))):
        try:
            reviewed = review(TokenReviewer(url, audiences=["payments-api"], cache_ttl=0, ssl_context=SSL_CONTEXT))
        except AuthError as exc:
            assert isinstance(exc, (InvalidToken, TokenReviewUnavailable)), repr(exc)
            assert_holds_no_token(exc, REVIEWED_TOKEN)
        else:
            assert isinstance(reviewed, WorkloadIdentity)


@pytest.mark.parametrize("retry_after", ["\u00b2", "\u00b9", "\u00b3", "1\u00bd"])
@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_in_non_ascii_digits_is_ignored_not_a_crash(api_server: tuple[Any, str], status: int,
                                                                   retry_after: str) -> None:
    # "²".isdigit() is True but float("²") raises ValueError: it escaped TokenReviewer.review (so TokenVerifier.verify
    # in TokenReview mode, and the adapters answered 500). RFC 9110 delay-seconds are ASCII digits.
    server, url = api_server
    server.answer = (status, [(b"Retry-After", retry_after.encode("latin-1"))], b"{}")
    for review in (lambda r: r.review(REVIEWED_TOKEN, RECORDED_IDENTITY),
                   lambda r: asyncio.run(r.review_async(REVIEWED_TOKEN, RECORDED_IDENTITY))):
        with pytest.raises(TokenReviewUnavailable) as caught:
            review(TokenReviewer(url, audiences=["payments-api"], ssl_context=SSL_CONTEXT))
        assert caught.value.retry_after == 1  # the first backoff step, as without the header


header_bytes = st.one_of(  # Retry-After-like values first: digits in every form a server might send
    st.sampled_from([b"1", b"120", b"-1", b" 5 ", b"1.5", b"9" * 400, b"\xb2", b"\xc2\xb2", b"\xd9\xa1", b""]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
def _json_text(doc: object) -> bytes:
    try:
        return json.dumps(doc).encode()
    except (RecursionError, ValueError):  # too deep, or an integer json cannot write: a text too deep to read
        return b'{"kind":"TokenReview","status":' + b"[" * 5_000 + b"]" * 5_000 + b"}"


answer_bodies = st.one_of(documents.map(_json_text), mutated_recorded().map(_json_text), st.binary(max_size=300))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from([200, 201, 201, 201, 301, 401, 403, 404, 429, 500, 503]) | st.integers(200, 599),
       headers=st.lists(st.tuples(st.sampled_from([b"Retry-After", b"Retry-After", b"Content-Type", b"X-Other"]),
                                  header_bytes), max_size=3),
       body=answer_bodies)
def test_token_reviewer_any_http_answer(api_server: tuple[Any, str], status: int,
                                        headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Whatever the API server answers (status, headers, body), a review ends in an identity or an AuthError."""
    server, url = api_server
    server.answer = (status, headers, body)
    _review_raises_only_auth_errors(url)


# -- the adapters' request paths -----------------------------------------------------------------------------

fuzzing = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def verifier() -> TokenVerifier:
    return fuzz_verifier()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="k8s_jwt_auth")
    return caplog


def _check_workload(document: dict[str, Any], want: Answer) -> None:
    if want.workload is not None:
        assert document == {"username": want.workload.username}


def scope_values(headers: Iterable[tuple[bytes | str, bytes]]) -> list[bytes]:
    """The credentials header values Starlette's TestClient puts in the ASGI scope for these.

    httpx decodes the values (ASCII, else UTF-8, else latin-1, the same for all) and the TestClient encodes them back
    as UTF-8: bytes that are not UTF-8 reach the app changed (`\\xff` as `\\xc3\\xbf`), as no real server would.
    """
    return [value.encode() for _, value in testclient.httpx.Headers(list(headers)).multi_items()]


async def starlette_whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse({"username": user.workload.username} if isinstance(user, WorkloadUser)
                        else {"anonymous": request.url.path})


async def starlette_ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"username": websocket.user.workload.username})
    await websocket.close()


@pytest.fixture(scope="module")
def starlette_client(verifier: TokenVerifier) -> Iterator[TestClient]:
    app = Starlette(routes=[WebSocketRoute("/ws", starlette_ws_whoami), Route("/{rest:path}", starlette_whoami)],
                    middleware=[Middleware(K8sJWTAuthMiddleware, verifier=verifier, exempt_paths=["/public/*"])])
    with TestClient(app) as client:
        yield client


paths = st.one_of(  # the route answers any path; the path shows in the middleware's log lines and audit records
    st.sampled_from(["/whoami", "/whoami", "/public/x", "/public"]),
    st.text(max_size=20).map(lambda text: "/" + quote(text, safe="/")),
    st.binary(max_size=20).map(lambda data: "/" + quote(data, safe="/")),
)


@fuzzing
@given(sent=requests(), path=paths)
def test_starlette_middleware(starlette_client: TestClient, verifier: TokenVerifier, logs: pytest.LogCaptureFixture,
                              sent: Sent, path: str) -> None:
    # httpx refuses a str header value that is not ASCII, so values go as bytes (see scope_values for what arrives).
    # It lower-cases header names: the name's case does not reach the app.
    logs.clear()
    response = starlette_client.get(path, headers=sent.as_bytes())
    want = expected(scope_values(sent.as_bytes()), verifier, [verifier.policy])
    if response.status_code == 200 and "anonymous" in response.json():  # let through unauthenticated: exempt
        check_answer(200, response.headers.multi_items(), response.content, Answer(200), sent.secrets, logs.text)
        seen = response.json()["anonymous"]
        assert seen == "/public" or seen.startswith("/public/")
        return
    assert path not in ("/public", "/public/x")
    document = check_answer(response.status_code, response.headers.multi_items(), response.content, want,
                            sent.secrets, logs.text)
    _check_workload(document, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=requests())
def test_starlette_middleware_websocket(starlette_client: TestClient, verifier: TokenVerifier,
                                        logs: pytest.LogCaptureFixture, sent: Sent) -> None:
    """A refused websocket is closed before it is accepted: 1013 when keys are unavailable, else 1008, the reason
    code as the close reason."""
    # websocket_connect takes a dict: headers whose names are equal (same case) collapse into the last one, but
    # names in different cases still reach the app as repeated headers.
    logs.clear()
    headers = {name.decode("ascii"): value for name, value in sent.as_bytes()}
    want = expected(scope_values(headers.items()), verifier, [verifier.policy])
    event(f"{want.status} {want.reason or 'ok'}")
    try:
        with starlette_client.websocket_connect("/ws", headers=headers) as websocket:
            answer = websocket.receive_json()
    except WebSocketDisconnect as closed:
        assert want.status != 200
        assert (closed.code, closed.reason) == (1013 if want.status == 503 else 1008, want.reason)
    else:
        assert want.workload is not None and answer == {"username": want.workload.username}
    assert not any(secret in logs.text for secret in sent.secrets)


PAYMENTS = require_workload(*ROUTE_RULES)


@pytest.fixture(scope="module")
def fastapi_client(verifier: TokenVerifier) -> Iterator[TestClient]:
    app = FastAPI()
    install(app, verifier)

    @app.get("/whoami")
    async def whoami(workload: Workload) -> dict[str, str]:
        return {"username": workload.username}

    @app.get("/payments")
    async def payments(workload: Annotated[WorkloadIdentity, Depends(PAYMENTS)]) -> dict[str, str]:
        return {"username": workload.username}

    with TestClient(app) as client:
        yield client


@fuzzing
@given(sent=requests(), path=st.sampled_from(["/whoami", "/payments"]))
def test_fastapi_dependencies(fastapi_client: TestClient, verifier: TokenVerifier, logs: pytest.LogCaptureFixture,
                              sent: Sent, path: str) -> None:
    # As for Starlette: bytes values (see scope_values), names lower-cased by the client. FastAPI's HTTPBearer
    # (auto_error=False, for the OpenAPI scheme) reads the header first and must not answer on its own.
    logs.clear()
    response = fastapi_client.get(path, headers=sent.as_bytes())
    policies = [verifier.policy] if path == "/whoami" else [Policy(ROUTE_RULES)]  # a route's rules replace ALLOW
    want = expected(scope_values(sent.as_bytes()), verifier, policies)
    document = check_answer(response.status_code, response.headers.multi_items(), response.content, want,
                            sent.secrets, logs.text)
    _check_workload(document, want)


@pytest.fixture(scope="module")
def flask_client(verifier: TokenVerifier) -> FlaskClient:
    app = Flask(__name__)
    app.config.update(TESTING=True, K8S_JWT_AUTH_ENFORCE=True)  # TESTING: an exception reaches the test
    K8sJWTAuth(app, verifier=verifier)

    @app.get("/whoami")
    def whoami() -> dict[str, str]:
        return {"username": current_workload.username}

    @app.get("/payments")
    @workload_required(*ROUTE_RULES)
    def payments() -> dict[str, str]:
        return {"username": current_workload.username}

    return app.test_client()


@fuzzing
@given(sent=requests(), path=st.sampled_from(["/whoami", "/payments"]))
def test_flask_extension(flask_client: FlaskClient, verifier: TokenVerifier, logs: pytest.LogCaptureFixture,
                         sent: Sent, path: str) -> None:
    # Werkzeug's test client takes any str (even beyond latin-1, which a real WSGI server cannot pass) but refuses
    # CR and LF in a value, so those are dropped. Repeated headers reach the app joined with ", " (one WSGI environ
    # key per header), as a server joins them; names may have any case.
    logs.clear()
    headers = [(name, value.replace("\r", "").replace("\n", "")) for name, value in sent.headers]
    response = flask_client.get(path, headers=headers)
    received = [", ".join(value for _, value in headers)] if headers else []
    policies = [verifier.policy] + ([Policy(ROUTE_RULES)] if path == "/payments" else [])  # ENFORCE, then the view
    want = expected(received, verifier, policies)
    document = check_answer(response.status_code, response.headers.items(), response.get_data(), want, sent.secrets,
                            logs.text)
    _check_workload(document, want)
