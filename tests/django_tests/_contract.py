"""Drivers of the adapter contract (test_contract.py): one small app per adapter, driven the same way.

Every adapter serves the same three routes with the same meaning (`contract_urls` has Django's):

* `/service` — protected by the service policy only (the verifier's `ALLOW`): by the enforcing layer, by a route-layer
  gate without rules, or both, as the deployment's `layers` say;
* `/route` — a route-layer gate with the route's own rules `payments/*` and `!payments/batch` (not on Starlette and
  the generic ASGI and WSGI middlewares, which have no route layer: `ENFORCING_ONLY`);
* `/healthz` — no gate; exempt from the enforcing layer when `EXEMPT_PATHS` lists it.

Each answers 200 with `{"workload": "<ns>/<sa>" or null}`. `deploy(...)` builds an app for a `Deployment` and yields a
`Driver` whose `get(path, headers)` returns `Reply(status, headers, body)`: headers with lower-case names, the body
parsed from JSON.

The shared options are given by suffix (`HEADER`, `REALM`, `OPTIONAL`, `EXEMPT_PATHS`) and passed the way each
framework takes them: keywords for Starlette, FastAPI and the generic ASGI/WSGI middlewares (`header=`; FastAPI's
`require_workload` takes `header` and `realm`, its middleware all four), `app.config["K8S_JWT_AUTH_..."]` for Flask,
`K8S_JWT_AUTH["..."]` for Django. The generic middlewares wrap a bare ASGI app (driven by Starlette's `TestClient`,
lifespan included) and a bare WSGI app (werkzeug's test client), which answer with `scope["state"]["workload"]` and
`environ["k8s_jwt_auth.workload"]`.
The verifier is given as settings (by suffix, read the framework's way) or as a ready `TokenVerifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from django.test import AsyncClient, Client
from fastapi import Depends, FastAPI
from flask import Flask
from rest_framework.test import APIClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from k8s_jwt_auth import TokenVerifier, VerifierConfig, WorkloadIdentity
from k8s_jwt_auth.integrations import asgi, wsgi
from k8s_jwt_auth.integrations.django.checks import MIDDLEWARE_PATH
from k8s_jwt_auth.integrations.django.conf import get_settings
from k8s_jwt_auth.integrations.fastapi import Workload, install, require_workload
from k8s_jwt_auth.integrations.flask import K8sJWTAuth, get_current_workload, workload_required
from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware
from tests._asgi import TestClient

from . import contract_urls
from .contract_urls import RULES, workload_name

__all__ = ["ADAPTERS", "ENFORCING_ONLY", "Deployment", "Driver", "Reply", "deploy", "install_twice", "setting_name"]

ADAPTERS = ("starlette", "fastapi", "flask", "django", "django-async", "drf", "asgi", "wsgi")
ENFORCING_ONLY = frozenset({"starlette", "asgi", "wsgi"})
"""The adapters that have only the enforcing layer (a middleware, no route-layer gates)."""
OPTIONS = ("HEADER", "REALM", "OPTIONAL", "EXEMPT_PATHS")

Headers = Sequence[tuple[str, str]]
VerifierSpec = Mapping[str, Any] | TokenVerifier
"""The verifier settings by suffix (`ISSUER`, `AUDIENCES`, `JWKS_FILE`, `ALLOW`...), or a ready verifier."""


class Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: Any  # the JSON body, or None


class Driver(Protocol):
    def get(self, path: str, headers: Headers = ()) -> Reply: ...


@dataclass(frozen=True)
class Deployment:
    """One adapter with its layers: `enforcing` (the enforcing layer alone on `/service`), `route` (route-layer gates
    only), `both`."""

    adapter: str
    layers: str

    @property
    def enforcing(self) -> bool:
        """Whether the enforcing layer (middleware, Flask `ENFORCE`) is on."""
        return self.layers != "route"

    @property
    def guarded_service(self) -> bool:
        """Whether `/service` has a route-layer gate (without rules)."""
        return self.layers != "enforcing"


def setting_name(adapter: str, suffix: str) -> str:
    """How a framework spells a shared option in its messages."""
    if adapter in ("starlette", "fastapi", "asgi", "wsgi"):
        return f"{suffix.lower()}="
    if adapter == "flask":
        return f"K8S_JWT_AUTH_{suffix}"
    return f'K8S_JWT_AUTH["{suffix}"]'


def _verifier(spec: VerifierSpec) -> TokenVerifier:
    return spec if isinstance(spec, TokenVerifier) else TokenVerifier(VerifierConfig.from_mapping(spec))


def _keywords(options: Mapping[str, Any], suffixes: Sequence[str] = OPTIONS) -> dict[str, Any]:
    return {suffix.lower(): options[suffix] for suffix in suffixes if suffix in options}


# -- Starlette and FastAPI (TestClient) ---------------------------------------------------------------------


async def _asgi_answer(request: Request) -> JSONResponse:
    return JSONResponse({"workload": workload_name(getattr(request.scope.get("user"), "workload", None))})


class _TestClientDriver:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def get(self, path: str, headers: Headers = ()) -> Reply:
        response = self.client.get(path, headers=list(headers))  # a repeated header is sent twice
        body = response.json() if response.headers.get("content-type") == "application/json" else None
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, body)


def _starlette_app(verifier: VerifierSpec, options: Mapping[str, Any]) -> Starlette:
    routes = [Route("/service", _asgi_answer), Route("/healthz", _asgi_answer)]
    return Starlette(routes=routes, middleware=[
        Middleware(K8sJWTAuthMiddleware, verifier=_verifier(verifier), **_keywords(options))])


def _fastapi_app(verifier: VerifierSpec, options: Mapping[str, Any], layers: str) -> FastAPI:
    built = _verifier(verifier)
    app = FastAPI()
    gate_options = _keywords(options, ("HEADER", "REALM"))  # require_workload's own keywords
    rules = Depends(require_workload(*RULES, **gate_options))
    if gate_options:
        gate: Any = Depends(require_workload(**gate_options))

        @app.get("/route", dependencies=[rules])
        async def route_with_options(workload: WorkloadIdentity = gate) -> dict[str, Any]:
            return {"workload": workload_name(workload)}

        async def guarded_service(workload: WorkloadIdentity = gate) -> dict[str, Any]:
            return {"workload": workload_name(workload)}
    else:  # the README's form: the route's rules as a dependency, plus a `Workload` parameter

        @app.get("/route", dependencies=[rules])
        async def route(workload: Workload) -> dict[str, Any]:
            return {"workload": workload_name(workload)}

        async def guarded_service(workload: Workload) -> dict[str, Any]:  # type: ignore[misc]
            return {"workload": workload_name(workload)}

    app.add_api_route("/service", guarded_service if layers != "enforcing" else _asgi_answer, methods=["GET"])
    app.add_api_route("/healthz", _asgi_answer, methods=["GET"])
    if layers != "route":
        app.add_middleware(K8sJWTAuthMiddleware, verifier=built, **_keywords(options))
    if layers != "enforcing":
        install(app, built)
    return app


# -- any ASGI app (TestClient) and any WSGI app (werkzeug's test client), bare -----------------------------------


def _answer_bytes(path: str, workload: object) -> tuple[int, bytes]:
    if path not in ("/service", "/healthz"):
        return 404, b'{"detail":"not found"}'
    return 200, json.dumps({"workload": workload_name(workload)}).encode()


async def _bare_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: `/service` and `/healthz` answer with `scope["state"]["workload"]`."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    status, body = _answer_bytes(scope["path"], scope.get("state", {}).get("workload"))
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _bare_wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A bare WSGI app: `/service` and `/healthz` answer with `environ["k8s_jwt_auth.workload"]`."""
    status, body = _answer_bytes(environ["PATH_INFO"], environ.get(wsgi.ENVIRON_KEY))
    start_response(f"{status} {'OK' if status == 200 else 'Not Found'}", [("Content-Type", "application/json")])
    return [body]


class _WsgiDriver:
    def __init__(self, app: Any) -> None:
        self.client = WerkzeugClient(app)

    def get(self, path: str, headers: Headers = ()) -> Reply:
        response = self.client.get(path, headers=list(headers))  # werkzeug joins a repeated header with ", "
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                     response.get_json(silent=True))


# -- Flask (test client) -----------------------------------------------------------------------------------


class _FlaskDriver:
    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()

    def get(self, path: str, headers: Headers = ()) -> Reply:
        response = self.client.get(path, headers=list(headers))  # werkzeug joins a repeated header with ", "
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                     response.get_json(silent=True))


def _flask_app(verifier: VerifierSpec, options: Mapping[str, Any], layers: str) -> Flask:
    app = Flask("contract")
    app.config["TESTING"] = True
    if not isinstance(verifier, TokenVerifier):
        app.config.update({f"K8S_JWT_AUTH_{suffix}": value for suffix, value in verifier.items()})
    app.config.update({f"K8S_JWT_AUTH_{suffix}": value for suffix, value in options.items()})
    app.config["K8S_JWT_AUTH_ENFORCE"] = layers != "route"
    K8sJWTAuth(app, verifier=verifier if isinstance(verifier, TokenVerifier) else None)

    def answer() -> dict[str, Any]:
        return {"workload": workload_name(get_current_workload(load=False))}

    def service() -> dict[str, Any]:
        return answer()

    def route() -> dict[str, Any]:
        return answer()

    def healthz() -> dict[str, Any]:
        return answer()

    app.add_url_rule("/service", "service", service if layers == "enforcing" else workload_required()(service))
    app.add_url_rule("/route", "route", workload_required(*RULES)(route))
    app.add_url_rule("/healthz", "healthz", healthz)
    return app


# -- Django, Django under ASGI, DRF (django.test clients) -----------------------------------------------------

_URLCONFS: Mapping[tuple[str, bool], type] = {
    ("django", False): contract_urls.Sync, ("django", True): contract_urls.SyncEnforcing,
    ("django-async", False): contract_urls.Async, ("django-async", True): contract_urls.AsyncEnforcing,
    ("drf", False): contract_urls.Drf, ("drf", True): contract_urls.DrfEnforcing,
}


def _joined(headers: Headers, separator: str) -> dict[str, str]:
    """One value per header name, as a server hands a repeated header to Django (WSGI ", ", ASGIRequest ",")."""
    joined: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in headers:
        key = names.setdefault(name.lower(), name)
        joined[key] = f"{joined[key]}{separator}{value}" if key in joined else value
    return joined


def _django_reply(response: Any) -> Reply:
    headers = {k.lower(): v for k, v in response.items()}
    body = json.loads(response.content) if headers.get("content-type") == "application/json" else None
    return Reply(response.status_code, headers, body)


class _DjangoDriver:
    def __init__(self, client: Client | APIClient) -> None:
        self.client = client

    def get(self, path: str, headers: Headers = ()) -> Reply:
        return _django_reply(self.client.get(path, headers=_joined(headers, ", ")))


class _AsyncDjangoDriver:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = AsyncClient()
        self.loop = loop

    def get(self, path: str, headers: Headers = ()) -> Reply:
        return _django_reply(self.loop.run_until_complete(self.client.get(path, headers=_joined(headers, ","))))


def _configure_django(settings: Any, adapter: str, verifier: VerifierSpec, options: Mapping[str, Any],
                      middleware: Sequence[str], enforcing_only: bool) -> None:
    value = {"VERIFIER": verifier} if isinstance(verifier, TokenVerifier) else dict(verifier)
    settings.K8S_JWT_AUTH = {**value, **options}
    settings.MIDDLEWARE = list(middleware)
    settings.ROOT_URLCONF = _URLCONFS[(adapter, enforcing_only)]


# -- deploy ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deploy(deployment: Deployment, verifier: VerifierSpec, options: Mapping[str, Any], settings: Any
           ) -> Iterator[Driver]:
    """Build the deployment's app (invalid options raise here, at setup) and yield its driver.

    `settings` is pytest-django's `settings` fixture (used for the Django adapters).
    """
    adapter, layers = deployment.adapter, deployment.layers
    if adapter == "starlette":
        assert layers == "enforcing", "Starlette has no route layer"
        with TestClient(_starlette_app(verifier, options)) as client:  # builds the middleware stack
            yield _TestClientDriver(client)
    elif adapter == "fastapi":
        with TestClient(_fastapi_app(verifier, options, layers)) as client:
            yield _TestClientDriver(client)
    elif adapter == "flask":
        yield _FlaskDriver(_flask_app(verifier, options, layers))
    elif adapter in ("asgi", "wsgi"):
        assert layers == "enforcing", "the generic middlewares have no route layer"
        if adapter == "asgi":
            with TestClient(asgi.K8sJWTAuthMiddleware(_bare_asgi_app, _verifier(verifier), **_keywords(options))
                            ) as client:  # runs the lifespan through the middleware
                yield _TestClientDriver(client)
        else:
            yield _WsgiDriver(wsgi.K8sJWTAuthMiddleware(_bare_wsgi_app, _verifier(verifier), **_keywords(options)))
    else:
        _configure_django(settings, adapter, verifier, options, [MIDDLEWARE_PATH] if deployment.enforcing else [],
                          layers == "enforcing")
        _ = get_settings().loaded  # invalid settings are refused at setup (as the middleware and `check` do)
        if adapter == "django-async":
            loop = asyncio.new_event_loop()
            try:
                yield _AsyncDjangoDriver(loop)
            finally:
                loop.close()
        else:
            yield _DjangoDriver(APIClient() if adapter == "drf" else Client())


def install_twice(adapter: str, verifier: TokenVerifier, settings: Any) -> None:
    """Install the adapter twice on one app and have the framework build it (raises `AlreadyInstalled`)."""
    if adapter == "starlette":
        twice = [Middleware(K8sJWTAuthMiddleware, verifier=verifier)] * 2
        with TestClient(Starlette(routes=[Route("/service", _asgi_answer)], middleware=twice)):
            pass  # entering the client builds the middleware stack
    elif adapter == "fastapi":
        app = FastAPI()
        install(app, verifier)
        install(app, verifier)
    elif adapter == "flask":
        auth, flask_app = K8sJWTAuth(verifier=verifier), Flask("contract")
        auth.init_app(flask_app)
        auth.init_app(flask_app)
    elif adapter == "asgi":
        asgi.K8sJWTAuthMiddleware(asgi.K8sJWTAuthMiddleware(_bare_asgi_app, verifier), verifier)
    elif adapter == "wsgi":
        wsgi.K8sJWTAuthMiddleware(wsgi.K8sJWTAuthMiddleware(_bare_wsgi_app, verifier), verifier)
    else:  # the middleware is constructed when the client's handler loads MIDDLEWARE, on its first request
        _configure_django(settings, adapter, verifier, {}, [MIDDLEWARE_PATH] * 2, False)
        if adapter == "django-async":
            asyncio.run(AsyncClient().get("/service"))
        else:
            Client().get("/service")
