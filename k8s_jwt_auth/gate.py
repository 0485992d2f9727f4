"""`Gate`: the one request pipeline every adapter uses — credentials → verify → policy → one audit record → outcome.

An adapter only reads the request and writes the response:

```python
gate = Gate(verifier, logger=logging.getLogger("my_adapter"))

outcome = await gate.aadmit(headers.get_all("authorization"), path=path, method=method)   # or gate.admit(...)
if outcome.error is not None:
    rendered = outcome.response(realm)        # status, headers (WWW-Authenticate / Retry-After), JSON body
    ...                                       # copy it into the framework's response
else:
    ...                                       # outcome.workload: a WorkloadIdentity, or None (anonymous)
```

Every decision writes exactly one audit record (`k8s_jwt_auth.audit`) and one line on the adapter's logger. Two
admissions decide nothing and write none: an anonymous one (optional mode, no credentials) and one with
`policy=AUTHENTICATE_ONLY` (the layer that applies the route's rules writes it). Refusals are
returned, never raised: a 401 (`InvalidToken`), 403 (`PolicyDenied`) or 503 (`ServiceUnavailable`) is an
outcome to render. Anything else raised from inside is a bug and propagates.

The policy model, the same in every framework (docs/policy-model.md):

* an **enforcing layer** (ASGI/WSGI middleware, Flask `ENFORCE`, Django middleware, gRPC interceptor) calls
  `admit` with the service policy for every non-exempt request;
* a **route layer** (FastAPI dependency, Flask and Django decorators, DRF classes) calls `admit` with its own
  rules when it has some, otherwise with the service policy; on a request an enforcing layer already admitted it
  calls `authorize` with its own rules (no second verification), or nothing without rules;
* when both run, both must allow; when one route has several route-layer gates, the ones without rules use
  `AUTHENTICATE_ONLY` so that the service policy never overrides the route's own rules.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from .audit import audit_allowed, audit_refused, fingerprint, printable
from .errors import AuthError, InvalidToken, ServiceUnavailable
from .http import ErrorResponse, bearer_token, error_response, missing_token
from .identity import WorkloadIdentity
from .policy import Decision, Policy
from .verifier import TokenVerifier

__all__ = ["AUTHENTICATE_ONLY", "Credentials", "Gate", "IdentityMemo", "Outcome", "bearer_credentials", "refuse"]

Credentials = str | bytes | Sequence[str | bytes] | None
"""What an adapter read: the credentials header's value, every value of a repeated header, or `None`."""

AUTHENTICATE_ONLY: Final = Policy(())
"""Pass as `policy=` to verify without applying a policy or writing an `allowed` record (refusals are still
recorded): for a route-layer gate whose route has another gate with rules of its own."""

_LOGGER = logging.getLogger("k8s_jwt_auth.gate")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a gate decided for one request. Never holds the token.

    Attributes:
        workload: the verified identity; `None` when refused, or admitted anonymously (optional mode).
        error: the refusal to render (`InvalidToken` 401, `PolicyDenied` 403, `ServiceUnavailable` 503), or `None`.
        decision: the policy decision, when a policy with rules was applied.
    """

    workload: WorkloadIdentity | None = None
    error: AuthError | None = None
    decision: Decision | None = None

    @property
    def admitted(self) -> bool:
        """Whether the request goes on (with `workload`, or anonymously)."""
        return self.error is None

    def response(self, realm: str | None = None) -> ErrorResponse:
        """The refusal as status, headers and JSON body (see `k8s_jwt_auth.http.error_response`).

        Raises:
            ValueError: the request was admitted.
        """
        if self.error is None:
            raise ValueError("an admitted request has no error response")
        return error_response(self.error, realm)


_ANONYMOUS: Final = Outcome()
_V = TypeVar("_V")


class IdentityMemo(Generic[_V]):
    """Values derived from a verified identity (and one more object, e.g. a policy), remembered by object identity.

    A cached token verifies to the same immutable `WorkloadIdentity` object, so a repeat caller reuses what was
    derived from it (a policy decision, Starlette's auth scopes). Each entry holds its identity and key, so no `id`
    is reused while it is remembered; at most `maxsize` entries (all dropped when full); thread-safe (single dict
    operations).
    """

    __slots__ = ("_entries", "_maxsize")

    def __init__(self, maxsize: int = 1024) -> None:
        self._entries: dict[tuple[int, int], tuple[WorkloadIdentity, object, _V]] = {}
        self._maxsize = maxsize

    def get(self, workload: WorkloadIdentity, key: object = None) -> _V | None:
        """The value remembered for this very identity object and key, or `None`."""
        hit = self._entries.get((id(workload), id(key)))
        return hit[2] if hit is not None and hit[0] is workload and hit[1] is key else None

    def put(self, workload: WorkloadIdentity, value: _V, key: object = None) -> _V:
        """Remember `value` for this identity object and key; returns it."""
        if len(self._entries) >= self._maxsize:
            self._entries.clear()
        self._entries[(id(workload), id(key))] = (workload, key, value)
        return value


def bearer_credentials(credentials: Credentials) -> str | None:
    """The bearer token in what an adapter read; `None` when there are no bearer credentials.

    Raises:
        InvalidToken: `malformed` (not `Bearer <token>`, or the header is repeated), `too_large`.
    """
    if credentials is None or isinstance(credentials, (str, bytes)):
        return bearer_token(credentials)
    if len(credentials) > 1:
        raise InvalidToken("the request has more than one credentials header", reason="malformed")
    return bearer_token(credentials[0]) if credentials else None


class Gate:
    """Verify a request's credentials, apply a policy and write its audit record; return the outcome.

    Thread-safe and loop-agnostic (it holds no per-request state): build one per adapter instance at startup.

    Args:
        verifier: the shared verifier.
        policy: the service policy; default `verifier.policy` (`ALLOW`, `DRY_RUN`).
        logger: the adapter's logger (one line per decision, the token's fingerprint only).
    """

    __slots__ = ("_decided", "_hot", "logger", "policy", "verifier")

    def __init__(self, verifier: TokenVerifier, *, policy: Policy | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.verifier = verifier
        self.policy = policy if policy is not None else verifier.policy
        self.logger = logger if logger is not None else _LOGGER
        # admitted outcomes by (identity, policy): policies and identities are immutable, so a repeated caller
        # skips the policy evaluation
        self._decided: IdentityMemo[Outcome] = IdentityMemo()
        # a TokenVerifier's cached answer, asked first (one call for a repeat caller); a subclass that verifies its
        # own way (MultiClusterVerifier) is always asked through verify()
        self._hot: Callable[[str], WorkloadIdentity | None] = (
            verifier._hot if type(verifier).verify is TokenVerifier.verify else _not_cached)

    def __repr__(self) -> str:
        return f"Gate(policy={self.policy!r}, logger={self.logger.name!r})"

    def admit(self, credentials: Credentials, *, policy: Policy | None = None, optional: bool = False,
              path: str = "", method: str | None = None, transport: str = "http",
              check: Callable[[WorkloadIdentity], None] | None = None) -> Outcome:
        """Decide for one request (sync: key fetches block this thread, never an event loop).

        Args:
            credentials: the credentials header as read (see `Credentials`).
            policy: the rules to apply; default the service policy; `AUTHENTICATE_ONLY` for none.
            optional: admit requests without bearer credentials anonymously (a bad token is still refused).
            path: the request path (or gRPC method), for logs and the audit record.
            method: the HTTP method, if any.
            transport: `http`, `websocket`, `grpc`...
            check: a last step on the allowed workload (e.g. mapping it to a user); raises `AuthError` to refuse.

        Returns:
            The outcome; refusals are returned, not raised.
        """
        token = None
        try:
            # the usual request: one header value, a token the verifier's cache answers (one call each, no more)
            token = bearer_token(credentials) if type(credentials) is str else bearer_credentials(credentials)
            if token is None:
                return self._anonymous(optional)
            workload = self._hot(token)
            outcome = self._decide(self.verifier.verify(token) if workload is None else workload, policy)
            if check is not None:
                check(outcome.workload)  # type: ignore[arg-type]  # an admitted outcome has its workload
        except AuthError as exc:
            return self._refused(exc, token, path, method, transport)
        return self._admitted(outcome, policy, path, method, transport)

    async def aadmit(self, credentials: Credentials, *, policy: Policy | None = None, optional: bool = False,
                     path: str = "", method: str | None = None, transport: str = "http",
                     check: Callable[[WorkloadIdentity], Awaitable[None]] | None = None) -> Outcome:
        """`admit` for async code: key fetches never block the event loop. Same arguments, same outcomes."""
        token = None
        try:
            token = bearer_token(credentials) if type(credentials) is str else bearer_credentials(credentials)
            if token is None:
                return self._anonymous(optional)
            workload = self._hot(token)
            outcome = self._decide(await self.verifier.verify_async(token) if workload is None else workload, policy)
            if check is not None:
                await check(outcome.workload)  # type: ignore[arg-type]  # an admitted outcome has its workload
        except AuthError as exc:
            return self._refused(exc, token, path, method, transport)
        return self._admitted(outcome, policy, path, method, transport)

    def authorize(self, workload: WorkloadIdentity, *, policy: Policy | None = None, path: str = "",
                  method: str | None = None, transport: str = "http") -> Outcome:
        """Apply `policy` (default the service policy) to a workload an earlier layer verified: one audit record.

        Returns:
            The outcome, with `workload` when allowed.
        """
        try:
            outcome = self._decide(workload, policy)
        except AuthError as exc:
            return self._refused(exc, None, path, method, transport)
        return self._admitted(outcome, policy, path, method, transport)

    def refuse(self, error: AuthError, *, path: str = "", method: str | None = None,
               transport: str = "http") -> Outcome:
        """Record and return a refusal an adapter decided itself (e.g. a route that needs a workload got none)."""
        return refuse(error, logger=self.logger, path=path, method=method, transport=transport)

    # -- the shared steps ----------------------------------------------------------------------------------

    @staticmethod
    def _anonymous(optional: bool) -> Outcome:
        if not optional:
            raise missing_token()
        return _ANONYMOUS

    def _decide(self, workload: WorkloadIdentity, policy: Policy | None) -> Outcome:
        """Apply the policy: the admitted outcome; a dry-run policy logs a would-be denial instead of refusing.

        Raises:
            PolicyDenied: the policy denies the workload and is not in dry-run mode.
        """
        chosen = self.policy if policy is None else policy
        hit = self._decided.get(workload, chosen)
        if hit is not None:
            return hit
        if chosen.is_open:
            outcome = Outcome(workload)
        else:
            decision = chosen.enforce(workload)
            outcome = Outcome(workload, None, decision)
            if not decision.allowed:  # dry run: logged on every request, never cached
                self.logger.warning("policy dry run: %s would be %s (token %s)", workload.username,
                                    decision.explanation, workload.token_fingerprint or "-")
                return outcome
        return self._decided.put(workload, outcome, chosen)

    def _admitted(self, outcome: Outcome, policy: Policy | None, path: str, method: str | None,
                  transport: str) -> Outcome:
        if policy is not AUTHENTICATE_ONLY:
            workload: WorkloadIdentity = outcome.workload  # type: ignore[assignment]  # admitted: not None
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug("authenticated %s (token %s)", workload.username, workload.token_fingerprint)
            audit_allowed(workload, outcome.decision, path=path, method=method, transport=transport)
        return outcome

    def _refused(self, exc: AuthError, token: str | None, path: str, method: str | None,
                 transport: str) -> Outcome:
        return refuse(exc, logger=self.logger, token=token, path=path, method=method, transport=transport)


def _not_cached(token: str) -> None:
    return None


def refuse(error: AuthError, *, logger: logging.Logger, token: str | None = None, path: str = "",
           method: str | None = None, transport: str = "http") -> Outcome:
    """Log a refusal (fingerprint only), write its one audit record and return it as an outcome.

    `Gate` calls it for every refusal; an adapter with no verifier at hand (a request without credentials
    reaching a route that has none configured yet) calls it directly.
    """
    level = logging.WARNING if isinstance(error, ServiceUnavailable) else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(level, "rejected %s %s: %s %s: %s (token %s)", transport, printable(path) or "-", error.status_code,
                   error.reason, printable(error.message), fingerprint(token) if token else "-")
    audit_refused(error, token=token, path=path, method=method, transport=transport)
    return Outcome(None, error, None)
