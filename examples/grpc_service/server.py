"""The greeter: a gRPC service whose one method answers only the workloads `K8S_JWT_AUTH_ALLOW` lets in.

```sh
K8S_JWT_AUTH_ISSUER=https://kubernetes.default.svc.cluster.local \
K8S_JWT_AUTH_AUDIENCES=greeter \
K8S_JWT_AUTH_ALLOW=grpc-demo/caller \
python examples/grpc_service/server.py            # listens on [::]:50051 (GRPC_LISTEN to change it)
```

In the cluster (see `k8s/greeter.yaml`) it also sets `K8S_JWT_AUTH_JWKS_URI`, `K8S_JWT_AUTH_CA_FILE` and
`K8S_JWT_AUTH_TOKEN_FILE` so that it can fetch the issuer's keys with the pod's own token.

* `/demo.Greeter/Hello` — request `{"name": "..."}`, response `{"hello": "<namespace>/<service account>",
  "name": ..., "pod": ...}` for an allowed caller; `UNAUTHENTICATED` without a token or with a bad one (wrong
  audience, expired...), `PERMISSION_DENIED` for a workload the policy denies, `UNAVAILABLE` when the issuer's
  keys cannot be fetched. The status details are `<reason>: <message>` (`policy_denied: ...`).
* `/grpc.health.v1.Health/Check` and `/Watch` — the standard health service, without a token (kubelet's gRPC
  probes, `grpc_health_probe`).

The service has no `.proto` compiled into Python: its messages are JSON, through generic handlers. With generated
stubs, nothing changes on the authentication side: `add_GreeterServicer_to_server(servicer, server)` on a server
built with the same `interceptors=[K8sJWTAuthInterceptor(...)]`, and `current_workload()` in the servicer methods.
SIGTERM (what Kubernetes sends) marks the service NOT_SERVING and stops it gracefully.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from k8s_jwt_auth import TokenVerifier
from k8s_jwt_auth.integrations.grpc import K8sJWTAuthInterceptor, current_workload

__all__ = ["HELLO", "SERVICE", "create_server", "decode", "encode", "main"]

SERVICE = "demo.Greeter"
HELLO = f"/{SERVICE}/Hello"
GRACE = 5.0  # seconds in-flight calls get on SIGTERM


def encode(message: Any) -> bytes:
    """JSON messages: the example needs no protobuf code generation."""
    return json.dumps(message).encode()


def decode(data: bytes) -> Any:
    return json.loads(data) if data else {}


def hello(request: Any, context: grpc.ServicerContext) -> dict[str, Any]:
    """The protected method: the interceptor let this call in, so `current_workload()` is the verified caller."""
    workload = current_workload()
    name = request.get("name") if isinstance(request, dict) else None
    return {"hello": f"{workload.namespace}/{workload.service_account}", "name": name, "pod": workload.pod_name}


def create_server(verifier: TokenVerifier | None = None, *, listen: str = "[::]:50051",
                  workers: int = 8) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build the greeter (not started): the server, the port it bound and its health servicer.

    Without `verifier`, the interceptor builds one from the `K8S_JWT_AUTH_*` environment variables.

    Raises:
        ConfigurationError: when the environment does not describe a valid verifier.
    """
    server = grpc.server(futures.ThreadPoolExecutor(workers), interceptors=[K8sJWTAuthInterceptor(verifier)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Hello": grpc.unary_unary_rpc_method_handler(hello, request_deserializer=decode, response_serializer=encode),
    })])
    health_servicer = health.HealthServicer()
    health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    return server, port, health_servicer


def main() -> int:
    # k8s-jwt-auth prints nothing by itself: show its refusals (audit records) and key-fetch failures in the logs.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    listen = os.environ.get("GRPC_LISTEN", "[::]:50051")
    server, port, health_servicer = create_server(listen=listen)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    print(f"greeter listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stopping.wait()
    health_servicer.enter_graceful_shutdown()  # probes see NOT_SERVING while in-flight calls finish
    server.stop(GRACE).wait(GRACE + 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
