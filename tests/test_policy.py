"""Policy: globs, deny wins, default deny once an allow rule exists, conditions, dry run."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from k8s_jwt_auth import ConfigurationError, Policy, PolicyDenied, Rule, WorkloadIdentity


def workload(namespace: str = "payments", sa: str = "worker", pod: str | None = None,
             audiences: tuple[str, ...] = ("payments-api",), node: str | None = None) -> WorkloadIdentity:
    claims: dict[str, object] = {"kubernetes.io": {"namespace": namespace, "node": {"name": node}} if node else {}}
    return WorkloadIdentity(issuer="https://issuer.test", subject=f"system:serviceaccount:{namespace}:{sa}",
                            namespace=namespace, service_account=sa, pod_name=pod, audiences=audiences,
                            expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc), claims=claims)


def test_no_rules_allows_every_verified_workload() -> None:
    decision = Policy().evaluate(workload())
    assert decision.allowed and decision.rule is None
    assert Policy.parse(None).is_open and Policy.parse("").is_open


@pytest.mark.parametrize(
    ("spec", "ns", "sa", "allowed", "rule"),
    [
        ("payments/*", "payments", "worker", True, "payments/*"),
        ("payments/*", "orders", "worker", False, None),
        ("*/api", "orders", "api", True, "*/api"),
        ("*/api", "orders", "api-v2", False, None),
        ("pay*/work?r", "payments", "worker", True, "pay*/work?r"),
        ("payments/[a-w]*", "payments", "worker", True, "payments/[a-w]*"),
        ("*/*,!kube-system/*", "kube-system", "coredns", False, "!kube-system/*"),
        ("*/*,!kube-system/*", "default", "web", True, "*/*"),
        ("!kube-system/*", "default", "web", True, None),  # only deny rules: allow unless denied
        ("!kube-system/*", "kube-system", "x", False, "!kube-system/*"),
        ("!*/admin, */*", "payments", "admin", False, "!*/admin"),  # deny wins whatever the order
    ],
)
def test_compact_rules(spec: str, ns: str, sa: str, allowed: bool, rule: str | None) -> None:
    decision = Policy.parse(spec).evaluate(workload(ns, sa))
    assert decision.allowed is allowed
    assert (str(decision.rule) if decision.rule else None) == rule


def test_pod_pattern_in_compact_form() -> None:
    policy = Policy.parse(["frontend/web/web-*"])
    assert policy.evaluate(workload("frontend", "web", pod="web-5c6b")).allowed
    assert not policy.evaluate(workload("frontend", "web", pod="debug-1")).allowed
    assert not policy.evaluate(workload("frontend", "web", pod=None)).allowed  # unbound token never matches
    assert str(policy.rules[0]) == "frontend/web/web-*"


def test_rule_with_audience_condition() -> None:
    policy = Policy([Rule(namespace="payments", audiences=("payments-api",))])
    assert policy.evaluate(workload(audiences=("payments-api", "vault"))).allowed
    assert not policy.evaluate(workload(audiences=("vault",))).allowed


def test_rule_with_claim_condition() -> None:
    policy = Policy([Rule(namespace="*", claims={"kubernetes.io/node/name": "node-*"})])
    assert policy.evaluate(workload(node="node-1")).allowed
    assert not policy.evaluate(workload(node="edge-1")).allowed
    assert not policy.evaluate(workload()).allowed  # claim absent


def test_enforce_raises_with_the_deciding_rule() -> None:
    with pytest.raises(PolicyDenied) as info:
        Policy.parse("*/*,!kube-system/*").enforce(workload("kube-system", "coredns"))
    assert (info.value.reason, info.value.rule, info.value.status_code) == ("policy_denied", "!kube-system/*", 403)
    with pytest.raises(PolicyDenied) as info:
        Policy.parse("payments/*").enforce(workload("orders"))
    assert info.value.rule is None
    assert Policy.parse("payments/*").enforce(workload()).rule == Rule(namespace="payments")


def test_dry_run_reports_but_never_denies() -> None:
    policy = Policy.parse("payments/*", dry_run=True)
    decision = policy.enforce(workload("orders"))
    assert not decision.allowed and decision.dry_run and not decision.enforced_denial
    assert "denied" in decision.explanation and "dry run" in decision.explanation


@pytest.mark.parametrize("spec", ["payments", "a/b/c/d", "/worker", "payments/", "pay ments/x", "a/b$"])
def test_bad_compact_rules(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        Policy.parse([spec])


def test_bad_effect() -> None:
    with pytest.raises(ConfigurationError):
        Rule(effect="maybe")  # type: ignore[arg-type]


def test_policy_equality_and_repr() -> None:
    assert Policy.parse("a/b, !c/*") == Policy(["a/b", "!c/*"])
    assert repr(Policy.parse("a/b")) == "Policy(['a/b'], dry_run=False)"


def test_rule_conditions_show_in_its_compact_form() -> None:
    rule = Rule(namespace="payments", audiences=("payments-api",), claims={"kubernetes.io/node/name": "node-*"})
    assert str(rule) == "payments/* [aud=payments-api kubernetes.io/node/name=node-*]"
    assert str(Rule.parse("!kube-system/*")) == "!kube-system/*"


def test_double_negation_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Rule.parse("!!kube-system/*")


def test_verifier_takes_a_policy_object() -> None:
    from k8s_jwt_auth import TokenVerifier, VerifierConfig

    policy = Policy([Rule(namespace="payments", audiences=("payments-api",))])
    config = VerifierConfig(issuer="https://x.test", audiences="a", jwks={"keys": []}, allow=["other/*"])
    with pytest.raises(ConfigurationError):  # an empty key set is refused, whatever the policy
        TokenVerifier(config, policy=policy)
    from k8s_jwt_auth.testing import SigningKey

    config = VerifierConfig(issuer="https://x.test", audiences="a", jwks={"keys": [SigningKey.generate().public_jwk()]},
                            allow=["other/*"])
    assert TokenVerifier(config, policy=policy).policy is policy
    assert TokenVerifier(config).policy == Policy(["other/*"])


@pytest.mark.parametrize(("spec", "field"), [
    ("*/*,!Kube-System/*", "namespace"),  # the attack: a deny rule that never matches lower-case kube-system
    ("Payments/*", "namespace"),
    ("*/Worker", "service account"),
    ("*/[A-Z]*", "service account"),
    ("frontend/web/Web-*", "pod"),
    ("a.b/*", "namespace"),  # namespaces have no dots
    ("-payments/*", "namespace"),
    ("payments/worker_1", "service account"),
    ("pay[/x", "namespace"),  # an unclosed [ is a literal in fnmatch: never in a name
    ("ns!/x", "namespace"),
    ("*/" + "a" * 254, "service account"),
    ("payments/*_*", "service account"),
    ("payments/[_x]*", "service account"),
])
def test_a_rule_that_can_never_match_is_refused_naming_it(spec: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Policy.parse(spec)
    bad = next(r for r in spec.split(",") if not _parses(r))
    assert f"policy rule {bad!r}" in caught.value.message and f"the {field} pattern" in caught.value.message


def _parses(rule: str) -> bool:
    try:
        Rule.parse(rule)
    except ConfigurationError:
        return False
    return True


@pytest.mark.parametrize("spec", ["payments/*", "!kube-system/*", "*/api", "pay*/work?r", "payments/[a-w]*",
                                  "pay[!x]*/w?", "[a-c]*/x", "ns/sa.with.dots", "frontend/web/web-*.v2",
                                  "*/*/web-[0-9]*", "a/" + "b" * 253])
def test_globs_over_valid_names_are_accepted(spec: str) -> None:
    assert str(Policy.parse(spec).rules[0]) == spec


def test_rule_objects_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="the namespace pattern 'Kube-System'"):
        Rule(namespace="Kube-System", effect="deny")
    with pytest.raises(ConfigurationError, match="the pod pattern"):
        Rule(pod="")
