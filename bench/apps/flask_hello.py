"""Hello-world Flask app for the HTTP overhead benchmark; `BENCH_AUTH=1` adds our extension (enforcing)."""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "hello"


if os.environ.get("BENCH_AUTH") == "1":
    from k8s_jwt_auth import VerifierConfig
    from k8s_jwt_auth.integrations.flask import K8sJWTAuth

    app.config["K8S_JWT_AUTH_ENFORCE"] = True  # authenticate every request, as the middleware does
    K8sJWTAuth(app, verifier=VerifierConfig.from_env())
