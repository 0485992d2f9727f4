"""Reading the Kubernetes manifests of an example (`examples/*/k8s/*.yaml`) for the tests that check their wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def manifest_objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of every manifest in `folder`, by (kind, name); a name defined twice fails."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    files = sorted(folder.glob("*.yaml"))
    assert files, f"no manifests in {folder}"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The deployment's only container."""
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment variables."""
    return {item["name"]: item["value"] for item in container(deployment)["env"]}
