"""The example's two views; `K8sJWTAuthMiddleware` has already authenticated the request."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

__all__ = ["healthz", "whoami"]


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: an exempt path, no authentication."""
    return JsonResponse({"status": "ok"})


async def whoami(request: HttpRequest) -> JsonResponse:
    """The caller's identity, with the CLI's identity keys."""
    return JsonResponse(request.workload.to_dict())
