"""The caller/callee example: its Kubernetes manifests are wired consistently, and the two apps work together with
a FakeIssuer standing in for the cluster (both apps under uvicorn on 127.0.0.1)."""

from __future__ import annotations

import importlib.util
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from k8s_jwt_auth.config import SETTINGS
from k8s_jwt_auth.testing import FakeIssuer

from ._threaded import uvicorn_server

pytest.importorskip("yaml")

from ._manifests import container, env, manifest_objects  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "caller_callee"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


# -- the manifests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of every manifest, by (kind, name)."""
    found = manifest_objects(EXAMPLE / "k8s")
    return found


def test_caller_audience_is_the_callee_audience(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    caller, callee = objects["Deployment", "caller"], objects["Deployment", "callee"]
    (volume,) = caller["spec"]["template"]["spec"]["volumes"]
    (source,) = volume["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert projected["audience"] == env(callee)["K8S_JWT_AUTH_AUDIENCES"] == "callee"
    assert projected["expirationSeconds"] == 3600
    (mount,) = container(caller)["volumeMounts"]
    assert mount["name"] == volume["name"]
    token_path = posixpath.join(mount["mountPath"], projected["path"])
    assert token_path == env(caller)["TOKEN_PATH"] == "/var/run/secrets/tokens/callee-token"
    assert token_path == load_app("caller_defaults", "caller", {"CALLEE_URL": "http://callee"}).DEFAULT_TOKEN_PATH


def test_callee_allows_exactly_the_caller(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    caller, callee = objects["Deployment", "caller"], objects["Deployment", "callee"]
    caller_sa = objects["ServiceAccount", caller["spec"]["template"]["spec"]["serviceAccountName"]]
    assert caller_sa["metadata"]["namespace"] == caller["metadata"]["namespace"]
    assert env(callee)["K8S_JWT_AUTH_ALLOW"] == f"{caller_sa['metadata']['namespace']}/{caller_sa['metadata']['name']}"


def test_callee_settings_are_known_and_point_at_the_pod_mount(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    settings = {k: v for k, v in env(objects["Deployment", "callee"]).items() if k.startswith("K8S_JWT_AUTH_")}
    assert {k.removeprefix("K8S_JWT_AUTH_") for k in settings} <= set(SETTINGS)
    assert settings["K8S_JWT_AUTH_CA_FILE"] == f"{SA_MOUNT}/ca.crt"
    assert settings["K8S_JWT_AUTH_TOKEN_FILE"] == f"{SA_MOUNT}/token"
    assert settings["K8S_JWT_AUTH_ISSUER"].startswith("https://")
    assert objects["ServiceAccount", "callee"].get("automountServiceAccountToken", True) is True


def test_callee_service_account_may_read_discovery(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    callee = objects["Deployment", "callee"]
    bindings = [o for (kind, _), o in objects.items() if kind == "ClusterRoleBinding"]
    (binding,) = bindings
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:service-account-issuer-discovery"}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": callee["spec"]["template"]["spec"]["serviceAccountName"],
                                    "namespace": callee["metadata"]["namespace"]}]
    assert ("ServiceAccount", "callee") in objects


def test_services_namespaces_and_commands_match(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    namespaces = {name for kind, name in objects if kind == "Namespace"}
    for (kind, name), obj in objects.items():
        if kind not in ("Namespace", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] in namespaces, (kind, name)
    for name in ("caller", "callee"):
        deployment, service = objects["Deployment", name], objects["Service", name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items()
        port_names = {p["name"] for p in container(deployment)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        command = container(deployment)["command"]
        app_dir = command[command.index("--app-dir") + 1]
        assert app_dir == f"/app/examples/caller_callee/{name}"
        assert (EXAMPLE / name / "app.py").is_file()
    callee_service = objects["Service", "callee"]["metadata"]
    host = httpx.URL(env(objects["Deployment", "caller"])["CALLEE_URL"]).host
    assert host.startswith(f"{callee_service['name']}.{callee_service['namespace']}.")


def test_dockerfile_copies_what_exists() -> None:
    repo = EXAMPLE.parents[1]
    for line in (EXAMPLE / "Dockerfile").read_text().splitlines():
        if match := re.match(r"COPY (.+) \S+$", line):
            for source in match.group(1).split():
                assert (repo / source).exists(), source


# -- the two apps, with a FakeIssuer as the cluster ------------------------------------------------


def load_app(module_name: str, which: str, environ: dict[str, str]) -> ModuleType:
    """Import examples/caller_callee/<which>/app.py as `module_name`, with `environ` as its only settings."""
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLE / which / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeIssuer]:
    with FakeIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def callee_url(cluster: FakeIssuer) -> Iterator[str]:
    """The callee, finding its keys by discovery from the fake cluster, allowing demo/caller."""
    callee = load_app("caller_callee_callee", "callee", {
        "K8S_JWT_AUTH_ISSUER": cluster.issuer, "K8S_JWT_AUTH_AUDIENCES": "callee", "K8S_JWT_AUTH_ALLOW": "demo/caller",
    })
    with uvicorn_server(callee.app) as url:
        yield url


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens" / "callee-token"


@pytest.fixture
def caller(callee_url: str, token_path: Path) -> Iterator[httpx.Client]:
    module = load_app("caller_callee_caller", "caller", {"CALLEE_URL": callee_url, "TOKEN_PATH": str(token_path)})
    with uvicorn_server(module.app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def put_token(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp")
    tmp.write_text(token)
    os.replace(tmp, path)


def test_caller_reaches_callee_as_itself(cluster: FakeIssuer, caller: httpx.Client, token_path: Path) -> None:
    put_token(token_path, cluster.mint("demo", "caller", audiences="callee", pod="caller-5d8f"))
    response = caller.get("/call")
    assert response.status_code == 200
    body = response.json()
    assert body["callee_status"] == 200
    assert body["callee"]["hello"] == "demo/caller"
    workload = body["callee"]["workload"]
    assert (workload["namespace"], workload["service_account"], workload["pod_name"]) == ("demo", "caller",
                                                                                           "caller-5d8f")
    assert workload["audiences"] == ["callee"]


def test_token_for_another_audience_is_refused(cluster: FakeIssuer, caller: httpx.Client, token_path: Path) -> None:
    put_token(token_path, cluster.mint("demo", "caller", audiences="someone-else"))
    response = caller.get("/call")
    assert response.status_code == 502
    assert response.json()["callee_status"] == 401
    assert response.json()["callee"]["reason"] == "bad_audience"


def test_rotated_token_is_used(cluster: FakeIssuer, caller: httpx.Client, token_path: Path) -> None:
    put_token(token_path, cluster.mint("demo", "caller", audiences="someone-else"))
    assert caller.get("/call").json()["callee_status"] == 401
    put_token(token_path, cluster.mint("demo", "caller", audiences="callee"))  # the kubelet's next token
    assert caller.get("/call").json()["callee_status"] == 200


def test_other_workload_is_denied(cluster: FakeIssuer, caller: httpx.Client, token_path: Path) -> None:
    put_token(token_path, cluster.mint("demo", "intruder", audiences="callee"))
    response = caller.get("/call")
    assert response.status_code == 502
    assert response.json()["callee_status"] == 403
    assert response.json()["callee"]["reason"] == "policy_denied"


def test_missing_token_file_is_explained(caller: httpx.Client, token_path: Path) -> None:
    response = caller.get("/call")
    assert response.status_code == 502
    body = response.json()
    assert body["callee_status"] is None
    assert str(token_path) in body["error"] and "serviceAccountToken" in body["error"]
