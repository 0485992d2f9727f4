"""Django settings for the tests in tests/django_tests/ (loaded by their conftest, not globally).

K8S_JWT_AUTH here is a valid placeholder (its keys are never fetched); each test points it at the fake issuer with
pytest-django's `settings` fixture or `override_settings`.
"""

from __future__ import annotations

SECRET_KEY = "k8s-jwt-auth-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.django_tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "k8s_jwt_auth.integrations.django",
]

MIDDLEWARE = [
    "k8s_jwt_auth.integrations.django.middleware.K8sJWTAuthMiddleware",
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "k8s_jwt_auth.integrations.django.backends.K8sJWTAuthBackend",
]

K8S_JWT_AUTH = {
    "ISSUER": "https://issuer.test",
    "AUDIENCES": ["test"],
    "JWKS_URI": "https://issuer.test/keys",
    "EXEMPT_PATHS": ["/healthz", "/public/*"],
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["k8s_jwt_auth.integrations.django.drf.K8sJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
}

LOGGING_CONFIG = None
