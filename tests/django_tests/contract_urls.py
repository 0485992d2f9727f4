"""URLconfs of the adapter contract (test_contract.py): the same three routes for each Django adapter.

Every route answers 200 with `{"workload": "<ns>/<sa>" or null}`:

* `/service` — the service policy only: a route-layer gate without rules (`@workload_required`, DRF's
  `WorkloadPermission`), or no gate at all where the middleware alone protects it (the `*Enforcing` URLconfs);
* `/route` — the route's own rules `payments/*` and `!payments/batch`;
* `/healthz` — no gate (exempt from the middleware by `EXEMPT_PATHS`).

Each URLconf is a class with `urlpatterns` (Django takes any object as `ROOT_URLCONF`), set by the contract's driver.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from k8s_jwt_auth.identity import WorkloadIdentity
from k8s_jwt_auth.integrations.django.decorators import workload_required
from k8s_jwt_auth.integrations.django.drf import K8sJWTAuthentication, WorkloadPermission, workload_permission

RULES = ("payments/*", "!payments/batch")


def workload_name(workload: object) -> str | None:
    """`<ns>/<sa>` of a verified workload, `None` for anything else."""
    if isinstance(workload, WorkloadIdentity):
        return f"{workload.namespace}/{workload.service_account}"
    return None


def _answer(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"workload": workload_name(getattr(request, "workload", None))})


# -- sync views (django.test.Client, WSGI) --------------------------------------------------------------


def service(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@workload_required
def guarded_service(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@workload_required(*RULES)
def route(request: HttpRequest) -> JsonResponse:
    return _answer(request)


def healthz(request: HttpRequest) -> JsonResponse:
    return _answer(request)


# -- async views (django.test.AsyncClient, ASGI) --------------------------------------------------------


async def async_service(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@workload_required
async def async_guarded_service(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@workload_required(*RULES)
async def async_route(request: HttpRequest) -> JsonResponse:
    return _answer(request)


async def async_healthz(request: HttpRequest) -> JsonResponse:
    return _answer(request)


# -- DRF (rest_framework.test.APIClient) ----------------------------------------------------------------


class DrfView(APIView):
    authentication_classes = [K8sJWTAuthentication]

    def get(self, request: Request) -> Response:
        return Response({"workload": workload_name(request.auth)})


class DrfService(DrfView):
    permission_classes: list[Any] = []  # the middleware alone applies the service policy


class DrfGuardedService(DrfView):
    permission_classes = [WorkloadPermission]


class DrfRoute(DrfView):
    permission_classes = [workload_permission(*RULES)]


class DrfHealthz(DrfView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []


def _urls(service_view: Any, route_view: Any, healthz_view: Any) -> list[URLPattern]:
    return [path("service", service_view), path("route", route_view), path("healthz", healthz_view)]


class Sync:
    urlpatterns = _urls(guarded_service, route, healthz)


class SyncEnforcing:
    urlpatterns = _urls(service, route, healthz)


class Async:
    urlpatterns = _urls(async_guarded_service, async_route, async_healthz)


class AsyncEnforcing:
    urlpatterns = _urls(async_service, async_route, async_healthz)


class Drf:
    urlpatterns = _urls(DrfGuardedService.as_view(), DrfRoute.as_view(), DrfHealthz.as_view())


class DrfEnforcing:
    urlpatterns = _urls(DrfService.as_view(), DrfRoute.as_view(), DrfHealthz.as_view())
