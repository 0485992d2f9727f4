"""The options every adapter shares, parsed once: `HEADER`, `REALM`, `OPTIONAL`, `EXEMPT_PATHS`.

Starlette and FastAPI take them as keywords (`header=`), Flask as `app.config["K8S_JWT_AUTH_HEADER"]`, Django as
`K8S_JWT_AUTH["HEADER"]`; all of them go through `AdapterOptions.parse`, so a value means the same everywhere and
is refused with the same message, naming the setting as that framework spells it.

| suffix | accepts | default |
| --- | --- | --- |
| `HEADER` | an HTTP field name (RFC 9110 token characters, no `_`) | `Authorization` |
| `REALM` | a non-empty string of printable ASCII, no `"` or `\\` | no realm |
| `OPTIONAL` | `True`/`False`, or `true/false/yes/no/on/off/1/0` | `False` |
| `EXEMPT_PATHS` | a list of paths (`/healthz`, `/public/*`), or one comma-separated string | none |

`None` means "not set" for every option, everywhere: the default applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config import parse_bool, parse_list
from .errors import ConfigurationError

__all__ = ["OPTION_DEFAULTS", "AdapterOptions", "PathMatcher", "flag_option", "header_key"]

_T = TypeVar("_T")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^`|~0-9a-zA-Z]+")  # RFC 9110 field-name characters, but "_"
_REALM_CHARS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,200}")  # RFC 6750 quoted-string, no escapes needed

OPTION_DEFAULTS: Mapping[str, object] = {"HEADER": "Authorization", "REALM": None, "OPTIONAL": False,
                                          "EXEMPT_PATHS": ()}
"""The shared options and their defaults (what `None` means)."""


class PathMatcher:
    """Matches request paths against exact paths (`/healthz`) and prefix patterns (`/public/*`).

    A prefix pattern `/public/*` matches `/public` and everything under `/public/`. Paths are compared
    as the router sees them (decoded, without `root_path`), with no normalisation.

    Raises:
        ConfigurationError: for a path that does not start with `/`, a `*` anywhere but a trailing `/*`,
            or a single string instead of a list.
    """

    __slots__ = ("exact", "prefixes")

    def __init__(self, paths: Sequence[str]) -> None:
        if isinstance(paths, (str, bytes)):
            raise ConfigurationError(f"exempt_paths must be a list of paths, not the string {paths!r}")
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            _check_path(path)
            if path.endswith("/*"):
                exact.add(path[:-2] or "/")
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact)

    def __call__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathMatcher) and (self.exact, self.prefixes) == (other.exact, other.prefixes)

    def __hash__(self) -> int:
        return hash((self.exact, self.prefixes))

    def __repr__(self) -> str:
        return f"PathMatcher({sorted(self.exact)!r})"


def _check_path(path: object) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"exempt path {path!r} must be a string starting with '/' (e.g. '/healthz')")
    if "*" in path[:-2] or (path.endswith("*") and not path.endswith("/*")):
        raise ConfigurationError(f"exempt path {path!r}: '*' is only allowed as a trailing '/*' (e.g. '/public/*')")


def header_key(name: object) -> bytes:
    """The lower-case ASCII form of a credentials header name (as ASGI and gRPC metadata spell it).

    Raises:
        ConfigurationError: `name` is not an HTTP field name, or has a `_` (WSGI servers, Django and proxies such
            as nginx drop or merge such headers, so a token sent in one could silently go missing).
    """
    if not isinstance(name, str) or not _TOKEN_CHARS.fullmatch(name):
        if isinstance(name, str) and "_" in name:
            raise ConfigurationError(f"header {name!r}: use '-', not '_' (servers drop or merge headers with '_')")
        raise ConfigurationError(f"header {name!r} is not a valid HTTP header name (e.g. 'Authorization')")
    return name.lower().encode("ascii")


def _realm(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"expected a string, not {type(value).__name__}")
    if not _REALM_CHARS.fullmatch(value) or not value.strip():
        raise ConfigurationError(f"{value!r} must be 1 to 200 printable ASCII characters, not blank, without '\"' "
                                 "or '\\' (it is quoted in WWW-Authenticate)")
    return value


def flag_option(value: object) -> bool:
    """A boolean option: `True`/`False`, or `true/false/yes/no/on/off/1/0` (as environment variables spell it).

    Raises:
        ConfigurationError: anything else (`None` is "not set" and never reaches here).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return parse_bool(value)
        except ValueError:
            pass
    raise ConfigurationError(f"expected True or False (or true/false, yes/no, on/off, 1/0), not {value!r}")


def _paths(value: object) -> PathMatcher:
    if isinstance(value, str):
        return PathMatcher(parse_list(value, "EXEMPT_PATHS"))
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigurationError(f"expected a list of paths (e.g. ['/healthz', '/public/*']), "
                                 f"not {type(value).__name__}")
    return PathMatcher(sorted(value, key=str) if isinstance(value, (set, frozenset)) else value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterOptions:
    """The shared adapter options, validated. Build with `AdapterOptions.parse`.

    Attributes:
        header: the header holding `Bearer <token>`, as configured (`Authorization`).
        realm: the `realm` of `WWW-Authenticate` challenges, or `None`.
        optional: whether requests *without* bearer credentials go through anonymously (a bad token is still
            refused).
        exempt_paths: the paths let through unauthenticated.
        header_key: `header` lower-cased, as bytes (ASGI headers, gRPC metadata keys).
        meta_key: `header` as a WSGI environ / Django `META` key (`HTTP_AUTHORIZATION`; CGI names Content-Type and
            Content-Length without the prefix, `CONTENT_TYPE`, as PEP 3333 and Django spell them).
    """

    header: str = "Authorization"
    realm: str | None = None
    optional: bool = False
    exempt_paths: PathMatcher = field(default_factory=lambda: PathMatcher(()))
    header_key: bytes = b"authorization"
    meta_key: str = "HTTP_AUTHORIZATION"

    @classmethod
    def parse(cls, values: Mapping[str, Any], name: Callable[[str], str] = str) -> AdapterOptions:
        """Validate the options in `values`, keyed by suffix (`HEADER`, ...); missing or `None` = the default.

        Args:
            values: the options given, by suffix; other keys are ignored (each adapter checks its own).
            name: how the adapter spells a setting in messages, from its suffix (`K8S_JWT_AUTH_HEADER`,
                `K8S_JWT_AUTH["HEADER"]`, `header=`).

        Raises:
            ConfigurationError: an invalid value; the message starts with `name(suffix)` and `setting` is the
                suffix.
        """
        header = _option(values, "HEADER", name, _header_name)
        return cls(header=header,
                   realm=_option(values, "REALM", name, _realm),
                   optional=_option(values, "OPTIONAL", name, flag_option),
                   exempt_paths=_option(values, "EXEMPT_PATHS", name, _paths),
                   header_key=header.lower().encode("ascii"),
                   meta_key=_meta_key(header))


def _meta_key(header: str) -> str:
    """The WSGI environ / Django `META` key of a header (PEP 3333: CGI's own two have no `HTTP_` prefix)."""
    key = header.upper().replace("-", "_")
    return key if key in _CGI_HEADERS else "HTTP_" + key


_CGI_HEADERS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


def _header_name(value: object) -> str:
    header_key(value)
    assert isinstance(value, str)  # header_key refused anything else
    return value


def _option(values: Mapping[str, Any], suffix: str, name: Callable[[str], str], parse: Callable[[Any], _T]) -> _T:
    value = values.get(suffix)
    if value is None:
        value = OPTION_DEFAULTS[suffix]
    try:
        return parse(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name(suffix)}: {exc.message}", setting=suffix) from exc
