"""URLs of the example: `/healthz` and `/whoami`."""

from __future__ import annotations

from django.urls import path

from .views import healthz, whoami

urlpatterns = [
    path("healthz", healthz),
    path("whoami", whoami),
]
