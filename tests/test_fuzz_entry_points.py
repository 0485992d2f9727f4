"""Property-based fuzzing of the public entry points tests/test_fuzz.py does not cover (issue #14 item 1).

* `TokenReviewResult.from_response`: whatever the document, a `TokenReviewResult` or `TokenReviewUnavailable`
  (`review_unavailable`, 503), never `KeyError`/`TypeError`/`AttributeError`/`RecursionError`; the shared-store
  reader built on it (`_decode`) answers `None` for what it cannot use.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k8s_jwt_auth import TokenReviewUnavailable
from k8s_jwt_auth.tokenreview import TokenReviewResult, _decode, _Entry

from .conftest import FIXTURES
from .test_fuzz import json_values

RECORDED = sorted((FIXTURES / "tokenreview").glob("*.response.json"))

# -- TokenReviewResult.from_response ------------------------------------------------------------------------

# Leaves as the JSON decoder produces them, plus the field names and values a TokenReview answer uses, so that
# generated documents often get past the first checks.
field_names = st.sampled_from(["kind", "apiVersion", "status", "authenticated", "user", "username", "uid", "groups",
                               "extra", "audiences", "error", "authentication.kubernetes.io/pod-uid"])
leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
          | st.sampled_from(["TokenReview", "system:serviceaccount:a:b", "JTI=x", ""]))
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field_names | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def _recorded(path: Path) -> Any:
    return json.loads(path.read_text())


def _deep(value: object, depth: int, as_list: bool) -> object:
    for _ in range(depth):
        value = [value] if as_list else {"user": value}
    return value


def _containers(doc: object, limit: int = 40) -> list[tuple[object, object]]:
    """(container, key or index) of every value in `doc`, walked without recursion and at most `limit` deep."""
    found: list[tuple[object, object]] = []
    todo: list[tuple[object, int]] = [(doc, 0)]
    while todo:
        node, depth = todo.pop()
        if depth >= limit:
            continue
        slots = list(node.items()) if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in slots:
            found.append((node, key))
            todo.append((child, depth + 1))
    return found


replacements = st.one_of(
    json_values,
    st.integers(1, 200_000).map(lambda n: "x" * n),  # huge strings
    st.builds(_deep, json_values, st.integers(1, 5_000), st.booleans()),  # deep nesting, beyond the recursion limit
    st.sampled_from([10**400, -(10**5000), float("nan"), float("inf"), True, 0, "", [], {}]),
)


@st.composite
def mutated_recorded(draw: st.DrawFn) -> object:
    """A recorded kube-apiserver answer with a few keys dropped, replaced (wrong types, huge, deep) or added."""
    doc = copy.deepcopy(_recorded(draw(st.sampled_from(RECORDED))))
    for _ in range(draw(st.integers(1, 4))):
        slots = _containers(doc)
        if not slots:
            break
        node, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop":
            del node[key]  # type: ignore[attr-defined]
        elif action == "replace":
            node[key] = draw(replacements)  # type: ignore[index]
        elif isinstance(node[key], dict):  # type: ignore[index]
            node[key][draw(field_names | st.text(max_size=8))] = draw(replacements)  # type: ignore[index]
    return doc


def _parses_or_is_unavailable(doc: object) -> TokenReviewResult | None:
    """The contract: a well-typed result, or `TokenReviewUnavailable` with a short message; nothing else."""
    try:
        result = TokenReviewResult.from_response(doc)
    except TokenReviewUnavailable as exc:
        assert (exc.status_code, exc.reason) == (503, "review_unavailable")
        assert len(exc.message) < 300  # never echoes a huge value from the document
        return None
    assert isinstance(result.authenticated, bool)
    assert not result.authenticated or result.username
    for value in (result.username, result.uid, result.error):
        assert value is None or isinstance(value, str)
    assert all(isinstance(v, str) for v in (*result.groups, *result.audiences))
    assert all(isinstance(k, str) and all(isinstance(v, str) for v in vs) for k, vs in result.extra.items())
    assert TokenReviewResult.from_response({"status": result.to_status()}) == result
    return result


def test_the_recorded_answers_parse() -> None:
    parsed = [_parses_or_is_unavailable(_recorded(path)) for path in RECORDED]
    assert all(result is not None for result in parsed)


@pytest.mark.parametrize("kind", [_deep("TokenReview", 5_000, True), _deep("x", 5_000, False), 10**5000],
                         ids=["deep-list", "deep-object", "huge-int"])
def test_a_kind_that_cannot_be_printed_is_malformed_not_a_crash(kind: object) -> None:
    # The message used to show str(kind): a RecursionError for a deeply nested value, a ValueError for an integer
    # beyond int_max_str_digits. Python's json cannot build either, but the method takes any decoded document.
    doc = {**_recorded(RECORDED[0]), "kind": kind}
    with pytest.raises(TokenReviewUnavailable) as caught:
        TokenReviewResult.from_response(doc)
    assert caught.value.reason == "review_unavailable"


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_from_response_any_json_document(doc: object) -> None:
    _parses_or_is_unavailable(doc)


@settings(max_examples=200, deadline=None)
@given(status=documents)
def test_from_response_any_status_object(status: object) -> None:
    _parses_or_is_unavailable({"kind": "TokenReview", "status": status})


@settings(max_examples=300, deadline=None)
@given(doc=mutated_recorded())
def test_from_response_mutated_recorded_answers(doc: object) -> None:
    _parses_or_is_unavailable(doc)
    try:
        text = json.dumps(doc)
    except (RecursionError, ValueError):
        return  # deeper than json can write, or an integer it cannot print: no decoder could produce it
    _parses_or_is_unavailable(json.loads(text))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=200) | st.builds(lambda v, t, s: json.dumps({"v": v, "t": t, "s": s}).encode(),
                                                 st.sampled_from([1, 1, 2, "1", None]), json_values, documents))
def test_a_shared_store_value_is_an_entry_or_none(value: bytes) -> None:
    """Values another replica (or anything with access to the store) wrote are read back or ignored, never raise."""
    entry = _decode(value, now=0.0)
    assert entry is None or isinstance(entry, _Entry)
