"""examples/grpc_service: its manifests are wired consistently, and the greeter and the caller work together for real,
each under its documented command in a subprocess on 127.0.0.1, with a FakeIssuer standing in for the cluster."""

from __future__ import annotations

import json
import os
import posixpath
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s_jwt_auth.testing import FakeIssuer

from ._servers import example_env

pytest.importorskip("yaml")

from ._manifests import container, env, manifest_objects  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "grpc_service"
STARTUP_TIMEOUT = 20.0
_LISTENING = re.compile(r"greeter listening on (127\.0\.0\.1:\d+)")


# -- the manifests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of every manifest, by (kind, name)."""
    found = manifest_objects(EXAMPLE / "k8s")
    assert {kind for kind, _ in found} == {"Namespace", "ServiceAccount", "ClusterRoleBinding", "Deployment",
                                           "Service"}
    return found


def test_the_caller_sends_a_token_for_the_greeters_audience(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    caller, greeter = objects["Deployment", "caller"], objects["Deployment", "greeter"]
    (volume,) = caller["spec"]["template"]["spec"]["volumes"]
    (source,) = volume["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert projected["audience"] == env(greeter)["K8S_JWT_AUTH_AUDIENCES"] == "greeter"
    (mount,) = container(caller)["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    token_path = posixpath.join(mount["mountPath"], projected["path"])
    assert token_path == env(caller)["TOKEN_PATH"] == "/var/run/secrets/tokens/greeter-token"


def test_the_greeter_allows_exactly_the_caller(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    caller, greeter = objects["Deployment", "caller"], objects["Deployment", "greeter"]
    account = objects["ServiceAccount", caller["spec"]["template"]["spec"]["serviceAccountName"]]
    assert env(greeter)["K8S_JWT_AUTH_ALLOW"] == f"{account['metadata']['namespace']}/{account['metadata']['name']}"
    assert account["automountServiceAccountToken"] is False  # it only needs its projected token


def test_the_caller_reaches_the_greeters_service(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    caller, greeter, service = (objects["Deployment", "caller"], objects["Deployment", "greeter"],
                                objects["Service", "greeter"])
    (port,) = service["spec"]["ports"]
    (container_port,) = container(greeter)["ports"]
    assert port["targetPort"] == container_port["name"] and container_port["containerPort"] == 50051
    assert env(greeter)["GRPC_LISTEN"].endswith(f":{container_port['containerPort']}")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert env(caller)["GREETER_TARGET"] == f"{name}.{namespace}.svc.cluster.local:{port['port']}"
    assert service["spec"]["selector"] == greeter["spec"]["template"]["metadata"]["labels"]


def test_the_probes_use_the_health_service(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    greeter = container(objects["Deployment", "greeter"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert greeter[probe]["grpc"]["port"] == 50051  # /grpc.health.v1.Health/Check, exempt by default


def test_the_greeter_can_fetch_the_issuer_keys(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    greeter = objects["Deployment", "greeter"]
    binding = objects["ClusterRoleBinding", "grpc-demo-greeter-issuer-discovery"]
    assert binding["roleRef"]["name"] == "system:service-account-issuer-discovery"
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (greeter["spec"]["template"]["spec"]["serviceAccountName"],
                                                       greeter["metadata"]["namespace"])
    settings = env(greeter)
    assert settings["K8S_JWT_AUTH_CA_FILE"].startswith("/var/run/secrets/kubernetes.io/serviceaccount/")
    assert settings["K8S_JWT_AUTH_TOKEN_FILE"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_documented_commands_are_the_manifests(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert container(objects["Deployment", "greeter"])["command"] == ["python", "/app/examples/grpc_service/server.py"]
    assert container(objects["Deployment", "caller"])["command"][:2] == ["python",
                                                                        "/app/examples/grpc_service/client.py"]
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert "COPY examples/grpc_service ./examples/grpc_service" in dockerfile and '".[grpc]"' in dockerfile


# -- the programs, for real ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    """The module's own fake issuer: no other test's key rotation or failure mode reaches the running greeter."""
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module")
def greeter(issuer: FakeIssuer) -> Iterator[str]:
    """`python examples/grpc_service/server.py` on 127.0.0.1 (keys by discovery); yields its target."""
    environment = example_env(ISSUER=issuer.issuer, AUDIENCES="greeter", ALLOW="grpc-demo/caller")
    environment["GRPC_LISTEN"] = "127.0.0.1:0"
    proc = subprocess.Popen([sys.executable, str(EXAMPLE / "server.py")], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        target = None
        while target is None:
            line = lines.get(timeout=STARTUP_TIMEOUT)
            if line is None:
                raise RuntimeError("the greeter exited: " + "".join(output))
            found = _LISTENING.search(line)
            target = found.group(1) if found else None
        yield target
        proc.send_signal(signal.SIGTERM)  # what Kubernetes sends: a graceful stop, exit status 0
        assert proc.wait(15) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def run_client(target: str, token_path: Path | str) -> tuple[int, dict[str, Any]]:
    """`python examples/grpc_service/client.py --target ... --token-path ...`: its exit status and its JSON line."""
    proc = subprocess.run([sys.executable, str(EXAMPLE / "client.py"), "--target", target, "--token-path",
                           str(token_path), "--name", "tests"], cwd=REPO, capture_output=True, text=True,
                          timeout=30, env={k: v for k, v in os.environ.items() if not k.startswith("K8S_JWT_AUTH_")})
    assert proc.stdout, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc.returncode, answer


def test_the_allowed_caller_is_answered(issuer: FakeIssuer, greeter: str, tmp_path: Path) -> None:
    token = tmp_path / "greeter-token"
    token.write_text(issuer.mint("grpc-demo", "caller", audiences="greeter", pod="caller-1"))
    assert run_client(greeter, token) == (0, {"hello": "grpc-demo/caller", "name": "tests", "pod": "caller-1"})


def test_another_workload_is_permission_denied(issuer: FakeIssuer, greeter: str, tmp_path: Path) -> None:
    token = tmp_path / "greeter-token"
    token.write_text(issuer.mint("grpc-demo", "intruder", audiences="greeter"))
    status, answer = run_client(greeter, token)
    assert status == 1 and answer["code"] == "PERMISSION_DENIED"
    assert answer["details"].startswith("policy_denied: workload grpc-demo/intruder is not allowed")


def test_a_token_for_another_audience_is_unauthenticated(issuer: FakeIssuer, greeter: str, tmp_path: Path) -> None:
    token = tmp_path / "greeter-token"
    token.write_text(issuer.mint("grpc-demo", "caller", audiences="someone-else"))
    status, answer = run_client(greeter, token)
    assert (status, answer["code"]) == (1, "UNAUTHENTICATED") and answer["details"].startswith("bad_audience: ")


def test_a_missing_token_file_is_reported_by_the_caller(greeter: str, tmp_path: Path) -> None:
    status, answer = run_client(greeter, tmp_path / "absent")
    assert status == 1 and answer["code"] is None and "serviceAccountToken" in answer["details"]


def test_a_call_without_a_token_is_unauthenticated(greeter: str) -> None:
    with grpc.insecure_channel(greeter) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/demo.Greeter/Hello")(b'{"name": "anonymous"}', timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details().startswith("missing_token: ")


def test_the_health_service_answers_without_a_token(greeter: str) -> None:
    with grpc.insecure_channel(greeter) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "demo.Greeter"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
