"""Example Django project protected by k8s-jwt-auth; see `settings.py`."""
