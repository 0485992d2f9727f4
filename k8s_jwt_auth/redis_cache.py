"""`RedisCache`: a `SharedStore` in Redis, so that replicas share key sets and verification results.

Install with `pip install "k8s-jwt-auth[redis]"` (redis-py, sync and asyncio).

What reaches Redis:

* **key names** are `prefix + namespace + ":" + hex(HMAC-SHA256(name key, namespace || key))`; the name key
  is derived from the secret, so names reveal nothing (keys are e.g. a token's SHA-256 digest; the token
  itself never reaches Redis);
* **values** are `mac || expiry || payload`: `expiry` is the absolute expiry in Unix milliseconds (8 bytes)
  and `mac` is HMAC-SHA256, with a value key derived from the secret, over (key name, expiry, payload). An
  entry whose MAC does not check out (tampered, written under another secret, moved to another key name or
  prefix) is ignored and logged as a warning (rate-limited; the value is never logged); an entry past its
  embedded expiry is ignored even if Redis still holds it. Write access to Redis therefore cannot mint
  identities; only the secret can.
* entries carry a Redis TTL (`PX`) of at most the `ttl` asked for; `ttl <= 0` stores nothing.
* `replace` stores a value unless the authentic value stored now is one the caller keeps (e.g. a newer key
  set): `WATCH`, `GET`, then `MULTI`/`SET`/`EXEC`, so nothing written in between is overwritten.
* leases (`try_lock`) are `SET NX PX` of a random value under `prefix + namespace + ":lock:" + hex(...)`;
  `unlock` deletes the lease only if it still holds that value. Leases are not authenticated: a forged
  lease only makes other processes wait (boundedly) and then do the work themselves.

Failure behaviour: `timeout` is a deadline for the whole call — connecting, the handshake, sending and
every read of the reply — not a limit per socket operation: a Redis that trickles its reply a byte at a
time is given up when the deadline passes. The sync client's sockets give each operation only what is
left of the call's deadline; async calls run under `asyncio.wait_for`; redis-py's own retries are off.
A reply of a type the command never answers (`+OK` to everything, an integer for a GET, a map...) is a
failed call too. A failed call opens a circuit breaker: Redis is then skipped without touching the network
for 1 s, doubling up to 30 s while probes keep failing, so a Redis that is down, slow or hostile never
stalls requests. One warning per outage on the `k8s_jwt_auth.redis` logger, one info line when Redis
answers again. Nothing is ever raised to the caller.

Clients: one `redis.Redis` (a thread-safe connection pool) for sync calls, and one `redis.asyncio.Redis`
per running event loop for async calls (a client is bound to the loop it was made on). A loop's client is
closed when the loop shuts down (`asyncio.run` and anyio finalize async generators, which this hooks), by
`aclose()` on that loop, or dropped when a new loop finds the old one closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    import redis
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection, parse_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, WatchError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('k8s_jwt_auth.redis_cache needs redis-py: pip install "k8s-jwt-auth[redis]"') from exc

from ._validate import seconds
from .config import MIN_CACHE_SECRET
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .config import VerifierConfig

__all__ = ["RedisCache", "RedisCacheStatus"]

logger = logging.getLogger("k8s_jwt_auth.redis")

T = TypeVar("T")
MAC_SIZE = 32
EXPIRY_SIZE = 8
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
TAMPER_LOG_INTERVAL = 60.0
# What a call to a Redis that is down, slow or hostile can raise: redis-py's own errors, socket errors, and what
# redis-py raises itself on a reply of an unexpected shape (`+OK` to HELLO makes it call `.get` on bytes).
_FAILURES = (RedisError, OSError, asyncio.TimeoutError, ValueError, AttributeError, TypeError, LookupError)
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_FAILED = object()  # a call that did not reach Redis (skipped or failed)


class _UnexpectedReply(ValueError):
    """Redis answered a command with a type that command never answers (the value itself is never shown)."""


_DEADLINE: ContextVar[float | None] = ContextVar("k8s_jwt_auth_redis_deadline", default=None)


class _DeadlineSocket:
    """A socket whose every operation is given at most what is left of the current call's deadline.

    redis-py's socket timeout bounds each read: a server that sends one byte every 0.09 s keeps a 0.1 s
    timeout from ever firing. Wrapping the connection's socket makes `timeout` a deadline for the whole call
    (set by `RedisCache._call` in a context variable; outside a call the socket is left as it is).
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, *args: Any) -> bytes:
        return self._bounded(self._sock.recv, *args)  # type: ignore[no-any-return]

    def recv_into(self, *args: Any) -> int:
        return self._bounded(self._sock.recv_into, *args)  # type: ignore[no-any-return]

    def send(self, *args: Any) -> int:
        return self._bounded(self._sock.send, *args)  # type: ignore[no-any-return]

    def sendall(self, *args: Any) -> None:
        self._bounded(self._sock.sendall, *args)  # a whole sendall obeys one timeout (Python >= 3.5)

    def _bounded(self, operation: Callable[..., Any], *args: Any) -> Any:
        left = _time_left()
        if left is None:
            return operation(*args)
        own = self._sock.gettimeout()
        self._sock.settimeout(left if own is None else min(own, left))
        try:
            return operation(*args)
        finally:
            try:
                self._sock.settimeout(own)
            except OSError:  # closed by the failed operation
                pass


def _time_left() -> float | None:
    """Seconds left before the current call's deadline (`None` outside a call).

    Raises:
        TimeoutError: when the deadline has passed (redis-py turns it into its own `TimeoutError`).
    """
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the Redis call ran past its deadline")
    return left


class _DeadlineConnectionMixin(AbstractConnection):
    """Connects within what is left of the call's deadline and wraps the socket in a `_DeadlineSocket`."""

    def _connect(self) -> Any:
        left = _time_left()
        if left is None:
            return _DeadlineSocket(super()._connect())  # type: ignore[no-untyped-call, safe-super]
        saved = self.socket_connect_timeout, self.socket_timeout
        self.socket_connect_timeout = min(saved[0] or left, left)  # TCP connect
        self.socket_timeout = min(saved[1] or left, left)  # the TLS handshake (one deadline in CPython)
        try:
            sock = super()._connect()  # type: ignore[no-untyped-call, safe-super]
        finally:
            self.socket_connect_timeout, self.socket_timeout = saved
        sock.settimeout(saved[1])
        return _DeadlineSocket(sock)


class _DeadlineConnection(_DeadlineConnectionMixin, Connection):
    pass


class _DeadlineSSLConnection(_DeadlineConnectionMixin, SSLConnection):
    pass


class _DeadlineUnixConnection(_DeadlineConnectionMixin, UnixDomainSocketConnection):
    pass


_DEADLINE_CLASSES: dict[type[Any], type[Any]] = {
    Connection: _DeadlineConnection, SSLConnection: _DeadlineSSLConnection,
    UnixDomainSocketConnection: _DeadlineUnixConnection,
}


def _handshake(connection: Connection) -> None:
    """redis-py's connection handshake, failing as a `ConnectionError` (so redis-py drops the connection)
    when a reply has an unexpected shape; otherwise the half-open connection would go back to the pool."""
    try:
        connection.on_connect()  # type: ignore[no-untyped-call]
    except (AttributeError, TypeError, LookupError, ValueError) as exc:
        raise RedisConnectionError(f"unexpected reply to the connection handshake ({type(exc).__name__})") from exc


def _expect(result: object, types: tuple[type, ...], command: str) -> None:
    if not isinstance(result, types):
        raise _UnexpectedReply(f"unexpected {type(result).__name__} reply to {command}")


_VALUE = (bytes, type(None))  # what GET answers


@dataclass(frozen=True, slots=True)
class RedisCacheStatus:
    """Counters of a `RedisCache`, for health checks and metrics.

    Attributes:
        available: Redis is not being skipped (the circuit breaker is closed).
        hits: reads that returned an authentic, unexpired value.
        misses: reads that found nothing (or an expired entry).
        errors: calls that failed or timed out.
        skipped: calls not sent because Redis was being skipped after a failure.
        tampered: entries ignored because their MAC did not check out.
        retry_in: seconds before Redis is tried again (0 when available).
    """

    available: bool
    hits: int
    misses: int
    errors: int
    skipped: int
    tampered: int
    retry_in: float


class _LoopClient:
    """The async client of one event loop and the async generator that closes it when the loop shuts down."""

    __slots__ = ("client", "guard")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.guard: AsyncGenerator[None, None] | None = None


class RedisCache:
    """A `SharedStore` in Redis: HMAC-authenticated, expiring entries; never raises, never stalls.

    Args:
        url: `redis://`, `rediss://` or `unix://` URL (may carry a password; never shown in `repr`).
        secret: at least 32 characters shared by every replica; authenticates entries and derives key names.
            Changing it makes every existing entry unreadable (they expire on their own).
        prefix: prepended to every key name; use one per environment (`k8s-jwt-auth:prod:`).
        timeout: seconds any Redis call may take before it is given up (and Redis skipped for a while).
        client: a ready `redis.Redis` to use instead of one built from `url` (its timeouts are its own);
            without `url`, async calls run it in a worker thread.
        clock: Unix seconds, for the expiry embedded in entries (inject one in tests).
        timer: monotonic seconds, for the circuit breaker and log rate limits (inject one in tests).

    Raises:
        ConfigurationError: without `url` or `client`, with a short secret, an empty prefix or a bad timeout.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        secret: str | bytes,
        prefix: str = "k8s-jwt-auth:",
        timeout: float = 0.1,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_CACHE_SECRET:
            raise ConfigurationError(f"the cache secret must be at least {MIN_CACHE_SECRET} characters (e.g. "
                                     "`openssl rand -hex 32`), shared by every replica", setting="CACHE_SECRET")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("the Redis key prefix must be a non-empty string", setting="REDIS_PREFIX")
        timeout = seconds(timeout, "the Redis timeout", positive=True, setting="REDIS_TIMEOUT")
        if url is None and client is None:
            raise ConfigurationError("RedisCache needs a url (redis://host:6379/0) or a client",
                                     setting="REDIS_URL")
        self._name_key = hmac.new(key, b"k8s-jwt-auth redis key names v1", hashlib.sha256).digest()
        self._value_key = hmac.new(key, b"k8s-jwt-auth redis values v1", hashlib.sha256).digest()
        self.prefix, self.timeout = prefix, float(timeout)
        self._url, self._clock, self._timer = url, clock, timer
        self._client = client if client is not None else redis.Redis.from_url(url, **self._sync_options(url))  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._leases: dict[str, bytes] = {}
        self._hits = self._misses = self._errors = self._skipped = self._tampered = 0
        self._down_until = -math.inf  # skip Redis until then (timer)
        self._backoff = 0.0  # > 0: in an outage (warned once), the next back-off after a failed probe
        self._epoch = 0  # changes with each back-off and recovery
        self._tamper_logged_at, self._tamper_unlogged = -math.inf, 0

    @classmethod
    def from_config(cls, config: VerifierConfig) -> RedisCache:
        """The cache `config.redis_url`, `cache_secret`, `redis_prefix` and `redis_timeout` describe.

        Raises:
            ConfigurationError: when `redis_url` or `cache_secret` is not set.
        """
        if config.redis_url is None or config.cache_secret is None:
            raise ConfigurationError("a Redis cache needs redis_url and cache_secret (K8S_JWT_AUTH_REDIS_URL, "
                                     "K8S_JWT_AUTH_CACHE_SECRET)", setting="REDIS_URL")
        return cls(config.redis_url, secret=config.cache_secret, prefix=config.redis_prefix,
                   timeout=config.redis_timeout)

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self.prefix!r}, timeout={self.timeout!r})"

    def _options(self, retry: type[Retry] | type[AsyncRetry]) -> dict[str, Any]:
        return {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                "retry": retry(NoBackoff(), 0), "client_name": "k8s-jwt-auth"}

    def _sync_options(self, url: str | None) -> dict[str, Any]:
        """The sync client's options: its connections obey each call's deadline (see `_DeadlineSocket`)."""
        scheme_class = parse_url(url).get("connection_class", Connection) if url is not None else Connection  # type: ignore[no-untyped-call]
        return {**self._options(Retry), "connection_class": _DEADLINE_CLASSES.get(scheme_class, scheme_class),
                "redis_connect_func": _handshake}

    # -- SharedStore -----------------------------------------------------------------------------

    def get(self, namespace: str, key: bytes) -> bytes | None:
        """The value under (namespace, key) if present, authentic and not expired; `None` otherwise."""
        name = self._name(namespace, key)
        raw = self._call(lambda: self._client.get(name), _VALUE, "GET")
        return self._read(namespace, name, raw)

    async def aget(self, namespace: str, key: bytes) -> bytes | None:
        """Like `get`, without blocking the event loop."""
        name = self._name(namespace, key)
        raw = await self._acall(lambda c: c.get(name), lambda: self._client.get(name), _VALUE, "GET")
        return self._read(namespace, name, raw)

    def set(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        """Store `value` for at most `ttl` seconds (nothing for `ttl <= 0`); failures are swallowed."""
        entry = self._entry(namespace, key, value, ttl)
        if entry is not None:
            name, data, px = entry
            self._call(lambda: self._client.set(name, data, px=px))

    async def aset(self, namespace: str, key: bytes, value: bytes, ttl: float) -> None:
        """Like `set`, without blocking the event loop."""
        entry = self._entry(namespace, key, value, ttl)
        if entry is not None:
            name, data, px = entry
            await self._acall(lambda c: c.set(name, data, px=px), lambda: self._client.set(name, data, px=px))

    def replace(self, namespace: str, key: bytes, value: bytes, ttl: float, *, keep: Callable[[bytes], bool]) -> bool:
        """Store `value` like `set`, unless the authentic value stored now is one `keep` says must stay; read and
        write in one step (`WATCH`/`MULTI`/`EXEC`). `False` when nothing was stored: kept, another write came in
        between, or Redis failed."""
        entry = self._entry(namespace, key, value, ttl)
        if entry is None:
            return False
        name, data, px = entry
        return self._call(lambda: self._replace(namespace, name, data, px, keep), (bool,), "WATCH/EXEC") is True

    async def areplace(self, namespace: str, key: bytes, value: bytes, ttl: float, *,
                       keep: Callable[[bytes], bool]) -> bool:
        """Like `replace`, without blocking the event loop."""
        entry = self._entry(namespace, key, value, ttl)
        if entry is None:
            return False
        name, data, px = entry
        done = await self._acall(lambda c: self._areplace(c, namespace, name, data, px, keep),
                                 lambda: self._replace(namespace, name, data, px, keep), (bool,), "WATCH/EXEC")
        return done is True

    def try_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        """Take a lease for `ttl` seconds; `False` if another process holds it or Redis cannot be reached."""
        name, token, px = self._lease(namespace, key, ttl)
        done = self._call(lambda: self._client.set(name, token, px=px, nx=True))
        return self._leased(name, token, done)

    async def atry_lock(self, namespace: str, key: bytes, ttl: float) -> bool:
        """Like `try_lock`, without blocking the event loop."""
        name, token, px = self._lease(namespace, key, ttl)
        done = await self._acall(lambda c: c.set(name, token, px=px, nx=True),
                                 lambda: self._client.set(name, token, px=px, nx=True))
        return self._leased(name, token, done)

    def unlock(self, namespace: str, key: bytes) -> None:
        """Give back a lease taken by this object (a lease taken over by someone else is left alone)."""
        name = self._lock_name(namespace, key)
        with self._lock:
            token = self._leases.pop(name, None)
        if token is not None:
            self._call(lambda: self._client.eval(_UNLOCK, 1, name, token))

    async def aunlock(self, namespace: str, key: bytes) -> None:
        """Like `unlock`, without blocking the event loop."""
        name = self._lock_name(namespace, key)
        with self._lock:
            token = self._leases.pop(name, None)
        if token is not None:
            await self._acall(lambda c: c.eval(_UNLOCK, 1, name, token),
                              lambda: self._client.eval(_UNLOCK, 1, name, token))

    # -- observability and lifecycle -------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether Redis is being used (`False` while it is skipped after a failure)."""
        with self._lock:
            return self._timer() >= self._down_until

    def status(self) -> RedisCacheStatus:
        """A snapshot of the counters and the circuit breaker."""
        now = self._timer()
        with self._lock:
            return RedisCacheStatus(available=now >= self._down_until, hits=self._hits, misses=self._misses,
                                    errors=self._errors, skipped=self._skipped, tampered=self._tampered,
                                    retry_in=max(0.0, self._down_until - now))

    def close(self) -> None:
        """Close the sync client's connections and forget the async clients of loops that are closed.

        Async clients of loops still running are closed by `aclose()` on their loop or when the loop shuts down.
        """
        with self._lock:
            closed = [loop for loop in self._loops if loop.is_closed()]
            for loop in closed:
                _finish(self._loops.pop(loop))
        self._client.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop (e.g. in an ASGI lifespan shutdown)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.pop(loop, None)
        if entry is not None:
            if entry.guard is not None:
                await entry.guard.aclose()  # closes the client in its finally block
            else:
                await entry.client.aclose()

    # -- entries ---------------------------------------------------------------------------------

    def _name(self, namespace: str, key: bytes) -> str:
        digest = hmac.new(self._name_key, namespace.encode("utf-8") + b"\0" + key, hashlib.sha256).hexdigest()
        return f"{self.prefix}{namespace}:{digest}"

    def _lock_name(self, namespace: str, key: bytes) -> str:
        digest = hmac.new(self._name_key, b"lock\0" + namespace.encode("utf-8") + b"\0" + key,
                          hashlib.sha256).hexdigest()
        return f"{self.prefix}{namespace}:lock:{digest}"

    def _mac(self, name: str, expiry: bytes, payload: bytes) -> bytes:
        encoded = name.encode("utf-8")
        message = len(encoded).to_bytes(4, "big") + encoded + expiry + payload
        return hmac.new(self._value_key, message, hashlib.sha256).digest()

    def _entry(self, namespace: str, key: bytes, value: bytes, ttl: float) -> tuple[str, bytes, int] | None:
        px = math.floor(ttl * 1000) if ttl < math.inf else 0
        if px <= 0:
            return None
        name = self._name(namespace, key)
        expiry = (math.floor(self._clock() * 1000) + px).to_bytes(EXPIRY_SIZE, "big")
        return name, self._mac(name, expiry, value) + expiry + value, px

    def _read(self, namespace: str, name: str, raw: object) -> bytes | None:
        if raw is _FAILED:
            return None
        if raw is None:
            self._count("_misses")
            return None
        data = raw if isinstance(raw, bytes) else b""
        head = MAC_SIZE + EXPIRY_SIZE
        expiry = data[MAC_SIZE:head]
        if len(data) < head or not hmac.compare_digest(data[:MAC_SIZE], self._mac(name, expiry, data[head:])):
            self._tampered_entry(namespace, name)
            return None
        if int.from_bytes(expiry, "big") <= self._clock() * 1000:  # Redis kept it longer than it should
            self._count("_misses")
            return None
        self._count("_hits")
        return data[head:]

    def _replace(self, namespace: str, name: str, data: bytes, px: int, keep: Callable[[bytes], bool]) -> bool:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.watch(name)  # type: ignore[no-untyped-call]
            if self._kept(namespace, name, pipe.get(name), keep):
                return False
            pipe.multi()
            pipe.set(name, data, px=px)
            try:
                pipe.execute()
            except WatchError:  # written in between: that write stands
                return False
        return True

    async def _areplace(self, client: redis.asyncio.Redis, namespace: str, name: str, data: bytes, px: int,
                        keep: Callable[[bytes], bool]) -> bool:
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(name)
            if self._kept(namespace, name, await pipe.get(name), keep):
                return False
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(name, data, px=px)
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True

    def _kept(self, namespace: str, name: str, raw: object, keep: Callable[[bytes], bool]) -> bool:
        _expect(raw, _VALUE, "GET")
        current = self._read(namespace, name, raw)
        return current is not None and keep(current)

    def _tampered_entry(self, namespace: str, name: str) -> None:
        now = self._timer()
        with self._lock:
            self._tampered += 1
            if now - self._tamper_logged_at < TAMPER_LOG_INTERVAL:
                self._tamper_unlogged += 1
                return
            unlogged, self._tamper_unlogged, self._tamper_logged_at = self._tamper_unlogged, 0, now
        more = f" ({unlogged} more since the last warning)" if unlogged else ""
        logger.warning("ignoring a Redis cache entry that is not authentic (namespace %r, key %s...): it was "
                       "altered, or written with another cache secret%s", namespace,
                       name.rsplit(":", 1)[-1][:12], more)

    def _lease(self, namespace: str, key: bytes, ttl: float) -> tuple[str, bytes, int]:
        return self._lock_name(namespace, key), secrets.token_bytes(16), max(1, math.ceil(ttl * 1000))

    def _leased(self, name: str, token: bytes, done: object) -> bool:
        if done is _FAILED or not done:
            return False
        with self._lock:
            self._leases[name] = token
        return True

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    # -- calls and the circuit breaker -----------------------------------------------------------

    def _call(self, command: Callable[[], object], expect: tuple[type, ...] = (object,), what: str = "") -> object:
        """Run a sync command within ONE deadline of `timeout` seconds; `_FAILED` if skipped or failed."""
        epoch = self._admit()
        if epoch is None:
            return _FAILED
        deadline = _DEADLINE.set(time.monotonic() + self.timeout)
        try:
            result = command()
            _expect(result, expect, what)
        except _FAILURES as exc:
            self._failed(epoch, exc)
            return _FAILED
        finally:
            _DEADLINE.reset(deadline)
        self._succeeded()
        return result

    async def _acall(self, command: Callable[[redis.asyncio.Redis], Awaitable[T]], fallback: Callable[[], object],
                     expect: tuple[type, ...] = (object,), what: str = "") -> object:
        """Like `_call`, without blocking the loop: the whole call runs under `asyncio.wait_for(timeout)`."""
        epoch = self._admit()
        if epoch is None:
            return _FAILED
        try:
            if self._url is None:  # only a sync client was given: run it off the loop
                result: object = await asyncio.wait_for(asyncio.to_thread(fallback), self.timeout)
            else:
                result = await asyncio.wait_for(command(await self._loop_client()), self.timeout)
            _expect(result, expect, what)
        except _FAILURES as exc:
            self._failed(epoch, exc)
            return _FAILED
        self._succeeded()
        return result

    def _admit(self) -> int | None:
        """The breaker's epoch if a call may be sent now (`None`: skip Redis); after a back-off, one probe."""
        now = self._timer()
        with self._lock:
            if now < self._down_until:
                self._skipped += 1
                return None
            if self._backoff:  # this call probes; others skip until it answers (or the back-off ends)
                self._down_until = now + self._backoff
            return self._epoch

    def _failed(self, epoch: int, exc: BaseException) -> None:
        """Back off; calls that were already under way when another one failed do not back off again."""
        now = self._timer()
        with self._lock:
            self._errors += 1
            if epoch != self._epoch:
                return
            self._epoch += 1
            first = not self._backoff
            wait = BACKOFF_FIRST if first else self._backoff
            self._down_until, self._backoff = now + wait, min(BACKOFF_MAX, wait * 2)
        if first:
            logger.warning("the Redis cache is unavailable (%s: %s); verifying locally and skipping Redis for "
                           "%g s at a time until it answers again", type(exc).__name__, exc, wait)

    def _succeeded(self) -> None:
        with self._lock:
            recovered, self._backoff, self._down_until = bool(self._backoff), 0.0, -math.inf
            if recovered:
                self._epoch += 1
        if recovered:
            logger.info("the Redis cache is available again")

    # -- async clients, one per event loop -------------------------------------------------------

    async def _loop_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.get(loop)
            if entry is not None:
                return entry.client
            for old in [other for other in self._loops if other.is_closed()]:
                _finish(self._loops.pop(old))
            entry = self._loops[loop] = _LoopClient(
                redis.asyncio.Redis.from_url(cast(str, self._url), **self._options(AsyncRetry)))
        guard = self._closer(loop, entry)
        await guard.asend(None)  # started: the loop now finalizes it on shutdown (shutdown_asyncgens)
        entry.guard = guard
        return entry.client

    async def _closer(self, loop: asyncio.AbstractEventLoop, entry: _LoopClient) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._loops.get(loop) is entry:
                    del self._loops[loop]
            if not loop.is_closed():
                await entry.client.aclose()


def _finish(entry: _LoopClient) -> None:
    """Finish the guard of a closed loop's client without that loop (its finally block does no I/O then)."""
    if entry.guard is None:
        return
    closing = entry.guard.aclose()
    try:
        closing.send(None)
    except StopIteration:
        pass
    except RuntimeError:  # already running or finished
        closing.close()
