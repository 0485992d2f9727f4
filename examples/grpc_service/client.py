"""The caller: calls the greeter with its projected service-account token, sent by `GrpcTokenInterceptor`.

```sh
python examples/grpc_service/client.py --target greeter.grpc-demo.svc.cluster.local:50051 \
    --token-path /var/run/secrets/tokens/greeter-token            # one call; prints the answer as JSON
python examples/grpc_service/client.py --every 30                   # a call every 30 s (the Deployment)
```

Defaults come from `GREETER_TARGET` and `TOKEN_PATH`. The token file is a projected `serviceAccountToken` volume
with `audience: greeter` (see `k8s/caller.yaml`); the interceptor reads it on every call (a `stat`, and a read
when the kubelet rotated it), so a long-lived channel always sends the current token.

Output, one JSON line per call: the greeter's answer, or `{"code": "PERMISSION_DENIED", "details":
"policy_denied: ..."}` when it refused. Exit status (one call): 0 when answered, 1 when refused or failed.

The channel is plaintext: inside a mesh that encrypts pod-to-pod traffic, or on loopback. Over TLS, use
`grpc_call_credentials(path)` in `grpc.composite_channel_credentials(...)` instead of the interceptor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import grpc

from k8s_jwt_auth.client import GrpcTokenInterceptor, TokenFileError

__all__ = ["DEFAULT_TARGET", "DEFAULT_TOKEN_PATH", "call", "main"]

DEFAULT_TARGET = "greeter.grpc-demo.svc.cluster.local:50051"
DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/greeter-token"
HELLO = "/demo.Greeter/Hello"


def call(channel: grpc.Channel, name: str, timeout: float = 5.0) -> dict[str, Any]:
    """One `Hello` call: the answer, or `{"code", "details"}` when the greeter refused or could not be reached."""
    hello = channel.unary_unary(HELLO, request_serializer=lambda m: json.dumps(m).encode(),
                                response_deserializer=json.loads)
    try:
        answer: dict[str, Any] = hello({"name": name}, timeout=timeout)
    except grpc.RpcError as exc:
        return {"code": exc.code().name, "details": exc.details()}
    except TokenFileError as exc:  # the message names the file and the fix, never the token
        return {"code": None, "details": str(exc)}
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("GREETER_TARGET", DEFAULT_TARGET))
    parser.add_argument("--token-path", default=os.environ.get("TOKEN_PATH", DEFAULT_TOKEN_PATH))
    parser.add_argument("--name", default="world")
    parser.add_argument("--every", type=float, default=None, help="call every N seconds, forever")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.target) as plain:
        channel = grpc.intercept_channel(plain, GrpcTokenInterceptor(args.token_path))
        while True:
            answer = call(channel, args.name)
            print(json.dumps(answer), flush=True)
            if args.every is None:
                return 1 if "code" in answer else 0
            time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
