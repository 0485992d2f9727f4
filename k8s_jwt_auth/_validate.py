"""Validation of numeric settings, shared by every constructor that takes one.

Every duration and size a user can set — through `VerifierConfig` (and so the environment, Flask config and
Django settings), or as a keyword of `RemoteKeySource`, `JwksFetcher`, `TokenReviewer` or `RedisCache` — goes
through these two functions, so that NaN, infinities, negative numbers and booleans are refused everywhere with
the same message. A NaN leeway would make every expiry comparison false (tokens expired days ago would verify);
an infinite timeout lets a peer hold a call forever.
"""

from __future__ import annotations

import ipaddress
import math
from urllib.parse import urlsplit

from .errors import ConfigurationError

__all__ = ["is_loopback", "seconds", "url_problem", "whole_number"]


def seconds(value: object, name: str, *, positive: bool = False, setting: str | None = None) -> float:
    """`value` as a finite number of seconds, `>= 0` (or `> 0` with `positive`).

    Strings are parsed (settings from the environment arrive as text).

    Raises:
        ConfigurationError: for anything else, naming `name`.
    """
    number = _finite(value)
    bound = "> 0" if positive else ">= 0"
    if number is None or number < 0 or (positive and number == 0):
        raise ConfigurationError(f"{name} must be a finite number of seconds {bound}, not {value!r}"
                                 + (" (a call without a time limit can hang)" if positive else ""), setting=setting)
    return number


def whole_number(value: object, name: str, *, minimum: int = 0, setting: str | None = None) -> int:
    """`value` as an integer `>= minimum` (strings of digits are parsed).

    Raises:
        ConfigurationError: for anything else, naming `name`.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        digits = value.strip().removeprefix("+")
        if digits.isascii() and digits.isdigit():  # "²".isdigit() is true, but int("²") raises
            number = int(digits)
    if number is None or number < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, not {value!r}", setting=setting)
    return number


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def url_problem(url: str, allow_insecure_http: bool) -> str | None:
    """Why `url` may not be fetched, or `None`: https, or http to a loopback host (or when allowed), and no user
    name or password (they would reach logs and error messages; the message does not repeat the URL then).

    Shared by `VerifierConfig` and every fetcher built without one (`RemoteKeySource`, `TokenReviewer`, ...).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        credentials = parts.username is not None or parts.password is not None
    except ValueError:
        return f"{url!r} is not a valid URL"
    if credentials:
        return ("must not carry a user name or password (URLs end up in logs and error messages); fetches "
                "authenticate with token_file (a bearer token) and ca_file")
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and (allow_insecure_http or is_loopback(host)):
        return None
    return (f"{url!r} must be an https:// URL (plain http only for loopback addresses, or with "
            "allow_insecure_http=True)")


def is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
