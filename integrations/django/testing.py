"""Django test clients that call the project as a Kubernetes workload, with a token minted by a `FakeIssuer`.

```python
from k8s_jwt_auth.integrations.django.testing import workload_client


def test_whoami(settings, k8s_issuer):
    settings.K8S_JWT_AUTH = {"ISSUER": k8s_issuer.issuer, "AUDIENCES": ["payments-api"]}
    response = workload_client(k8s_issuer, "payments", "worker", pod="worker-1").get("/whoami")
    assert response.json()["pod_name"] == "worker-1"
```

The token is minted for the audiences of `settings.K8S_JWT_AUTH` and sent in its `HEADER` (`Authorization` by
default, so `request.META["HTTP_AUTHORIZATION"]`). `async_workload_client` runs the ASGI path, `workload_headers` gives
the header alone (for pytest-django's `client` and `async_client`), and `k8s_jwt_auth.integrations.django.drf` has
`workload_api_client` for Django REST framework's `APIClient`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from django.test import AsyncClient, Client
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.integrations.django needs Django: pip install "k8s-jwt-auth[django]"') from exc

from .conf import get_settings

if TYPE_CHECKING:
    from k8s_jwt_auth.testing import FakeIssuer

__all__ = ["async_workload_client", "workload_client", "workload_headers"]


def workload_headers(issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                     **mint_options: Any) -> dict[str, str]:
    """The header a workload sends: `{"Authorization": "Bearer <token>"}`, with a token minted by `issuer`.

    ```python
    client.get("/whoami", headers=workload_headers(k8s_issuer, "payments", "worker"))
    ```

    Args:
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options (`pod=`, `lifetime=`, ...). `audiences` defaults to the
            `AUDIENCES` of `settings.K8S_JWT_AUTH`.

    Returns:
        The header named by `K8S_JWT_AUTH["HEADER"]` (default `Authorization`) with `Bearer <token>`.

    Raises:
        SettingsError: `settings.K8S_JWT_AUTH` is invalid (the middleware would refuse to start too).
    """
    loaded = get_settings().loaded
    mint_options.setdefault("audiences", tuple(loaded.verifier.config.audiences))
    return {loaded.header: f"Bearer {issuer.mint(namespace, service_account, **mint_options)}"}


def workload_client(issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                    **mint_options: Any) -> Client:
    """A `django.test.Client` whose every request calls as `namespace/service_account` (a request's `headers=` win).

    Args:
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options, as for `workload_headers`.
    """
    return Client(headers=workload_headers(issuer, namespace, service_account, **mint_options))


def async_workload_client(issuer: FakeIssuer, namespace: str = "default", service_account: str = "default",
                          **mint_options: Any) -> AsyncClient:
    """A `django.test.AsyncClient` (the ASGI path) whose every request calls as `namespace/service_account`.

    ```python
    response = await async_workload_client(k8s_issuer, "payments", "worker").get("/whoami")
    ```

    The header goes with each request (a request's own `headers=` win): `AsyncClient(headers=...)` would not do, as
    it sends `Authorization` as `request.META["HTTP_HTTP_AUTHORIZATION"]` (Django 5.2).

    Args:
        issuer: a `k8s_jwt_auth.testing.FakeIssuer` (e.g. the `k8s_issuer` pytest fixture).
        namespace: the caller's namespace.
        service_account: the caller's service account.
        **mint_options: more `FakeIssuer.mint` options, as for `workload_headers`.
    """
    return _HeadersAsyncClient(workload_headers(issuer, namespace, service_account, **mint_options))


class _HeadersAsyncClient(AsyncClient):  # type: ignore[misc]  # Django ships no type hints
    """An `AsyncClient` that adds `default_headers` to every request."""

    def __init__(self, default_headers: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_headers = default_headers

    def generic(self, method: str, path: str, *args: Any, headers: dict[str, str] | None = None, **kwargs: Any
                ) -> Any:
        own = {name.lower() for name in headers or {}}
        merged = {name: value for name, value in self.default_headers.items() if name.lower() not in own}
        return super().generic(method, path, *args, headers={**merged, **(headers or {})}, **kwargs)
