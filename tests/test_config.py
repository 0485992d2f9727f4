"""VerifierConfig: normalisation, validation with fix-it errors, and the one suffix parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8s_jwt_auth import ConfigurationError, TokenVerifier, VerifierConfig
from k8s_jwt_auth.testing import SigningKey

from .conftest import FIXTURES, REAL_ISSUER


def test_minimal_config_and_defaults() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences="payments-api")
    assert config.audiences == ("payments-api",)
    assert config.algorithms == ("RS256", "ES256", "ES384", "ES512")
    assert (config.leeway, config.timeout, config.cache_max_age, config.cooldown) == (60.0, 5.0, 600.0, 30.0)
    assert config.uses_discovery and not config.allow_legacy_tokens and not config.require_pod_binding
    assert config.accepted_issuers == frozenset({REAL_ISSUER})


def test_config_is_frozen_and_comparable() -> None:
    a = VerifierConfig(issuer=REAL_ISSUER, audiences=["x", "y"])
    with pytest.raises(AttributeError):
        a.issuer = "https://other"  # type: ignore[misc]
    assert a == VerifierConfig(issuer=REAL_ISSUER, audiences=("x", "y"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"issuer": "", "audiences": ["a"]}, "issuer is required"),
        ({"issuer": " https://x ", "audiences": ["a"]}, "whitespace"),
        ({"issuer": "http://kubernetes.default.svc", "audiences": ["a"]}, "https://"),
        ({"issuer": "kubernetes", "audiences": ["a"]}, "https://"),
        ({"issuer": REAL_ISSUER, "audiences": []}, "audiences"),
        ({"issuer": REAL_ISSUER, "audiences": [""]}, "audiences"),
        ({"issuer": REAL_ISSUER, "audiences": 5}, "audiences"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "algorithms": ["HS256"]}, "HS256"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "algorithms": ["none"]}, "NONE"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "algorithms": []}, "non-empty"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "leeway": -1}, "leeway"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "leeway": "soon"}, "leeway"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "timeout": 0}, "timeout"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "max_token_size": 10}, "max_token_size"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "jwks_file": "/nonexistent/jwks.json"}, "jwks_file"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "jwks_uri": "ftp://x/jwks"}, "jwks_uri"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "jwks_uri": "https://x/jwks",
          "jwks": {"keys": []}}, "only one key source"),
        ({"issuer": REAL_ISSUER, "audiences": ["a"], "allow": ["payments"]}, "NAMESPACE/SERVICEACCOUNT"),
    ],
)
def test_invalid_config_fails_at_construction(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig(**kwargs)  # type: ignore[arg-type]
    assert fragment in info.value.message
    assert info.value.reason == "invalid_config"
    assert isinstance(info.value, ValueError)


def test_loopback_http_is_allowed_and_other_http_needs_opt_in() -> None:
    assert VerifierConfig(issuer="http://127.0.0.1:8080", audiences="a").uses_discovery
    assert VerifierConfig(issuer="http://localhost:8080", audiences="a")
    assert VerifierConfig(issuer="http://[::1]:8080", audiences="a")
    assert VerifierConfig(issuer="http://issuer.lan", audiences="a", allow_insecure_http=True)


def test_static_issuer_need_not_be_a_url() -> None:
    config = VerifierConfig(issuer="my-cluster", audiences="a", jwks_file=str(FIXTURES / "jwks.json"))
    assert not config.uses_discovery


def test_static_key_set_with_no_usable_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        TokenVerifier(VerifierConfig(issuer=REAL_ISSUER, audiences="a", jwks={"keys": [{"kty": "oct", "k": "x"}]}))
    assert "no usable keys" in info.value.message


def test_public_keys_pem(tmp_path: Path) -> None:
    key = SigningKey.generate("ES256")
    config = VerifierConfig(issuer="https://x.test", audiences="test", public_keys=[key.public_pem()])
    from k8s_jwt_auth.testing import build_claims, sign

    token = sign(key, build_claims(issuer="https://x.test", now=1_800_000_000), {"alg": "ES256"})
    assert TokenVerifier(config, clock=lambda: 1_800_000_000).verify(token).namespace == "default"
    pem_file = tmp_path / "keys.pem"
    pem_file.write_text(key.public_pem() + SigningKey.generate("RS256").public_pem())
    env = {"K8S_JWT_AUTH_ISSUER": "https://x.test", "K8S_JWT_AUTH_AUDIENCES": "test",
           "K8S_JWT_AUTH_PUBLIC_KEYS_FILE": str(pem_file)}
    assert len(VerifierConfig.from_env(env).public_keys) == 1  # one file, two keys inside
    assert TokenVerifier(VerifierConfig.from_env(env), clock=lambda: 1_800_000_000).verify(token)


def test_from_env_reads_every_documented_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "K8S_JWT_AUTH_ISSUER": REAL_ISSUER,
        "K8S_JWT_AUTH_AUDIENCES": "payments-api, orders-api",
        "K8S_JWT_AUTH_JWKS_FILE": str(FIXTURES / "jwks.json"),
        "K8S_JWT_AUTH_CA_FILE": str(ca),
        "K8S_JWT_AUTH_ALLOW": "payments/*,!kube-system/*",
        "K8S_JWT_AUTH_LEEWAY": "30",
        "K8S_JWT_AUTH_ALGORITHMS": "RS256",
        "K8S_JWT_AUTH_REQUIRE_POD_BINDING": "true",
        "K8S_JWT_AUTH_MAX_TOKEN_AGE": "3600",
        "K8S_JWT_AUTH_DRY_RUN": "yes",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = VerifierConfig.from_env()
    assert config.audiences == ("payments-api", "orders-api")
    assert config.jwks_file == str(FIXTURES / "jwks.json") and config.ca_file == str(ca)
    assert config.allow == ("payments/*", "!kube-system/*")
    assert (config.leeway, config.algorithms, config.require_pod_binding) == (30.0, ("RS256",), True)
    assert (config.max_token_age, config.dry_run) == (3600.0, True)


def test_from_env_jwks_uri() -> None:
    config = VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                      "K8S_JWT_AUTH_JWKS_URI": "https://10.0.0.1:6443/openid/v1/jwks"})
    assert config.jwks_uri == "https://10.0.0.1:6443/openid/v1/jwks" and not config.uses_discovery


def test_from_env_missing_and_unknown_settings() -> None:
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env({"K8S_JWT_AUTH_AUDIENCES": "a"})
    assert "K8S_JWT_AUTH_ISSUER" in info.value.message
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                 "K8S_JWT_AUTH_LEEWAI": "5"})
    assert "K8S_JWT_AUTH_LEEWAI" in info.value.message
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                 "K8S_JWT_AUTH_REQUIRE_POD_BINDING": "perhaps"})
    assert "REQUIRE_POD_BINDING" in info.value.message


def test_from_mapping_takes_native_values_as_django_does() -> None:
    config = VerifierConfig.from_mapping({"ISSUER": REAL_ISSUER, "AUDIENCES": ["payments-api"],
                                          "ALLOW": ["payments/*"], "LEEWAY": 5, "DRY_RUN": True})
    assert (config.audiences, config.allow, config.leeway, config.dry_run) == (
        ("payments-api",), ("payments/*",), 5.0, True)


def test_from_mapping_with_prefix_ignores_other_keys_as_flask_config_does() -> None:
    config = VerifierConfig.from_mapping({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                          "SECRET_KEY": "unrelated"}, prefix="K8S_JWT_AUTH_")
    assert config.issuer == REAL_ISSUER


def test_secrets_stay_out_of_repr() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences="a", jwks={"keys": [{"kty": "RSA", "n": "SECRETN"}]})
    assert "SECRETN" not in repr(config)


def test_pem_keys_get_kube_apiserver_key_ids() -> None:
    """A PEM of the cluster's signing key verifies real tokens, whose kid is SHA-256 of the DER key."""
    import json

    from cryptography.hazmat.primitives import serialization

    from k8s_jwt_auth import VerificationKey

    from .conftest import REAL_NOW, real_token

    jwk = json.loads((FIXTURES / "jwks.json").read_text())["keys"][0]
    pem = VerificationKey.from_jwk(jwk).key.public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    config = VerifierConfig(issuer=REAL_ISSUER, audiences="payments-api", public_keys=pem)  # one string = one PEM
    identity = TokenVerifier(config, clock=lambda: REAL_NOW).verify(real_token("pub-pod-bound-1h"))
    assert identity.pod_name == "web-5c6b"


def test_allow_accepts_commas_and_spaces() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences="a", allow="payments/* orders/api,\n!kube-system/*")
    assert config.allow == ("payments/*", "orders/api", "!kube-system/*")


def test_empty_jwks_counts_as_a_key_source() -> None:
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig(issuer=REAL_ISSUER, audiences="a", jwks={}, jwks_file=str(FIXTURES / "jwks.json"))
    assert "only one key source" in info.value.message
    assert not VerifierConfig(issuer="not-a-url", audiences="a", jwks={}).uses_discovery


@pytest.mark.parametrize("domain", ["", "Cluster.Local", "a/b", "spiffe://x"])
def test_bad_trust_domain(domain: str) -> None:
    with pytest.raises(ConfigurationError):
        VerifierConfig(issuer=REAL_ISSUER, audiences="a", trust_domain=domain)


def test_setting_errors_name_the_setting() -> None:
    env = {"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a"}
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env({**env, "K8S_JWT_AUTH_MAX_TOKEN_AGE": "soon"})
    assert "MAX_TOKEN_AGE" in info.value.message
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env({**env, "K8S_JWT_AUTH_PUBLIC_KEYS_FILE": "/nonexistent/keys.pem"})
    assert "/nonexistent/keys.pem" in info.value.message


def test_any_sequence_of_strings_is_accepted() -> None:
    from collections import deque

    config = VerifierConfig(issuer=REAL_ISSUER, audiences=deque(["b", "a"]), allow=frozenset({"y/*", "x/*"}))
    assert config.audiences == ("b", "a") and config.allow == ("x/*", "y/*")


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [("K8S_JWT_AUTH_JWKS_URI", "ftp://x/jwks", "JWKS_URI"), ("K8S_JWT_AUTH_AUDIENCES", " , ", "AUDIENCES"),
     ("K8S_JWT_AUTH_LEEWAY", "-3", "LEEWAY"), ("K8S_JWT_AUTH_ALLOW", "payments", "ALLOW"),
     ("K8S_JWT_AUTH_ALGORITHMS", "HS256", "ALGORITHMS"), ("K8S_JWT_AUTH_TRUST_DOMAIN", "A/B", "TRUST_DOMAIN")],
)
def test_errors_name_the_key_as_the_source_spells_it(variable: str, value: str, setting: str) -> None:
    env = {"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a", variable: value}
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_env(env)
    assert info.value.setting == setting and info.value.message.startswith(f"{variable}: ")
    mapping = {"ISSUER": REAL_ISSUER, "AUDIENCES": "a", variable.removeprefix("K8S_JWT_AUTH_"): value}
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig.from_mapping(mapping)
    assert info.value.setting == setting and info.value.message.startswith(f"{setting}: ")


def test_public_settings_table_matches_the_fields() -> None:
    from k8s_jwt_auth.config import SETTINGS

    assert SETTINGS["JWKS_URI"] == "jwks_uri" and SETTINGS["TOKEN_CACHE_SIZE"] == "token_cache_size"
    assert all(hasattr(VerifierConfig(issuer=REAL_ISSUER, audiences="a"), name) for name in SETTINGS.values())


SECRET = "0123456789abcdef0123456789abcdef"


def test_from_env_reads_the_tokenreview_cluster_and_redis_settings() -> None:
    config = VerifierConfig.from_env({
        "K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
        "K8S_JWT_AUTH_CLUSTER": "prod-eu",
        "K8S_JWT_AUTH_TOKENREVIEW": "true", "K8S_JWT_AUTH_TOKENREVIEW_URL": "https://10.0.0.1:6443",
        "K8S_JWT_AUTH_TOKENREVIEW_CACHE_TTL": "2.5", "K8S_JWT_AUTH_TOKENREVIEW_FALLBACK": "yes",
        "K8S_JWT_AUTH_REDIS_URL": "redis://:pw@redis.cache:6379/2", "K8S_JWT_AUTH_CACHE_SECRET": SECRET,
        "K8S_JWT_AUTH_REDIS_PREFIX": "staging:", "K8S_JWT_AUTH_REDIS_TIMEOUT": "0.05",
        "K8S_JWT_AUTH_REDIS_SHARE_TOKENS": "true",
    })
    assert config.cluster == "prod-eu"
    assert (config.tokenreview, config.tokenreview_url, config.tokenreview_cache_ttl, config.tokenreview_fallback) \
        == (True, "https://10.0.0.1:6443", 2.5, True)
    assert (config.redis_url, config.cache_secret, config.redis_prefix, config.redis_timeout) \
        == ("redis://:pw@redis.cache:6379/2", SECRET, "staging:", 0.05)
    assert config.redis_share_tokens is True
    # the Redis password and the cache secret never show
    assert "pw@" not in repr(config) and SECRET not in repr(config)


def test_defaults_of_the_tokenreview_and_redis_settings() -> None:
    config = VerifierConfig(issuer=REAL_ISSUER, audiences="a")
    assert (config.cluster, config.tokenreview, config.tokenreview_url) == (None, False, "https://kubernetes.default.svc")
    assert (config.tokenreview_cache_ttl, config.tokenreview_fallback) == (5.0, False)
    assert (config.redis_url, config.cache_secret, config.redis_prefix, config.redis_timeout) \
        == (None, None, "k8s-jwt-auth:", 0.1)
    assert (config.redis_share_tokens, config.shared_keys_max_age) == (False, 60.0)  # verified tokens: opt in (#16)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"redis_url": "redis://127.0.0.1:6379"}, "CACHE_SECRET"),
        ({"redis_url": "redis://127.0.0.1:6379", "cache_secret": "short"}, "CACHE_SECRET"),
        ({"redis_url": "http://127.0.0.1:6379", "cache_secret": SECRET}, "REDIS_URL"),
        ({"redis_url": "redis://127.0.0.1:6379", "cache_secret": SECRET, "redis_prefix": ""}, "REDIS_PREFIX"),
        ({"redis_timeout": 0}, "REDIS_TIMEOUT"),
        ({"redis_timeout": -1}, "REDIS_TIMEOUT"),
        ({"tokenreview_cache_ttl": -1}, "TOKENREVIEW_CACHE_TTL"),
        ({"tokenreview": True, "tokenreview_url": "http://10.0.0.1:6443"}, "TOKENREVIEW_URL"),
        ({"cluster": " "}, "CLUSTER"),
    ],
)
def test_invalid_tokenreview_cluster_and_redis_settings_name_the_setting(kwargs: dict[str, object],
                                                                         setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        VerifierConfig(issuer=REAL_ISSUER, audiences="a", **kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting


def test_tokenreview_url_is_only_checked_when_tokenreview_is_on() -> None:
    assert VerifierConfig(issuer=REAL_ISSUER, audiences="a", tokenreview_url="http://10.0.0.1").tokenreview_url
    assert VerifierConfig(issuer=REAL_ISSUER, audiences="a", tokenreview=True,
                          tokenreview_url="http://127.0.0.1:8443").tokenreview


# -- numbers: no NaN, no infinity, no negative, in every source (#14 item 10) ----------------------------

SECONDS_SETTINGS = {"LEEWAY": "leeway", "MAX_TOKEN_AGE": "max_token_age", "TIMEOUT": "timeout",
                    "CACHE_MAX_AGE": "cache_max_age", "COOLDOWN": "cooldown", "MAX_STALE": "max_stale",
                    "TOKEN_CACHE_TTL": "token_cache_ttl", "TOKENREVIEW_CACHE_TTL": "tokenreview_cache_ttl",
                    "REDIS_TIMEOUT": "redis_timeout", "SHARED_KEYS_MAX_AGE": "shared_keys_max_age"}
BAD_SECONDS = ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "1e999", float("nan"), float("inf"), -0.5, True, "x"]


@pytest.mark.parametrize("suffix", SECONDS_SETTINGS)
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_non_finite_or_negative_seconds_are_refused_from_every_source(suffix: str, value: object) -> None:
    base = {"issuer": REAL_ISSUER, "audiences": ["a"], "jwks_file": str(FIXTURES / "jwks.json")}
    with pytest.raises(ConfigurationError) as keyword:
        VerifierConfig(**base, **{SECONDS_SETTINGS[suffix]: value})  # type: ignore[arg-type]
    assert keyword.value.setting == suffix and SECONDS_SETTINGS[suffix] in keyword.value.message
    env = {"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
           "K8S_JWT_AUTH_JWKS_FILE": str(FIXTURES / "jwks.json"), f"K8S_JWT_AUTH_{suffix}": str(value)}
    with pytest.raises(ConfigurationError) as from_env:
        VerifierConfig.from_env(env)
    assert from_env.value.setting == suffix
    with pytest.raises(ConfigurationError):  # native values, as Flask config and Django settings give them
        VerifierConfig.from_mapping({"ISSUER": REAL_ISSUER, "AUDIENCES": ["a"],
                                     "JWKS_FILE": str(FIXTURES / "jwks.json"), suffix: value})


@pytest.mark.parametrize("suffix", ["TIMEOUT", "REDIS_TIMEOUT", "MAX_TOKEN_AGE"])
def test_a_zero_time_limit_is_refused(suffix: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        VerifierConfig(issuer=REAL_ISSUER, audiences="a", **{SECONDS_SETTINGS[suffix]: 0})  # type: ignore[arg-type]
    assert caught.value.setting == suffix


@pytest.mark.parametrize(("name", "value"), [("max_token_size", 10), ("max_token_size", float("nan")),
                                             ("token_cache_size", "²"), ("max_keys", "١٠"), ("max_keys", "++5"),
                                             ("max_response_size", -1), ("max_response_size", 2.5),
                                             ("token_cache_size", -1), ("token_cache_size", float("inf")),
                                             ("token_cache_size", True)])
def test_integer_settings_are_whole_numbers_in_range(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        VerifierConfig(issuer=REAL_ISSUER, audiences="a", **{name: value})  # type: ignore[arg-type]


def test_numeric_settings_from_text_are_parsed() -> None:
    config = VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "a",
                                      "K8S_JWT_AUTH_LEEWAY": " 30 ", "K8S_JWT_AUTH_TOKEN_CACHE_SIZE": "0",
                                      "K8S_JWT_AUTH_MAX_TOKEN_AGE": "3600.5"})
    assert (config.leeway, config.token_cache_size, config.max_token_age) == (30.0, 0, 3600.5)


def test_a_nan_leeway_can_no_longer_accept_a_long_expired_token() -> None:
    # The attack: LEEWAY=nan made every expiry comparison false, so a token expired ten days ago verified.
    with pytest.raises(ConfigurationError):
        VerifierConfig.from_env({"K8S_JWT_AUTH_ISSUER": REAL_ISSUER, "K8S_JWT_AUTH_AUDIENCES": "payments-api",
                                 "K8S_JWT_AUTH_JWKS_FILE": str(FIXTURES / "jwks.json"),
                                 "K8S_JWT_AUTH_LEEWAY": "nan"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_keyword_constructors_refuse_bad_time_limits(value: float) -> None:
    from k8s_jwt_auth.keys import RemoteKeySource
    from k8s_jwt_auth.redis_cache import RedisCache
    from k8s_jwt_auth.tokenreview import TokenReviewer

    with pytest.raises(ConfigurationError, match="timeout"):
        RemoteKeySource("https://issuer.test", timeout=value)
    with pytest.raises(ConfigurationError, match="timeout"):
        TokenReviewer("https://api.test", audiences=["a"], timeout=value)
    with pytest.raises(ConfigurationError, match="timeout"):
        RedisCache(url="redis://127.0.0.1:1/0", secret="s" * 32, timeout=value)
    if value != 0:
        for name in ("cache_max_age", "cooldown", "max_stale"):
            with pytest.raises(ConfigurationError, match=name):
                RemoteKeySource("https://issuer.test", **{name: value})  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="tokenreview_cache_ttl"):
            TokenReviewer("https://api.test", audiences=["a"], cache_ttl=value)


@pytest.mark.parametrize("field", ["issuer", "jwks_uri", "tokenreview_url"])
@pytest.mark.parametrize("url", ["https://reader:s3cret@issuer.example", "https://reader@issuer.example",
                                 "http://:s3cret@127.0.0.1:8443"])
def test_urls_with_a_user_name_or_password_are_refused_without_echoing_them(field: str, url: str) -> None:
    """A password in a URL would reach logs, reprs and error messages: refused, naming the setting only."""
    settings: dict[str, object] = {"issuer": "https://issuer.example", "audiences": ["api"], field: url}
    if field == "tokenreview_url":
        settings["tokenreview"] = True
    with pytest.raises(ConfigurationError) as caught:
        VerifierConfig(**settings)  # type: ignore[arg-type]
    assert "user name or password" in str(caught.value) and field in str(caught.value)
    assert "s3cret" not in str(caught.value) and "reader" not in str(caught.value)


def test_fetchers_built_without_a_config_refuse_credentials_in_urls_too() -> None:
    """The same rule holds where no VerifierConfig is involved (RemoteKeySource, TokenReviewer)."""
    from k8s_jwt_auth import RemoteKeySource, TokenReviewer

    for build in (lambda: RemoteKeySource("https://reader:s3cret@issuer.example"),
                  lambda: RemoteKeySource("https://issuer.example", jwks_uri="https://reader:s3cret@issuer.example/k"),
                  lambda: TokenReviewer("https://reader:s3cret@api.example", audiences=["api"])):
        with pytest.raises(ConfigurationError) as caught:
            build()
        assert "user name or password" in str(caught.value) and "s3cret" not in str(caught.value)
