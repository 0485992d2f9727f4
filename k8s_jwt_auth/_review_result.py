"""What a TokenReview answer says: its `status` parsed strictly, what it means for a verified identity, and
the form answers are shared in.

* `TokenReviewResult` — the `status` of a TokenReview answer (`from_response` parses, `to_status` writes back);
* `rejected` — the `InvalidToken` a review that did not authenticate the token means (`expired`,
  `bad_audience` or `token_revoked`);
* `check_user` — the API server must have authenticated the same service account, pod and credential;
* `Entry`, `encode_entry`, `decode_entry` — an answer with the time it may be used until, as cached locally
  and in a shared store (compact JSON).

No I/O; the reviewer that asks the API server is `k8s_jwt_auth.tokenreview.TokenReviewer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import InvalidToken, Reason, TokenReviewUnavailable
from .identity import WorkloadIdentity

__all__ = [
    "EXTRA_CREDENTIAL_ID",
    "EXTRA_NODE_NAME",
    "EXTRA_NODE_UID",
    "EXTRA_POD_NAME",
    "EXTRA_POD_UID",
    "Entry",
    "TokenReviewResult",
    "check_user",
    "decode_entry",
    "encode_entry",
    "rejected",
]

EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
MAX_ERROR_TEXT = 300  # the API server's error text is cut to this many characters in messages
_GO_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')  # a string as Go's %q prints it: names, audiences

_EMPTY_EXTRA: Mapping[str, tuple[str, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenReviewResult:
    """The `status` of a TokenReview answer: what the API server says about a token.

    Attributes:
        authenticated: whether the API server authenticated the token (absent in failed reviews: `False`).
        username: `status.user.username`, e.g. `system:serviceaccount:payments:api` (`None` when absent).
        uid: `status.user.uid`, the service account's UID.
        groups: `status.user.groups`.
        extra: `status.user.extra`, read-only: key → values, e.g. `authentication.kubernetes.io/pod-uid`.
        audiences: `status.audiences`: the configured audiences the token is valid for.
        error: `status.error`, the API server's reason for not authenticating the token.
    """

    authenticated: bool
    username: str | None = None
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY_EXTRA, hash=False)
    audiences: tuple[str, ...] = ()
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "audiences", tuple(self.audiences))
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType({k: tuple(v) for k, v in self.extra.items()}))

    @classmethod
    def from_response(cls, doc: object) -> TokenReviewResult:
        """Parse a TokenReview response document (the decoded JSON), strictly.

        Raises:
            TokenReviewUnavailable: (`review_unavailable`) when the document is not a TokenReview with a
                well-typed `status` (e.g. an authenticated review without a username).
        """
        if not isinstance(doc, dict):
            raise _malformed("it is not a JSON object")
        kind = doc.get("kind")
        if kind is not None and kind != "TokenReview":
            # only a string is shown: str() of a deeply nested value or a huge integer raises
            shown = repr(kind[:40]) if isinstance(kind, str) else f"a {type(kind).__name__}"
            raise _malformed(f"its kind is {shown}, not 'TokenReview'")
        status = doc.get("status")
        if not isinstance(status, dict):
            raise _malformed("it has no status object")
        authenticated = status.get("authenticated", False)
        if not isinstance(authenticated, bool):
            raise _malformed("status.authenticated is not a boolean")
        user = status.get("user", {})
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise _malformed("status.user is not an object")
        username = _string(user, "username", "status.user")
        if authenticated and not username:
            raise _malformed("it says authenticated but names no status.user.username")
        return cls(
            authenticated=authenticated,
            username=username,
            uid=_string(user, "uid", "status.user"),
            groups=_strings(user.get("groups"), "status.user.groups"),
            extra=_extra(user.get("extra")),
            audiences=_strings(status.get("audiences"), "status.audiences"),
            error=_string(status, "error", "status"),
        )

    def to_status(self) -> dict[str, object]:
        """The `status` object in the API server's shape (absent fields left out); `from_response` reads it back."""
        user: dict[str, object] = {}
        for name, value in (("username", self.username), ("uid", self.uid)):
            if value is not None:
                user[name] = value
        if self.groups:
            user["groups"] = list(self.groups)
        if self.extra:
            user["extra"] = {k: list(v) for k, v in self.extra.items()}
        status: dict[str, object] = {"user": user}
        if self.authenticated:
            status["authenticated"] = True
        if self.audiences:
            status["audiences"] = list(self.audiences)
        if self.error is not None:
            status["error"] = self.error
        return status

    def _extra_value(self, key: str) -> str | None:
        values = self.extra.get(key, ())
        return values[0] if len(values) == 1 else None

    @property
    def pod_name(self) -> str | None:
        """The `authentication.kubernetes.io/pod-name` extra (pod-bound tokens)."""
        return self._extra_value(EXTRA_POD_NAME)

    @property
    def pod_uid(self) -> str | None:
        """The `authentication.kubernetes.io/pod-uid` extra."""
        return self._extra_value(EXTRA_POD_UID)

    @property
    def node_name(self) -> str | None:
        """The `authentication.kubernetes.io/node-name` extra."""
        return self._extra_value(EXTRA_NODE_NAME)

    @property
    def node_uid(self) -> str | None:
        """The `authentication.kubernetes.io/node-uid` extra."""
        return self._extra_value(EXTRA_NODE_UID)

    @property
    def token_id(self) -> str | None:
        """The token's `jti`, from the `authentication.kubernetes.io/credential-id` extra (`JTI=<jti>`)."""
        credential = self._extra_value(EXTRA_CREDENTIAL_ID)
        return credential[4:] if credential is not None and credential.startswith("JTI=") else None


def _malformed(detail: str) -> TokenReviewUnavailable:
    return TokenReviewUnavailable(f"the API server's TokenReview answer is malformed: {detail}", retry_after=5)


def _string(doc: dict[str, object], name: str, where: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise _malformed(f"{where}.{name} is not a string")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _malformed(f"{where} is not a list of strings")
    return tuple(value)


def _extra(value: object) -> Mapping[str, tuple[str, ...]]:
    if value is None:
        return _EMPTY_EXTRA
    if not isinstance(value, dict):
        raise _malformed("status.user.extra is not an object")
    return MappingProxyType({str(k): _strings(v, "status.user.extra values") for k, v in value.items()})


@dataclass(frozen=True, slots=True)
class Entry:
    """A review's answer and the clock time after which it is not used."""

    result: TokenReviewResult
    until: float  # clock time after which the answer is not used



def rejected(error: str | None, token: str) -> InvalidToken:
    """The refusal for a review's `status.error`: `expired` or `bad_audience` when the API server's own words
    say so, otherwise `token_revoked` (deleted or re-created pod, secret or service account, bad signature ...).

    The words are looked for outside the quoted names and audiences the text may hold (Go's `%q`), so a
    service account named `audience-gateway` (`serviceaccounts "audience-gateway" not found`) or an audience
    `"has expired"` cannot change the reason.
    """
    text = (error or "no reason given").replace(token, "<token>")
    text = "".join(c if c.isprintable() else "?" for c in text)
    words = _GO_QUOTED.sub('""', text).lower()
    reason: Reason = "token_revoked"
    claim: str | None = None
    if "has expired" in words or "token is expired" in words:
        reason, claim = "expired", "exp"
    elif "audience" in words:
        reason, claim = "bad_audience", "aud"
    return InvalidToken(f"the API server did not authenticate the token: {text[:MAX_ERROR_TEXT]}", reason=reason,
                        claim=claim)


def check_user(result: TokenReviewResult, identity: WorkloadIdentity) -> None:
    """The API server must have authenticated the same service account, pod and credential we verified."""
    if result.username != identity.username:
        raise InvalidToken(f"the API server authenticated the token as {result.username!r}, not as "
                           f"{identity.username!r}", reason="claim_mismatch", claim="sub")
    pairs = (("pod UID", result.pod_uid, identity.pod_uid, "kubernetes.io.pod.uid"),
             ("credential id", result.token_id, identity.token_id, "jti"))
    for what, reviewed, local, claim in pairs:
        if reviewed is not None and local is not None and reviewed != local:
            raise InvalidToken(f"the API server's {what} ({reviewed!r}) differs from the token's ({local!r})",
                               reason="claim_mismatch", claim=claim)


def encode_entry(entry: Entry) -> bytes:
    """The shared-store value: version, until when it may be used, and the status (as the API server's)."""
    return json.dumps({"v": 1, "t": entry.until, "s": entry.result.to_status()}, separators=(",", ":")).encode()


def decode_entry(value: bytes, now: float) -> Entry | None:
    """A shared-store value back as an entry; `None` when unreadable or no longer usable."""
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None
    until = doc.get("t")
    if isinstance(until, bool) or not isinstance(until, (int, float)) or until <= now:
        return None
    try:
        return Entry(TokenReviewResult.from_response({"status": doc.get("s")}), float(until))
    except TokenReviewUnavailable:
        return None
