"""The adapter contract: the same cases, with the same answers, through every adapter (issue #15).

Adapters: `starlette` (K8sJWTAuthMiddleware), `fastapi` (install() + `Workload` / `require_workload(...)`, and
K8sJWTAuthMiddleware as its enforcing layer), `flask` (K8sJWTAuth + `@workload_required`, `K8S_JWT_AUTH_ENFORCE` as
the enforcing layer), `django` (K8sJWTAuthMiddleware + `@workload_required` views, Client: WSGI, sync views),
`django-async` (the same through AsyncClient with async views), `drf` (K8sJWTAuthentication + `workload_permission`,
the Django middleware as the enforcing layer), `asgi` (the generic ASGI K8sJWTAuthMiddleware around a bare ASGI app)
and `wsgi` (the generic WSGI K8sJWTAuthMiddleware around a bare WSGI app). The apps and their drivers are in
`_contract.py`.

A deployment is an adapter with its layers (docs/policy-model.md): `enforcing` (the enforcing layer alone protects
`/service`), `route` (route-layer gates only), `both`. Starlette and the generic ASGI and WSGI middlewares have only
the enforcing layer (`ENFORCING_ONLY`): the route-layer cases are not parametrized with them. A test that runs one
deployment per adapter is parametrized by the adapter's name (`flask`); one that runs several layers of an adapter by
`<adapter>-<layers>` (`flask-route`).

Every answer is checked for its status, `reason`, `error`, headers (`WWW-Authenticate`, `Retry-After`) and its audit
records (`k8s_jwt_auth.audit`: one per decision, never the token); message wording is never asserted.

Lives under tests/django_tests because Django is configured by that directory's conftest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from k8s_jwt_auth import AlreadyInstalled, ConfigurationError, TokenVerifier, VerifierConfig
from k8s_jwt_auth.integrations.django.conf import SettingsError
from k8s_jwt_auth.testing import FakeIssuer
from tests._asgi import MALFORMED_HEADERS, UnavailableKeys, bad_tokens
from tests._audit import audit_dicts, capture, leaks

from ._contract import (
    ADAPTERS,
    ENFORCING_ONLY,
    Deployment,
    Driver,
    Headers,
    Reply,
    VerifierSpec,
    deploy,
    install_twice,
    setting_name,
)

ENFORCING = [Deployment(adapter, "enforcing") for adapter in ADAPTERS]
ROUTE = [Deployment(adapter, "route") for adapter in ADAPTERS if adapter not in ENFORCING_ONLY]
BOTH = [Deployment(adapter, "both") for adapter in ADAPTERS if adapter not in ENFORCING_ONLY]
ONE_LAYER = ENFORCING + ROUTE
EVERY = ENFORCING + ROUTE + BOTH


def deployments(chosen: Sequence[Deployment]) -> Any:
    """`deployment` parameters: the adapter's name as id when each adapter appears once, else `<adapter>-<layers>`."""
    unique = len({d.adapter for d in chosen}) == len(chosen)
    return pytest.mark.parametrize("deployment", [
        pytest.param(d, id=d.adapter if unique else f"{d.adapter}-{d.layers}") for d in chosen])


ERROR_CODES = {401: "invalid_token", 403: "insufficient_scope", 503: "temporarily_unavailable"}


# -- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _audit(caplog: pytest.LogCaptureFixture) -> None:
    capture(caplog)


@pytest.fixture
def keys(issuer: FakeIssuer, jwks_file: str) -> dict[str, Any]:
    """Verifier settings: the fake issuer's keys in a JWKS file, audience `test` (no fetch)."""
    return {"ISSUER": issuer.issuer, "AUDIENCES": ["test"], "JWKS_FILE": jwks_file}


Deploy = Callable[..., Any]


@pytest.fixture
def app(keys: dict[str, Any], settings: Any) -> Deploy:
    """`app(deployment, allow=None, verifier=None, **options)`: a context manager yielding the deployment's driver.

    The verifier is `keys` with `ALLOW=allow`, or `verifier`; `options` are the shared options by suffix.
    """

    def build(deployment: Deployment, *, allow: Sequence[str] | None = None, verifier: VerifierSpec | None = None,
              **options: Any) -> Any:
        spec = verifier if verifier is not None else {**keys, "ALLOW": allow}
        return deploy(deployment, spec, options, settings)

    return build


class Caller:
    """Sends requests through a driver and collects each one's audit records."""

    def __init__(self, driver: Driver, caplog: pytest.LogCaptureFixture) -> None:
        self.driver = driver
        self.caplog = caplog

    def get(self, path: str, headers: Headers = ()) -> tuple[Reply, list[dict[str, Any]]]:
        self.caplog.clear()
        reply = self.driver.get(path, headers)
        records = audit_dicts(self.caplog)
        assert all(record["path"] == path for record in records)
        for _, value in headers:
            token = value.partition(" ")[2]
            if len(token) >= 8:
                assert leaks(self.caplog, token) == []
        return reply, records


@pytest.fixture
def running(app: Deploy, caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Caller]]:
    """`running(deployment, **app_options)`: a `Caller` for the deployment's app, stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda deployment, **options: Caller(stack.enter_context(app(deployment, **options)), caplog)


def bearer(token: str, header: str = "Authorization") -> list[tuple[str, str]]:
    return [(header, f"Bearer {token}")]


def assert_ok(reply: Reply, workload: str | None) -> None:
    assert reply.status == 200, reply
    assert reply.body == {"workload": workload}


def assert_refused(reply: Reply, status: int, reason: str) -> None:
    """Status, body (`error`, `reason`) and headers of a refusal; the challenge's own form is checked by callers."""
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.body) == {"error", "reason", "message"}
    assert (reply.body["error"], reply.body["reason"]) == (ERROR_CODES[status], reason)
    challenge = reply.headers.get("www-authenticate")
    if status == 401 and reason != "missing_token":
        assert challenge is not None and challenge.startswith("Bearer ")
        assert 'error="invalid_token"' in challenge
    elif status == 403:
        assert challenge is not None and challenge.startswith("Bearer ")
        assert 'error="insufficient_scope"' in challenge
    elif status == 503:
        assert challenge is None
        assert int(reply.headers["retry-after"]) >= 1


def decisions(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(record["decision"], record["reason"]) for record in records]


# -- 1. a missing token: 401 with a challenge without an error code (RFC 6750 3.1) ---------------------------


@pytest.mark.parametrize(("realm", "challenge"), [(None, "Bearer"), ("payments-api", 'Bearer realm="payments-api"')],
                         ids=["no-realm", "realm"])
@deployments(ONE_LAYER)
def test_missing_token(running: Callable[..., Caller], deployment: Deployment, realm: str | None,
                       challenge: str) -> None:
    caller = running(deployment, **({"REALM": realm} if realm else {}))
    reply, records = caller.get("/service")
    assert_refused(reply, 401, "missing_token")
    assert reply.headers["www-authenticate"] == challenge
    assert decisions(records) == [("rejected_token", "missing_token")]


# -- 2. malformed credentials --------------------------------------------------------------------------------

MALFORMED = {
    "bearer_without_token": ([("Authorization", MALFORMED_HEADERS["bearer_without_token"].decode())], "malformed"),
    "two_tokens": ([("Authorization", MALFORMED_HEADERS["two_tokens"].decode())], "malformed"),
    "other_scheme": ([("Authorization", MALFORMED_HEADERS["other_scheme"].decode())], "missing_token"),
}


@pytest.mark.parametrize("case", [*MALFORMED, "repeated_header"])
@deployments(ONE_LAYER)
def test_malformed_credentials(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                               case: str) -> None:
    """`Bearer` alone, `Bearer a b` and a repeated header are malformed; another scheme is no credentials of ours.

    A repeated header is sent twice by the ASGI test clients; Django's and Flask's clients hand the app one value
    joined with ", " (or "," by Django's ASGIRequest), as servers do.
    """
    if case == "repeated_header":
        headers, reason = bearer(issuer.mint("payments", "worker")) + bearer("x.y.z"), "malformed"
    else:
        headers, reason = MALFORMED[case]
    reply, records = running(deployment).get("/service", headers)
    assert_refused(reply, 401, reason)
    if reason == "missing_token":
        assert reply.headers["www-authenticate"] == "Bearer"
    assert decisions(records) == [("rejected_token", reason)]


# -- 3. bad tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong_audience", "foreign_key", "garbage"])
@deployments(ONE_LAYER)
def test_bad_token(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment, case: str) -> None:
    token, reason = bad_tokens(issuer)[case]
    reply, records = running(deployment).get("/service", bearer(token))
    assert_refused(reply, 401, reason)
    assert decisions(records) == [("rejected_token", reason)]


# -- 4. the service policy denies ---------------------------------------------------------------------------


@deployments(EVERY)
def test_service_policy_denies(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment) -> None:
    caller = running(deployment, allow=["payments/*"])
    reply, records = caller.get("/service", bearer(issuer.mint("frontend", "web")))
    assert_refused(reply, 403, "policy_denied")
    assert decisions(records) == [("denied_policy", "policy_denied")]
    reply, records = caller.get("/service", bearer(issuer.mint("payments", "worker")))
    assert_ok(reply, "payments/worker")
    assert decisions(records) == [("allowed", "ok")]


# -- 5. keys unavailable: 503 with Retry-After, no challenge -------------------------------------------------


@pytest.mark.parametrize("source", ["issuer_down", "no_keys"])
@deployments(ONE_LAYER)
def test_keys_unavailable(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                          source: str) -> None:
    """`issuer_down`: keys by discovery (read from the framework's settings) from a fake issuer answering 500;
    `no_keys`: a verifier whose key source is down and asks for a retry in 7 s (the answer's Retry-After)."""
    verifier: VerifierSpec
    if source == "issuer_down":
        issuer.fail("error")
        verifier = {"ISSUER": issuer.issuer, "AUDIENCES": ["test"], "TIMEOUT": 2}
    else:
        config = VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks())
        verifier = TokenVerifier(config, keys=UnavailableKeys())
    caller = running(deployment, verifier=verifier, EXEMPT_PATHS=["/healthz"])
    reply, records = caller.get("/service", bearer(issuer.mint("payments", "worker")))
    assert_refused(reply, 503, "keys_unavailable")
    if source == "no_keys":
        assert reply.headers["retry-after"] == "7"
    assert decisions(records) == [("unavailable", "keys_unavailable")]
    assert_ok(caller.get("/healthz")[0], None)  # what needs no token still answers


# -- 6. optional mode: the enforcing layer lets requests without credentials through -------------------------

OPTIONAL_CASES = {
    "anonymous": ([], 200, None),
    "other_scheme": ([("Authorization", "Basic dXNlcjpwYXNz")], 200, None),
    "bad_token": (bearer("not-a-jwt"), 401, "malformed"),
}


@pytest.mark.parametrize("case", [*OPTIONAL_CASES, "workload"])
@deployments(ENFORCING)
def test_optional_enforcing_layer(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                                  case: str) -> None:
    caller = running(deployment, OPTIONAL=True)
    if case == "workload":
        reply, records = caller.get("/service", bearer(issuer.mint("payments", "worker")))
        assert_ok(reply, "payments/worker")
        assert decisions(records) == [("allowed", "ok")]
        return
    headers, status, reason = OPTIONAL_CASES[case]
    reply, records = caller.get("/service", headers)
    if status == 200:
        assert_ok(reply, None)
    else:
        assert reason is not None
        assert_refused(reply, status, reason)
        assert decisions(records) == [("rejected_token", reason)]


@deployments(BOTH)
def test_optional_does_not_make_route_gates_optional(running: Callable[..., Caller], deployment: Deployment) -> None:
    """OPTIONAL is the enforcing layer's: a route-layer gate behind it still needs a workload."""
    reply, records = running(deployment, OPTIONAL=True).get("/service")
    assert_refused(reply, 401, "missing_token")
    assert reply.headers["www-authenticate"] == "Bearer"
    assert decisions(records) == [("rejected_token", "missing_token")]


# -- 7. an exempt path ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", ["none", "token", "bad_token"])
@deployments(EVERY)
def test_exempt_path(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                     credentials: str) -> None:
    headers = {"none": [], "token": bearer(issuer.mint("payments", "worker")), "bad_token": bearer("not-a-jwt")}
    reply, records = running(deployment, EXEMPT_PATHS=["/healthz"]).get("/healthz", headers[credentials])
    assert_ok(reply, None)  # not authenticated, whatever it sends
    assert records == []


# -- 8. the policy-layer model (docs/policy-model.md) ---------------------------------------------------------

# (path, caller, status, audit decisions) with ALLOW=["orders/*"] and route layers only: the route's rules replace
# the service policy; a route without rules has the service policy.
ROUTE_LAYER_ONLY = {
    "route_payments_worker": ("/route", "payments/worker", 200, ["allowed"]),
    "route_payments_batch": ("/route", "payments/batch", 403, ["denied_policy"]),
    "route_orders_api": ("/route", "orders/api", 403, ["denied_policy"]),
    "service_orders_api": ("/service", "orders/api", 200, ["allowed"]),
    "service_payments_worker": ("/service", "payments/worker", 403, ["denied_policy"]),
}

# (ALLOW, path, caller, status, audit decisions) with both layers: the enforcing layer applies the service policy,
# then the route's rules apply too (one more record); a route-layer gate without rules adds nothing.
PAYMENTS_AND_ORDERS = ["payments/*", "orders/*"]
BOTH_LAYERS = {
    "allow_orders_route_payments_worker": (["orders/*"], "/route", "payments/worker", 403, ["denied_policy"]),
    "allow_orders_route_orders_api": (["orders/*"], "/route", "orders/api", 403, ["allowed", "denied_policy"]),
    "allow_orders_service_orders_api": (["orders/*"], "/service", "orders/api", 200, ["allowed"]),
    "allow_orders_service_payments_worker": (["orders/*"], "/service", "payments/worker", 403, ["denied_policy"]),
    "allow_payments_orders_route_payments_worker": (PAYMENTS_AND_ORDERS, "/route", "payments/worker", 200,
                                                    ["allowed", "allowed"]),
    "allow_payments_orders_route_orders_api": (PAYMENTS_AND_ORDERS, "/route", "orders/api", 403,
                                               ["allowed", "denied_policy"]),
    "allow_payments_orders_route_payments_batch": (PAYMENTS_AND_ORDERS, "/route", "payments/batch", 403,
                                                   ["allowed", "denied_policy"]),
}


def _check_decision(caller: Caller, issuer: FakeIssuer, path: str, who: str, status: int,
                    expected: list[str]) -> None:
    namespace, service_account = who.split("/")
    reply, records = caller.get(path, bearer(issuer.mint(namespace, service_account)))
    if status == 200:
        assert_ok(reply, who)
    else:
        assert_refused(reply, 403, "policy_denied")
    assert [record["decision"] for record in records] == expected
    assert all(record["namespace"] == namespace for record in records)


@pytest.mark.parametrize("case", ROUTE_LAYER_ONLY)
@deployments(ROUTE)
def test_route_layer_only(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                          case: str) -> None:
    path, who, status, expected = ROUTE_LAYER_ONLY[case]
    _check_decision(running(deployment, allow=["orders/*"]), issuer, path, who, status, expected)


@pytest.mark.parametrize("case", BOTH_LAYERS)
@deployments(BOTH)
def test_enforcing_and_route_layers(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment,
                                    case: str) -> None:
    allow, path, who, status, expected = BOTH_LAYERS[case]
    _check_decision(running(deployment, allow=allow), issuer, path, who, status, expected)


# -- 10. installing an adapter twice ----------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "drf"])  # DRF is installed by the Django middleware
def test_installing_twice_raises(issuer: FakeIssuer, settings: Any, adapter: str) -> None:
    verifier = TokenVerifier(VerifierConfig(issuer=issuer.issuer, audiences=["test"], jwks=issuer.jwks()))
    with pytest.raises(AlreadyInstalled) as raised:
        install_twice(adapter, verifier, settings)
    assert isinstance(raised.value, RuntimeError)


# -- 11. the shared options mean the same everywhere ----------------------------------------------------------


@deployments(EVERY)
def test_header_option(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment) -> None:
    caller = running(deployment, HEADER="X-Forwarded-Authorization")
    token = issuer.mint("payments", "worker")
    reply, records = caller.get("/service", bearer(token, "X-Forwarded-Authorization"))
    assert_ok(reply, "payments/worker")
    assert decisions(records) == [("allowed", "ok")]
    reply, records = caller.get("/service", bearer(token))
    assert_refused(reply, 401, "missing_token")
    assert decisions(records) == [("rejected_token", "missing_token")]


@deployments(EVERY)
def test_a_cgi_header_is_read_where_the_server_puts_it(running: Callable[..., Caller], issuer: FakeIssuer,
                                                       deployment: Deployment) -> None:
    """Content-Type as the credentials header (odd, but allowed): WSGI and Django keep it as CONTENT_TYPE."""
    caller = running(deployment, HEADER="Content-Type")
    reply, records = caller.get("/service", bearer(issuer.mint("payments", "worker"), "Content-Type"))
    assert_ok(reply, "payments/worker")
    assert decisions(records) == [("allowed", "ok")]


def _refused_at_setup(app: Deploy, deployment: Deployment, suffix: str, value: object) -> None:
    """The deployment refuses the option at setup, naming it as its framework spells it."""
    name = setting_name(deployment.adapter, suffix)
    expected: type[Exception] = SettingsError if deployment.adapter in ("django", "django-async", "drf") \
        else ConfigurationError
    with pytest.raises(expected) as raised, app(deployment, **{suffix: value}):
        pass  # pragma: no cover - never served
    assert str(raised.value).startswith(name), str(raised.value)
    if isinstance(raised.value, SettingsError):
        assert (raised.value.check_id, raised.value.key) == ("k8s_jwt_auth.E005", suffix)
    else:
        assert raised.value.setting == suffix


@pytest.mark.parametrize(("suffix", "value"), [("HEADER", "x_token"), ("REALM", "")], ids=["header", "realm"])
@deployments(EVERY)
def test_invalid_option_is_refused_at_setup(app: Deploy, deployment: Deployment, suffix: str, value: object) -> None:
    _refused_at_setup(app, deployment, suffix, value)


@deployments(ENFORCING)
def test_optional_yes_means_true(running: Callable[..., Caller], deployment: Deployment) -> None:
    reply, _ = running(deployment, OPTIONAL="yes").get("/service")
    assert_ok(reply, None)


@deployments(EVERY)
def test_none_means_the_default(running: Callable[..., Caller], issuer: FakeIssuer, deployment: Deployment) -> None:
    caller = running(deployment, HEADER=None, REALM=None, OPTIONAL=None, EXEMPT_PATHS=None)
    reply, _ = caller.get("/service")
    assert_refused(reply, 401, "missing_token")  # not optional
    assert reply.headers["www-authenticate"] == "Bearer"  # no realm
    assert_ok(caller.get("/service", bearer(issuer.mint("payments", "worker")))[0], "payments/worker")  # Authorization
    reply, _ = caller.get("/healthz")  # nothing exempt: the enforcing layer refuses it; no gate without it
    if deployment.enforcing:
        assert_refused(reply, 401, "missing_token")
    else:
        assert_ok(reply, None)


@deployments(ENFORCING + BOTH)
def test_exempt_paths_as_one_string(running: Callable[..., Caller], deployment: Deployment) -> None:
    caller = running(deployment, EXEMPT_PATHS="/healthz,/public/*")
    assert_ok(caller.get("/healthz")[0], None)
    assert_refused(caller.get("/service")[0], 401, "missing_token")

