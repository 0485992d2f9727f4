"""The `requests` side of `k8s_jwt_auth.client`: `RequestsTokenAuth`, loaded on first use (the core never needs
requests)."""

from __future__ import annotations

try:
    import requests
    from requests.auth import AuthBase
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError('k8s_jwt_auth.client.RequestsTokenAuth needs requests: pip install "k8s-jwt-auth[requests]"'
                      ) from exc

from .client import _SendsTokenFile

__all__ = ["RequestsTokenAuth"]


class RequestsTokenAuth(_SendsTokenFile, AuthBase):
    """requests authentication: `Authorization: Bearer <token>` from a projected service-account token file.

    ```python
    session = requests.Session()
    session.auth = RequestsTokenAuth("/var/run/secrets/tokens/payments-api-token")
    session.get("http://payments-api.payments.svc/charge", timeout=5)
    ```

    The twin of `ServiceAccountTokenAuth` (httpx): the file is `stat`ed on every request and read again only when
    the kubelet rotated it, so the next request sends the new token; one instance may be shared by threads and
    sessions. requests drops the header when a redirect leaves for another host, and does not add it back.

    Args:
        path: the token file; default the pod's own token (`DEFAULT_TOKEN_PATH`, audience: the API server).

    Raises:
        TokenFileError: from the request (not at construction) when the file is missing, unreadable, empty or
            does not hold a token; requests passes it through unwrapped.
    """

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set `Authorization: Bearer <token>` on the request.

        Raises:
            TokenFileError: the file is missing, unreadable, empty or not a token.
        """
        r.headers["Authorization"] = f"Bearer {self.token_file.token()}"
        return r
