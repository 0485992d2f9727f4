"""Hello-world Starlette app for the HTTP overhead benchmark; `BENCH_AUTH=1` adds our middleware."""

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):  # type: ignore[no-untyped-def]
    return PlainTextResponse("hello")


middleware = []
if os.environ.get("BENCH_AUTH") == "1":
    from k8s_jwt_auth.integrations.starlette import K8sJWTAuthMiddleware

    middleware.append(Middleware(K8sJWTAuthMiddleware))  # configured from K8S_JWT_AUTH_* variables

app = Starlette(routes=[Route("/", hello)], middleware=middleware)
