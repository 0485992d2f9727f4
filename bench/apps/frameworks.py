"""The same hello-world route in four frameworks, three ways each, for bench/adapters.py and bench/load.py.

Modes:

* `bare`: no authentication;
* `ours`: our adapter (Starlette `K8sJWTAuthMiddleware`, FastAPI `Workload` dependency with its OpenAPI scheme,
  Flask `K8sJWTAuth` in enforcing mode, Django `K8sJWTAuthMiddleware`), service policy with one allow rule;
* `hand`: the idiomatic hand-rolled glue for that framework: PyJWT `jwt.decode` with a preloaded key (checks
  iss, aud, exp) behind a `cachetools.TTLCache` keyed by the token, plus the same one allow rule (a namespace
  check), in a pure ASGI middleware / a FastAPI `HTTPBearer` dependency / a Flask `before_request` / a Django
  middleware.

`Bench` holds the key, the token and the settings; `build(framework, mode, bench)` returns the ASGI or WSGI app.
For servers, `load_app.py` builds one app from `BENCH_*` environment variables.
"""

# no `from __future__ import annotations`: FastAPI reads the local dependencies' annotations
import json
import os
from dataclasses import dataclass, field
from typing import Any

import jwt
from cachetools import TTLCache

from k8s_jwt_auth import Policy, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import SigningKey, build_claims, sign

FRAMEWORKS = ("starlette", "fastapi", "flask", "django")
MODES = ("bare", "ours", "hand")
ISSUER = "https://bench.cluster.local"
AUDIENCE = "bench"
ALLOW = "payments/*"  # the service policy: one allow rule
NAMESPACES = frozenset({"payments"})  # the hand-rolled glue's same rule
BODY = b"hello"
_401 = b'{"error":"invalid_token"}'


@dataclass
class Bench:
    """One signing key, one cached token, the verifier settings."""

    jwk: dict[str, Any]
    token: str
    public_key: Any = field(repr=False)

    @classmethod
    def generate(cls) -> "Bench":
        key = SigningKey.generate("RS256")
        token = sign(key, build_claims(issuer=ISSUER, audiences=[AUDIENCE], namespace="payments",
                                       service_account="api", pod="api-1", node="node-1", lifetime=3600))
        return cls.from_jwk(key.public_jwk(), token)

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any], token: str) -> "Bench":
        return cls(jwk=jwk, token=token, public_key=jwt.PyJWK(jwk).key)

    @classmethod
    def from_env(cls) -> "Bench":
        with open(os.environ["BENCH_JWKS_FILE"]) as fh:
            jwk = json.load(fh)["keys"][0]
        return cls.from_jwk(jwk, os.environ.get("BENCH_TOKEN", ""))

    def jwks_file(self) -> str:
        """A JWKS file with the public key (Django's settings name a file); removed at exit."""
        path = os.environ.get("BENCH_JWKS_FILE")
        if path:
            return path
        import atexit
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump({"keys": [self.jwk]}, fh)
        atexit.register(os.unlink, fh.name)
        os.environ["BENCH_JWKS_FILE"] = fh.name
        return fh.name

    def config(self) -> VerifierConfig:
        return VerifierConfig(issuer=ISSUER, audiences=[AUDIENCE], jwks={"keys": [self.jwk]}, allow=ALLOW)

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.config())


# -- the hand-rolled glue, shared by every framework -------------------------------------------------------


class HandRolled:
    """`jwt.decode` with a preloaded key behind a `TTLCache` keyed by the token, and one allow rule."""

    def __init__(self, bench: Bench) -> None:
        self.key = bench.public_key
        self.cache: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=300)

    def claims(self, authorization: str | None) -> dict[str, Any] | None:
        """The verified, allowed claims, or `None` (-> 401/403)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[7:]
        claims = self.cache.get(token)
        if claims is None:
            try:
                claims = jwt.decode(token, self.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER,
                                    options={"require": ["exp", "iss", "aud", "sub"]})
            except jwt.PyJWTError:
                return None
            self.cache[token] = claims
        if claims["kubernetes.io"]["namespace"] not in NAMESPACES:
            return None
        return claims


# -- Starlette ---------------------------------------------------------------------------------------------


def starlette_app(mode: str, bench: Bench) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    middleware = []
    if mode == "ours":
        from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware

        middleware.append(Middleware(K8sJWTAuthMiddleware, verifier=bench.verifier()))
    elif mode == "hand":
        middleware.append(Middleware(HandRolledASGI, glue=HandRolled(bench)))
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


class HandRolledASGI:
    """The idiomatic pure ASGI middleware."""

    def __init__(self, app: Any, glue: HandRolled) -> None:
        self.app, self.glue = app, glue

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        claims = self.glue.claims(authorization)
        if claims is None:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": _401})
            return
        scope["claims"] = claims
        await self.app(scope, receive, send)


# -- FastAPI -----------------------------------------------------------------------------------------------


def fastapi_app(mode: str, bench: Bench) -> Any:
    from typing import Annotated

    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import PlainTextResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    app = FastAPI()
    if mode == "bare":
        @app.get("/", response_class=PlainTextResponse)
        async def hello_bare() -> str:
            return "hello"
    elif mode == "ours":
        from k8s_jwt_auth.integrations.fastapi import Workload, install

        install(app, bench.verifier())

        @app.get("/", response_class=PlainTextResponse)
        async def hello_ours(workload: Workload) -> str:
            return "hello"
    else:
        glue = HandRolled(bench)
        bearer = HTTPBearer(bearerFormat="JWT")  # the OpenAPI scheme, as ours has

        async def claims(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> dict[str, Any]:
            found = glue.claims(f"Bearer {credentials.credentials}")
            if found is None:
                raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
            return found

        @app.get("/", response_class=PlainTextResponse)
        async def hello_hand(caller: Annotated[dict[str, Any], Depends(claims)]) -> str:
            return "hello"
    return app


# -- Flask -------------------------------------------------------------------------------------------------


def flask_app(mode: str, bench: Bench) -> Any:
    from flask import Flask, g, request

    app = Flask("bench_" + mode)

    @app.get("/")
    def hello() -> str:
        return "hello"

    if mode == "ours":
        from k8s_jwt_auth.integrations.flask import K8sJWTAuth

        app.config["K8S_JWT_AUTH_ENFORCE"] = True  # authenticate every request before its view
        K8sJWTAuth(app, verifier=bench.verifier())
    elif mode == "hand":
        glue = HandRolled(bench)

        @app.before_request
        def authenticate() -> Any:
            claims = glue.claims(request.headers.get("Authorization"))
            if claims is None:
                return {"error": "invalid_token"}, 401, {"WWW-Authenticate": "Bearer"}
            g.claims = claims
            return None
    return app


# -- Django ------------------------------------------------------------------------------------------------


class _URLs:  # ROOT_URLCONF: Django accepts an object with urlpatterns
    urlpatterns: list[Any] = []


_HAND_GLUE: list[HandRolled] = []  # the Django hand-rolled middleware's glue (middleware is built by path)


def configure_django(bench: Bench) -> None:
    """Minimal settings, once per process: no database use, no sessions, no Django auth middleware."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="bench", ROOT_URLCONF=_URLs,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "k8s_jwt_auth.integrations.django"],
        MIDDLEWARE=[], USE_TZ=True, DATABASES={},
        LOGGING_CONFIG=None,
        K8S_JWT_AUTH={"ISSUER": ISSUER, "AUDIENCES": [AUDIENCE], "JWKS_FILE": bench.jwks_file(), "ALLOW": ALLOW},
    )
    django.setup()
    from django.http import HttpResponse
    from django.urls import path

    def hello(request: Any) -> HttpResponse:
        return HttpResponse(b"hello", content_type="text/plain")

    _URLs.urlpatterns = [path("", hello)]
    _HAND_GLUE[:] = [HandRolled(bench)]


class HandRolledDjangoMiddleware:
    """The idiomatic Django middleware."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.glue = _HAND_GLUE[0]

    def __call__(self, request: Any) -> Any:
        claims = self.glue.claims(request.META.get("HTTP_AUTHORIZATION"))
        if claims is None:
            from django.http import JsonResponse

            response = JsonResponse({"error": "invalid_token"}, status=401)
            response["WWW-Authenticate"] = "Bearer"
            return response
        request.claims = claims
        return self.get_response(request)


_DJANGO_MIDDLEWARE = {
    "bare": [],
    "ours": ["k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware"],
    "hand": [__name__ + ".HandRolledDjangoMiddleware"],
}


def django_app(mode: str, bench: Bench) -> Any:
    """A `WSGIHandler` whose middleware chain is the mode's (read from `settings.MIDDLEWARE` when built)."""
    configure_django(bench)
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = _DJANGO_MIDDLEWARE[mode]
    return WSGIHandler()


def build(framework: str, mode: str, bench: Bench) -> Any:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    builder = {"starlette": starlette_app, "fastapi": fastapi_app, "flask": flask_app, "django": django_app}
    return builder[framework](mode, bench)


def policy() -> Policy:
    return Policy([ALLOW])
