"""Views and URLs for the Django tests: function views (sync and async), guarded views, class-based views, DRF."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views import View
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from k8s_jwt_auth.integrations.django.decorators import WorkloadRequiredMixin, workload_required
from k8s_jwt_auth.integrations.django.drf import WorkloadPermission, workload_permission


def describe(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    workload = request.workload
    return {"user": str(user), "user_class": type(user).__name__, "authenticated": user.is_authenticated,
            "workload": workload.to_dict() if workload is not None else None}


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe(request))


async def async_whoami(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({**describe(request), "auser": str(user)})


@workload_required("payments/*", "!payments/batch")
def payments(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe(request))


@workload_required("payments/*", "!payments/batch")
async def async_payments(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe(request))


@workload_required
def any_workload(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe(request))


class WebView(WorkloadRequiredMixin, View):
    workload_rules = ("frontend/web/web-*",)

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(describe(request))


class AsyncWebView(WorkloadRequiredMixin, View):
    workload_rules = ("frontend/web/web-*",)

    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(describe(request))


class DrfWhoami(APIView):
    permission_classes = [WorkloadPermission]

    def get(self, request: Request) -> Response:
        return Response({"user": str(request.user), "user_class": type(request.user).__name__,
                         "workload": request.auth.to_dict() if request.auth is not None else None})


class DrfPayments(DrfWhoami):
    permission_classes = [workload_permission("payments/*", "!payments/batch")]


class DrfOpen(APIView):
    def get(self, request: Request) -> Response:
        return Response({"authenticated": bool(request.user and request.user.is_authenticated)})


urlpatterns = [
    path("whoami", whoami),
    path("healthz", whoami),
    path("public/info", whoami),
    path("async/whoami", async_whoami),
    path("payments", payments),
    path("async/payments", async_payments),
    path("any", any_workload),
    path("web", WebView.as_view()),
    path("async/web", AsyncWebView.as_view()),
    path("drf/whoami", DrfWhoami.as_view()),
    path("drf/payments", DrfPayments.as_view()),
    path("drf/open", DrfOpen.as_view()),
]
