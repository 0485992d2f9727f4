"""`VerifierConfig`: the validated, frozen settings a `TokenVerifier` is built from.

Every source of settings (keyword arguments, environment variables, Flask `app.config`, the Django
`K8S_JWT_AUTH` dict, CLI flags) ends up here, through one parser of the setting *suffixes*:

| suffix | field | form |
| --- | --- | --- |
| `ISSUER` | `issuer` | string; an https URL when keys come from discovery |
| `AUDIENCES` | `audiences` | comma-separated or list |
| `JWKS_URI` | `jwks_uri` | URL; skips discovery |
| `JWKS_FILE` | `jwks_file` | path to a JWKS document |
| `PUBLIC_KEYS_FILE` | `public_keys` | path to PEM public keys (one or more) |
| `CA_FILE` | `ca_file` | path to a PEM CA bundle for fetches |
| `TOKEN_FILE` | `token_file` | bearer token for discovery/JWKS fetches |
| `ALLOW` | `allow` | policy rules, comma-separated (`payments/*,!kube-system/*`) |
| `DRY_RUN` | `dry_run` | bool: evaluate policy, never deny |
| `ALGORITHMS` | `algorithms` | comma-separated subset of RS256, ES256, ES384, ES512 |
| `LEEWAY` | `leeway` | seconds |
| `MAX_TOKEN_AGE` | `max_token_age` | seconds |
| `MAX_TOKEN_SIZE` | `max_token_size` | bytes |
| `ALLOW_LEGACY_TOKENS` | `allow_legacy_tokens` | bool |
| `REQUIRE_POD_BINDING` | `require_pod_binding` | bool |
| `TRUST_DOMAIN` | `trust_domain` | string |
| `TIMEOUT` | `timeout` | seconds for each socket operation; 2 × for a whole HTTP exchange |
| `CONNECT_TIMEOUT` | `connect_timeout` | seconds for connecting to the issuer or API server (at most `TIMEOUT`) |
| `CACHE_MAX_AGE` | `cache_max_age` | seconds |
| `COOLDOWN` | `cooldown` | seconds |
| `MAX_STALE` | `max_stale` | seconds |
| `ALLOW_INSECURE_HTTP` | `allow_insecure_http` | bool |
| `MAX_KEYS` | `max_keys` | keys accepted in one JWKS document (default 100; a larger document is refused) |
| `TOKEN_CACHE_SIZE` | `token_cache_size` | verified tokens kept (0: no cache) |
| `TOKEN_CACHE_TTL` | `token_cache_ttl` | seconds a verified token is reused at most |
| `CLUSTER` | `cluster` | a name for the cluster, recorded on identities |
| `TOKENREVIEW` | `tokenreview` | bool: confirm every token with the API server's TokenReview |
| `TOKENREVIEW_URL` | `tokenreview_url` | the API server URL (default `https://kubernetes.default.svc`) |
| `TOKENREVIEW_CACHE_TTL` | `tokenreview_cache_ttl` | seconds a TokenReview answer is reused at most |
| `TOKENREVIEW_FALLBACK` | `tokenreview_fallback` | bool: API server unreachable → local verification only |
| `REDIS_URL` | `redis_url` | `redis://`, `rediss://` or `unix://` URL of a shared cache |
| `CACHE_SECRET` | `cache_secret` | secret (>= 32 characters) that authenticates shared-cache entries |
| `REDIS_PREFIX` | `redis_prefix` | key prefix in Redis (default `k8s-jwt-auth:`) |
| `REDIS_TIMEOUT` | `redis_timeout` | seconds a Redis call may take before it is skipped |
| `REDIS_SHARE_TOKENS` | `redis_share_tokens` | bool: share verified tokens too, not only key sets and reviews (off) |
| `SHARED_KEYS_MAX_AGE` | `shared_keys_max_age` | seconds: a key set in Redis older than this is not taken |
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._validate import seconds, url_problem, whole_number
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ENV_PREFIX",
    "SETTINGS",
    "SUPPORTED_ALGORITHMS",
    "VerifierConfig",
    "parse_bool",
    "parse_list",
]

ENV_PREFIX = "K8S_JWT_AUTH_"
SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256", "ES384", "ES512"})
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "ES384", "ES512")
LEGACY_ISSUER = "kubernetes/serviceaccount"
DEFAULT_API_SERVER = "https://kubernetes.default.svc"
MIN_CACHE_SECRET = 32

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class VerifierConfig:
    """Validated settings for a `TokenVerifier`. Frozen; build a new one to change anything.

    Sequence settings (`audiences`, `allow`, `algorithms`, `public_keys`) accept a string or any sequence
    of strings and are stored as tuples (a string is split on commas; one PEM string is one entry).

    Exactly one key source may be given: `jwks` (a JWKS document), `jwks_file`, `public_keys` (PEM
    strings) or `jwks_uri`. With none of them, keys come from the issuer's OIDC discovery document.

    Raises:
        ConfigurationError: (`reason="invalid_config"`) with a hint on how to fix the value.
    """

    issuer: str
    audiences: Sequence[str]
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)
    jwks_file: str | None = None
    public_keys: Sequence[str] = field(default=(), repr=False)
    jwks_uri: str | None = None
    ca_file: str | None = None
    token_file: str | None = None
    allow: Sequence[str] = ()
    dry_run: bool = False
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    leeway: float = 60.0
    max_token_age: float | None = None
    max_token_size: int = 16 * 1024
    allow_legacy_tokens: bool = False
    require_pod_binding: bool = False
    trust_domain: str = "cluster.local"
    timeout: float = 5.0
    connect_timeout: float = 2.0
    cache_max_age: float = 600.0
    cooldown: float = 30.0
    max_stale: float = 3600.0
    allow_insecure_http: bool = False
    max_response_size: int = 1024 * 1024
    max_keys: int = 100
    token_cache_size: int = 10_000
    token_cache_ttl: float = 300.0
    cluster: str | None = None
    tokenreview: bool = False
    tokenreview_url: str = DEFAULT_API_SERVER
    tokenreview_cache_ttl: float = 5.0
    tokenreview_fallback: bool = False
    redis_url: str | None = field(default=None, repr=False)
    cache_secret: str | None = field(default=None, repr=False)
    redis_prefix: str = "k8s-jwt-auth:"
    redis_timeout: float = 0.1
    redis_share_tokens: bool = False
    shared_keys_max_age: float = 60.0

    def __post_init__(self) -> None:
        self._normalise()
        self._check_issuer()
        self._check_audiences()
        self._check_key_source()
        self._check_algorithms()
        self._check_trust_domain()
        self._check_cluster()
        self._check_tokenreview()
        self._check_redis()
        from .policy import Policy  # policy imports nothing from here; local import avoids a cycle

        try:
            Policy.parse(self.allow, dry_run=self.dry_run)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.message, setting="ALLOW") from exc

    # -- normalisation / validation ---------------------------------------------------------------

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _normalise(self) -> None:
        self._set("audiences", _str_tuple(self.audiences, "audiences"))
        self._set("allow", _str_tuple(self.allow, "allow", split_spaces=True))
        self._set("algorithms", tuple(a.upper() for a in _str_tuple(self.algorithms, "algorithms")))
        pems = (self.public_keys,) if isinstance(self.public_keys, str) else self.public_keys
        self._set("public_keys", _str_tuple(pems, "public_keys"))
        for name in _SECONDS:
            self._set(name, _number(getattr(self, name), name, positive=name in _POSITIVE_SECONDS))
        if self.max_token_age is not None:
            self._set("max_token_age", _number(self.max_token_age, "max_token_age", positive=True))
        for name, minimum in _WHOLE_NUMBERS.items():
            self._set(name, whole_number(getattr(self, name), name, minimum=minimum,
                                         setting=_FIELD_SUFFIXES.get(name)))

    def _check_issuer(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer.strip():
            raise _invalid("issuer", "issuer is required: set it to the cluster's --service-account-issuer "
                                     "(e.g. https://kubernetes.default.svc.cluster.local)")
        if self.issuer != self.issuer.strip():
            raise _invalid("issuer", "issuer has leading or trailing whitespace; iss is compared exactly")
        if self.uses_discovery:
            self._check_url(self.issuer, "issuer")

    def _check_audiences(self) -> None:
        if not self.audiences or any(not a.strip() for a in self.audiences):
            raise _invalid("audiences", "audiences must list at least one non-empty audience: the value callers "
                                     "request with `serviceAccountToken.audience` (e.g. payments-api)")

    def _check_key_source(self) -> None:
        given = [n for n in ("jwks", "jwks_file", "public_keys", "jwks_uri") if getattr(self, n) not in (None, ())]
        if len(given) > 1:
            raise ConfigurationError(f"give only one key source, not {' and '.join(given)}")
        if self.jwks_uri:
            self._check_url(self.jwks_uri, "jwks_uri")
        for name in ("jwks_file", "ca_file", "token_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise _invalid(name, f"{name} {path!r} does not exist or is not a file")

    def _check_trust_domain(self) -> None:
        if not isinstance(self.trust_domain, str) or not re.fullmatch(r"[a-z0-9.\-_]+", self.trust_domain):
            raise _invalid("trust_domain", f"trust_domain {self.trust_domain!r} must be a DNS-like name such as "
                                     "cluster.local (lowercase letters, digits, '.', '-', '_')")

    def _check_algorithms(self) -> None:
        bad = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if bad or not self.algorithms:
            raise _invalid("algorithms", f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}; "
                                     f"not allowed: {bad} (symmetric and 'none' algorithms are never accepted)")


    def _check_cluster(self) -> None:
        if self.cluster is not None and (not isinstance(self.cluster, str) or not self.cluster.strip()):
            raise _invalid("cluster", "cluster must be a non-empty name such as prod-eu-1")

    def _check_tokenreview(self) -> None:
        if self.tokenreview:
            self._check_url(self.tokenreview_url, "tokenreview_url")

    def _check_redis(self) -> None:
        if self.redis_url is None:
            return
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise _invalid("redis_url", "redis_url must be a redis://, rediss:// or unix:// URL")
        if not self.cache_secret or len(self.cache_secret) < MIN_CACHE_SECRET:
            raise _invalid("cache_secret", f"a shared cache needs cache_secret, at least {MIN_CACHE_SECRET} random "
                           "characters shared by every replica (e.g. `openssl rand -hex 32`): entries are "
                           "authenticated with it so that write access to Redis cannot mint identities")
        if not isinstance(self.redis_prefix, str) or not self.redis_prefix:
            raise _invalid("redis_prefix", "redis_prefix must be a non-empty string such as k8s-jwt-auth:")

    def _check_url(self, url: str, name: str) -> None:
        problem = url_problem(url, self.allow_insecure_http)  # the rule every fetcher applies
        if problem is not None:
            raise _invalid(name, f"{name} {problem}")

    # -- derived values ---------------------------------------------------------------------------

    @property
    def uses_discovery(self) -> bool:
        """Whether keys come from `{issuer}/.well-known/openid-configuration`."""
        return self.jwks is None and not (self.jwks_file or self.public_keys or self.jwks_uri)

    @property
    def accepted_issuers(self) -> frozenset[str]:
        """The `iss` values accepted: the issuer, plus the legacy one when legacy tokens are allowed."""
        if self.allow_legacy_tokens:
            return frozenset({self.issuer, LEGACY_ISSUER})
        return frozenset({self.issuer})

    # -- alternate constructors -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, prefix: str = "", **overrides: Any) -> VerifierConfig:
        """Build a config from setting suffixes (`ISSUER`, `AUDIENCES`, ...), each under `prefix`.

        Values may be strings (as in the environment) or native values (lists, numbers, bools); `None` means
        "not set" (the default applies), as for every adapter option. Unknown keys under the prefix are rejected
        so that typos do not go unnoticed.
        `overrides` are field values that win over the mapping.
        """
        kwargs: dict[str, Any] = {}
        known = _SUFFIXES.keys()
        for key, value in mapping.items():
            if not key.startswith(prefix):
                continue
            suffix = key[len(prefix):]
            if suffix not in known:
                hint = f"; known settings: {', '.join(sorted(known))}"
                raise ConfigurationError(f"unknown setting {key!r}{hint}")
            if value is None:
                continue  # not set: the field's default
            name, parse = _SUFFIXES[suffix]
            try:
                kwargs[name] = parse(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{key}: {exc.message}", setting=suffix) from exc
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"{key}: {exc}", setting=suffix) from exc
            except OSError as exc:
                message = f"{key}: cannot read {exc.filename!r}: {exc.strerror}"
                raise ConfigurationError(message, setting=suffix) from exc
        kwargs.update(overrides)
        missing = [s for s in ("ISSUER", "AUDIENCES") if _SUFFIXES[s][0] not in kwargs]
        if missing:
            raise ConfigurationError(f"missing required setting(s): {', '.join(prefix + m for m in missing)}",
                                     setting=missing[0])
        try:
            return cls(**kwargs)
        except ConfigurationError as exc:  # name the key as the source spells it
            if exc.setting is None:
                raise
            raise ConfigurationError(f"{prefix}{exc.setting}: {exc.message}", setting=exc.setting) from exc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> VerifierConfig:
        """Build a config from `K8S_JWT_AUTH_*` environment variables (see the module table)."""
        env = os.environ if environ is None else environ
        return cls.from_mapping({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)},
                                prefix=ENV_PREFIX, **overrides)

    @classmethod
    def in_cluster(
        cls,
        *,
        audiences: str | Sequence[str],
        issuer: str | None = None,
        mount: str = "/var/run/secrets/kubernetes.io/serviceaccount",
        **overrides: Any,
    ) -> VerifierConfig:
        """Configuration for a service running in a pod.

        The issuer is read from the pod's own mounted token (unless given), the cluster CA from the
        service-account mount and the pod's own token is sent on discovery and JWKS fetches. The
        service account needs the `system:service-account-issuer-discovery` ClusterRole.
        """
        from ._jws import unverified_claims  # local import: keeps config free of parsing at import

        token_file = os.path.join(mount, "token")
        ca_file = os.path.join(mount, "ca.crt")
        if issuer is None:
            try:
                with open(token_file, encoding="ascii") as fh:
                    issuer = str(unverified_claims(fh.read().strip()).get("iss", ""))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"cannot read the issuer from {token_file}: {exc}; "
                                         "pass issuer= or mount the service-account token") from exc
        kwargs: dict[str, Any] = {"issuer": issuer, "audiences": audiences, "token_file": token_file}
        if os.path.isfile(ca_file):
            kwargs["ca_file"] = ca_file
        kwargs.update(overrides)
        return cls(**kwargs)


# -- the one parser of setting suffixes ------------------------------------------------------------


def _invalid(field_name: str, message: str) -> ConfigurationError:
    """A `ConfigurationError` about one field, carrying the setting suffix that sets it."""
    return ConfigurationError(message, setting=_FIELD_SUFFIXES.get(field_name))


def _str_tuple(value: object, name: str, *, split_spaces: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.replace("\n", ",")
        parts = text.replace(",", " ").split() if split_spaces else text.split(",")
        return tuple(p.strip() for p in parts if p.strip())
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)  # no order of their own: make it deterministic
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value)
    raise _invalid(name, f"{name} must be a string or a list of strings, not {type(value).__name__}")


def _number(value: object, name: str, *, positive: bool = False) -> float:
    return seconds(value, name, positive=positive, setting=_FIELD_SUFFIXES.get(name))


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (true/false), not {value!r}")


def _opt_str(value: object) -> str | None:
    text = str(value).strip()
    return text or None


def _read_pems(value: object) -> tuple[str, ...]:
    paths = _str_tuple(value, "PUBLIC_KEYS_FILE")
    pems = []
    for path in paths:
        with open(path, encoding="ascii") as fh:
            pems.append(fh.read())
    return tuple(pems)


def _identity(value: _T) -> _T:
    return value


def _float_or_none(value: object) -> float | None:
    return None if value in (None, "") else _number(value, "MAX_TOKEN_AGE")


_SECONDS = ("leeway", "timeout", "connect_timeout", "cache_max_age", "cooldown", "max_stale", "token_cache_ttl",
            "tokenreview_cache_ttl", "redis_timeout", "shared_keys_max_age")
_POSITIVE_SECONDS = frozenset({"timeout", "connect_timeout", "redis_timeout"})  # no time limit can hang a call
# integer settings and their smallest sensible value (a token cache of size 0 is off)
_WHOLE_NUMBERS = {"max_token_size": 256, "max_response_size": 1024, "max_keys": 1, "token_cache_size": 0}

_SUFFIXES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ISSUER": ("issuer", _identity),
    "AUDIENCES": ("audiences", _identity),
    "JWKS_URI": ("jwks_uri", _opt_str),
    "JWKS_FILE": ("jwks_file", _opt_str),
    "PUBLIC_KEYS_FILE": ("public_keys", _read_pems),
    "CA_FILE": ("ca_file", _opt_str),
    "TOKEN_FILE": ("token_file", _opt_str),
    "ALLOW": ("allow", _identity),
    "DRY_RUN": ("dry_run", _bool),
    "ALGORITHMS": ("algorithms", _identity),
    "LEEWAY": ("leeway", _identity),
    "MAX_TOKEN_AGE": ("max_token_age", _float_or_none),
    "MAX_TOKEN_SIZE": ("max_token_size", _identity),  # whole_number() parses and checks
    "ALLOW_LEGACY_TOKENS": ("allow_legacy_tokens", _bool),
    "REQUIRE_POD_BINDING": ("require_pod_binding", _bool),
    "TRUST_DOMAIN": ("trust_domain", _identity),
    "TIMEOUT": ("timeout", _identity),
    "CONNECT_TIMEOUT": ("connect_timeout", _identity),
    "CACHE_MAX_AGE": ("cache_max_age", _identity),
    "COOLDOWN": ("cooldown", _identity),
    "MAX_STALE": ("max_stale", _identity),
    "ALLOW_INSECURE_HTTP": ("allow_insecure_http", _bool),
    "TOKEN_CACHE_SIZE": ("token_cache_size", _identity),
    "MAX_KEYS": ("max_keys", _identity),
    "TOKEN_CACHE_TTL": ("token_cache_ttl", _identity),
    "CLUSTER": ("cluster", _opt_str),
    "TOKENREVIEW": ("tokenreview", _bool),
    "TOKENREVIEW_URL": ("tokenreview_url", _identity),
    "TOKENREVIEW_CACHE_TTL": ("tokenreview_cache_ttl", _identity),
    "TOKENREVIEW_FALLBACK": ("tokenreview_fallback", _bool),
    "REDIS_URL": ("redis_url", _opt_str),
    "CACHE_SECRET": ("cache_secret", _opt_str),
    "REDIS_PREFIX": ("redis_prefix", _identity),
    "REDIS_TIMEOUT": ("redis_timeout", _identity),
    "REDIS_SHARE_TOKENS": ("redis_share_tokens", _bool),
    "SHARED_KEYS_MAX_AGE": ("shared_keys_max_age", _identity),
}
assert {n for n, _ in _SUFFIXES.values()} <= {f.name for f in fields(VerifierConfig)}

#: Setting suffix -> `VerifierConfig` field, for every setting the suffix parser knows.
SETTINGS: Mapping[str, str] = MappingProxyType({suffix: name for suffix, (name, _) in _SUFFIXES.items()})
_FIELD_SUFFIXES = {name: suffix for suffix, name in SETTINGS.items()}

parse_bool = _bool
parse_list = _str_tuple
