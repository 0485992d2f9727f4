"""`Policy`: which verified workloads may call.

Rules match namespace, service account and pod name with glob patterns (`fnmatch`, case-sensitive),
optionally only for some audiences and with conditions on raw claims. A pattern that no valid (lower-case,
DNS-1123) Kubernetes name can match is refused when the rule is built. Evaluation:

1. a matching **deny** rule denies (deny wins over allow);
2. else a matching **allow** rule allows;
3. else: denied if any allow rule exists (deny by default), allowed otherwise.

The compact string form, used by `K8S_JWT_AUTH_ALLOW`, `--allow` and framework settings, is
`[!]NAMESPACE/SERVICEACCOUNT[/POD]`: `payments/*`, `*/api`, `!kube-system/*`, `frontend/web/web-*`.

In dry-run mode `enforce()` reports what it would have decided but never raises, to roll a policy out
safely (log `decision.allowed` and watch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from .errors import ConfigurationError, PolicyDenied
from .identity import WorkloadIdentity

__all__ = ["Decision", "Policy", "Rule"]

# Kubernetes names are lower-case: a namespace is an RFC 1123 label, a service account or pod name an RFC 1123
# subdomain. A pattern that no such name can match (`Kube-System/*`) would be a rule that silently never applies.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAMES = {"namespace": (re.compile(_LABEL), 63, "a DNS-1123 label: lower-case letters, digits and '-'"),
          "service_account": (re.compile(rf"{_LABEL}(?:\.{_LABEL})*"), 253,
                              "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'"),
          "pod": (re.compile(rf"{_LABEL}(?:\.{_LABEL})*"), 253,
                  "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'")}
_GLOB_PART = re.compile(r"\[!?[^\[\]]+\]|[*?]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One allow or deny rule. Every given condition must match.

    Args:
        namespace: glob for the namespace.
        service_account: glob for the service account name.
        pod: glob for the pod name; a token that is not pod-bound never matches a pod pattern
            other than `*`.
        effect: `"allow"` or `"deny"`.
        audiences: when non-empty, the rule only applies to tokens with one of these audiences.
        claims: conditions on raw claims: `{"kubernetes.io/node/name": "node-*"}` (a `/`-separated
            path into the payload, and a glob the value must match).
    """

    namespace: str = "*"
    service_account: str = "*"
    pod: str = "*"
    effect: Literal["allow", "deny"] = "allow"
    audiences: tuple[str, ...] = ()
    claims: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.effect not in ("allow", "deny"):
            raise ConfigurationError(f"rule effect must be 'allow' or 'deny', not {self.effect!r}")
        for name in ("namespace", "service_account", "pod"):
            value = getattr(self, name)
            problem = _pattern_problem(value, name)
            if problem is not None:
                raise ConfigurationError(f"the {name.replace('_', ' ')} pattern {value!r} {problem}")
        object.__setattr__(self, "audiences", tuple(self.audiences))

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse the compact form `[!]NAMESPACE/SERVICEACCOUNT[/POD]`.

        Raises:
            ConfigurationError: with the expected form when `text` does not fit it.
        """
        spec = text.strip()
        effect: Literal["allow", "deny"] = "deny" if spec.startswith("!") else "allow"
        parts = spec.removeprefix("!").split("/")
        if len(parts) not in (2, 3) or not all(parts) or parts[0].startswith("!"):
            raise ConfigurationError(f"policy rule {text!r} is not NAMESPACE/SERVICEACCOUNT[/POD] "
                                     "(e.g. payments/*, */api, !kube-system/*)")
        pod = parts[2] if len(parts) == 3 else "*"
        try:
            return cls(namespace=parts[0], service_account=parts[1], pod=pod, effect=effect)
        except ConfigurationError as exc:
            raise ConfigurationError(f"policy rule {text!r}: {exc.message}") from None

    def __str__(self) -> str:
        """The compact form, followed by any audience and claim conditions: `payments/* [aud=payments-api]`."""
        text = f"{'!' if self.effect == 'deny' else ''}{self.namespace}/{self.service_account}"
        text = text if self.pod == "*" else f"{text}/{self.pod}"
        conditions = [f"aud={','.join(self.audiences)}"] if self.audiences else []
        conditions += [f"{path}={pattern}" for path, pattern in sorted(self.claims.items())]
        return f"{text} [{' '.join(conditions)}]" if conditions else text

    def matches(self, identity: WorkloadIdentity) -> bool:
        """Whether every condition of the rule holds for `identity`."""
        if not fnmatchcase(identity.namespace, self.namespace):
            return False
        if not fnmatchcase(identity.service_account, self.service_account):
            return False
        if self.pod != "*" and (identity.pod_name is None or not fnmatchcase(identity.pod_name, self.pod)):
            return False
        if self.audiences and set(self.audiences).isdisjoint(identity.audiences):
            return False
        return all(_claim_matches(identity.claims, path, pattern) for path, pattern in self.claims.items())


def _pattern_problem(value: object, name: str) -> str | None:
    """Why `value` is not a glob that some valid Kubernetes `name` could match, or `None` if it is."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    regex, longest, kind = _NAMES[name]
    if value != value.lower():
        return f"has upper-case letters, so it can never match: Kubernetes names are lower-case ({kind})"
    literal = _GLOB_PART.sub("", value)
    if value == literal:  # no wildcard: it must be a name itself
        if len(value) > longest or not regex.fullmatch(value):
            return f"can never match: a {name.replace('_', ' ')} is {kind}, at most {longest} characters"
        return None
    allowed = "-a-z0-9" if name == "namespace" else "-a-z0-9."
    if re.fullmatch(f"[{allowed}]*", literal) is None:
        return f"can never match: it has characters no {name.replace('_', ' ')} has ({kind}; wildcards * ? [...])"
    for part in re.findall(r"\[!?([^\[\]]+)\]", value):
        if re.fullmatch(f"[{allowed}]+", part) is None:
            return f"has a [...] class with characters no {name.replace('_', ' ')} has ({kind})"
    return None


def _claim_matches(claims: Mapping[str, Any], path: str, pattern: str) -> bool:
    value: Any = claims
    for part in path.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    if isinstance(value, list):
        return any(isinstance(v, str) and fnmatchcase(v, pattern) for v in value)
    return isinstance(value, str) and fnmatchcase(value, pattern)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a policy for one identity.

    Attributes:
        allowed: the policy's verdict.
        rule: the rule that decided (`None` when no rule matched).
        dry_run: whether the policy was in dry-run mode (a denial is then reported, not enforced).
    """

    allowed: bool
    rule: Rule | None
    dry_run: bool = False

    @property
    def enforced_denial(self) -> bool:
        """Whether the request must be refused: denied and not in dry-run mode."""
        return not self.allowed and not self.dry_run

    @property
    def explanation(self) -> str:
        """A short human explanation, for logs: `denied by rule !kube-system/*`."""
        verdict = "allowed" if self.allowed else "denied"
        by = f"by rule {self.rule}" if self.rule else "by default (no rule matched)"
        return f"{verdict} {by}" + (" [dry run: not enforced]" if self.dry_run and not self.allowed else "")


class Policy:
    """An ordered set of allow and deny rules. Immutable; cheap to evaluate.

    Args:
        rules: `Rule` objects or compact strings.
        dry_run: evaluate and report, never deny.
    """

    __slots__ = ("_allow", "_deny", "dry_run", "rules")

    def __init__(self, rules: Iterable[Rule | str] = (), *, dry_run: bool = False) -> None:
        self.rules: tuple[Rule, ...] = tuple(r if isinstance(r, Rule) else Rule.parse(r) for r in rules)
        self.dry_run = dry_run
        self._deny = tuple(r for r in self.rules if r.effect == "deny")
        self._allow = tuple(r for r in self.rules if r.effect == "allow")

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None, *, dry_run: bool = False) -> Policy:
        """Build a policy from compact rules: a comma/whitespace-separated string or a list of strings.

        Raises:
            ConfigurationError: for a rule that is not `[!]NAMESPACE/SERVICEACCOUNT[/POD]`.
        """
        if spec is None:
            return cls(dry_run=dry_run)
        items = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
        return cls(items, dry_run=dry_run)

    def __repr__(self) -> str:
        return f"Policy({[str(r) for r in self.rules]!r}, dry_run={self.dry_run})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and (self.rules, self.dry_run) == (other.rules, other.dry_run)

    __hash__ = None  # type: ignore[assignment]

    @property
    def is_open(self) -> bool:
        """Whether the policy has no rules at all (every verified workload is allowed)."""
        return not self.rules

    def evaluate(self, identity: WorkloadIdentity) -> Decision:
        """Decide for `identity` without raising."""
        for rule in self._deny:
            if rule.matches(identity):
                return Decision(False, rule, self.dry_run)
        for rule in self._allow:
            if rule.matches(identity):
                return Decision(True, rule, self.dry_run)
        return Decision(not self._allow, None, self.dry_run)

    def enforce(self, identity: WorkloadIdentity) -> Decision:
        """Decide for `identity` and raise when it is denied (unless in dry-run mode).

        Raises:
            PolicyDenied: `policy_denied`, with `rule` set to the deciding rule's compact form.
        """
        decision = self.evaluate(identity)
        if decision.enforced_denial:
            rule = str(decision.rule) if decision.rule else None
            raise PolicyDenied(f"workload {identity.namespace}/{identity.service_account} is not allowed "
                               + (f"(denied by rule {rule})" if rule else "(no allow rule matches)"), rule=rule,
                               workload=identity)
        return decision
