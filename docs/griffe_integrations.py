"""Griffe extension for the docs build: load `integrations/` as `k8s_jwt_auth.integrations`.

The package is installed from `integrations/` (`[tool.setuptools.package-dir]` in pyproject.toml), which a static
reader looking inside `k8s_jwt_auth/` cannot find. This hook visits it with `k8s_jwt_auth` as its parent, so its
objects get their import paths (`k8s_jwt_auth.integrations.fastapi.install`) without importing any framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe


class IntegrationsPackage(griffe.Extension):
    """Attach `integrations/` to the `k8s_jwt_auth` package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "k8s_jwt_auth" or "integrations" in pkg.members:
            return
        source = Path(str(pkg.filepath)).parent.parent / "integrations" / "__init__.py"
        # griffe has no public call that loads a package under a given parent
        module = loader._load_module("integrations", source, parent=pkg)
        pkg.set_member("integrations", module)
        loader.expand_exports(module)
