"""The caller: a FastAPI service that calls the callee with its projected service-account token.

```sh
CALLEE_URL=http://callee.demo.svc.cluster.local \
TOKEN_PATH=/var/run/secrets/tokens/callee-token \
uvicorn --app-dir examples/caller_callee/caller app:app
```

The token file is a projected `serviceAccountToken` volume with `audience: callee` (see `../k8s/caller.yaml`);
`ServiceAccountTokenAuth` sends it as `Authorization: Bearer ...` and picks up the kubelet's rotations.

* `GET /healthz` — 200 `{"status": "ok"}` (does not call the callee).
* `GET /call` — calls `GET {CALLEE_URL}/hello`. 200 `{"callee_status": 200, "callee": <its answer>}` when the
  callee accepted us; 502 with the same keys when it refused (`callee_status` 401/403/503 and its error body)
  or could not be reached (`callee_status` null, `error` says why).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from k8s_jwt_auth.client import ServiceAccountTokenAuth, TokenFileError

__all__ = ["DEFAULT_TOKEN_PATH", "app", "create_app"]

DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/callee-token"


def create_app(callee_url: str | None = None, token_path: str | None = None) -> FastAPI:
    """Build the caller; by default `CALLEE_URL` and `TOKEN_PATH` (default `DEFAULT_TOKEN_PATH`) come from the
    environment.

    Raises:
        KeyError: when neither `callee_url` nor `CALLEE_URL` is given.
    """
    base_url = callee_url if callee_url is not None else os.environ["CALLEE_URL"]
    auth = ServiceAccountTokenAuth(token_path or os.environ.get("TOKEN_PATH", DEFAULT_TOKEN_PATH))
    client = httpx.Client(base_url=base_url, auth=auth, timeout=5.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(title="k8s-jwt-auth example: caller", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/call")
    def call() -> JSONResponse:  # a sync view: FastAPI runs it in a worker thread, so the sync client is fine
        try:
            response = client.get("/hello")
        except TokenFileError as exc:  # the message names the file and the fix, never the token
            return JSONResponse({"callee_status": None, "error": str(exc)}, status_code=502)
        except httpx.HTTPError as exc:
            return JSONResponse({"callee_status": None, "error": f"cannot reach the callee: {exc!r}"},
                                status_code=502)
        body: Any = response.json() if response.headers.get("content-type", "").startswith("application/json") \
            else response.text
        status = 200 if response.status_code == 200 else 502
        return JSONResponse({"callee_status": response.status_code, "callee": body}, status_code=status)

    return app


app = create_app()
