"""Candidate-set cache: Redis (shared, precomputed by Beam) or an in-process LRU, with single-flight.

Key layout — the contract with the Beam precompute job (beam_jobs/), which must write
exactly these keys and values (`<v>` = model version, `<u>` = user id; the braces are literal: the
user's hash tag, so on a Redis Cluster all of a user's keys share one hash slot):

  recsys:<v>:pre:{<u>}     written by the batch job; answers are PRECOMPUTED
  recsys:<v>:cache:{<u>}   written by the server after an online computation, with a TTL
                           (CacheConfig.ttl_s); answers are CACHE
  <events>:rv:{<u>}        the user's engagement counter, written by the event log (feedback/log.py)

The value of both entries is `CandidateSet.to_bytes()` (pipeline/candidates.py): the user's
candidates with the retrieval score and BOTH ranker heads, so requests with any blend
weights are served from one entry; a cached entry computed after the user's n-th streamed
engagement is prefixed with n (`pipeline.stamp`). Keys are namespaced by model version, so a
new version never reads an old version's scores; a value whose embedded model_version differs
from its key's is treated as corrupt.

Freshness by construction: one lookup is one MGET of the precomputed entry, the cached entry
and the user's counter (one slot, so one round trip on a cluster too). A precomputed entry
(batch history only) is valid while the counter is 0; a cached entry while its stamp equals
the counter; anything else is a miss, computed with the history up to the counter read. So a
Recommend that starts after a LogEvents engagement was acknowledged — by any process — never
answers from an entry computed without it. A near-cache entry is checked the same way: its
hit is used only while the counter still equals its stamp (`near_validate`; false = near hits
check nothing and may lag up to near_ttl_s behind another process's engagement; engagements this
process acknowledged are never served stale). On one Redis, Redis itself tells each process which
counters changed (`near_invalidations`, serving/invalidation.py: CLIENT TRACKING BCAST, strict by
construction), so a near hit reads nothing; it reads the counter (a one-key MGET) only when the
messages cannot vouch for it (reconnecting, unread messages, TLS, Redis Cluster).

In front of Redis sits a small per-process "near" cache (`near_ttl_s`, default 30 s) of
decoded entries: a hot user's repeated requests skip the Redis round trip and the decode,
and each entry memoizes its response per (weights, k) so repeating a request shape costs
no re-blend. Its short TTL bounds how stale a process can be after the batch job
rewrites an entry; 0 turns it off. Without Redis the in-process LRU is the only layer.
Behind it, with or without the near cache, every Redis read is compared with the bytes it
last decoded for that key (`decoded_max_entries`): unchanged bytes reuse the decoded entry
and its memoized responses, so a repeat Redis hit costs the round trip and a memcmp, never
stale data.

Redis trouble is never an RPC failure: every redis.RedisError is caught, counted in
`recsys_redis_faults_total` and the request goes on to the online path. After a
connection error or timeout Redis is skipped for `circuit_open_s` (counted as
`circuit_open`), so an outage costs one timeout per interval rather than one per request.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.redis_url import REDIS_ERRORS, connect
from pipeline import CandidateSet, CorruptEntryError, cache_key, precomputed_key, stamp, unstamp
from serving.invalidation import CounterInvalidations
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

CACHE = "cache"
PRECOMPUTED = "precomputed"
ONLINE = "online"


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """Where candidate sets are cached and how hard to try reaching Redis."""

    redis_url: str = ""              # e.g. redis://localhost:6379/0; "" = in-process LRU
    ttl_s: int = 3600                # lifetime of online-computed entries (precomputed ones: the job's)
    local_max_entries: int = 100_000  # in-process LRU size when no Redis is configured
    socket_timeout_s: float = 0.05   # per Redis command; a slower Redis counts as a fault
    connect_timeout_s: float = 0.05
    retries: int = 1                 # retries after a connection error/timeout, exponential backoff
    retry_backoff_s: float = 0.002   # first backoff; doubles, capped at 4x
    circuit_open_s: float = 1.0      # skip Redis this long after a connection error or timeout
    max_connections: int = 64        # connection pool size (>= server worker threads)
    near_ttl_s: float = 30.0         # per-process cache in front of Redis; 0 = off
    near_max_entries: int = 10_000
    # Decoded entries kept per key beside the bytes they came from: a Redis hit whose bytes are
    # unchanged reuses the decoded entry (and its memoized responses) instead of decoding and
    # blending again. Every hit still reads Redis, so this never serves stale data. 0 = off.
    decoded_max_entries: int = 10_000
    # Each request thread reads Redis (the hit path's MGET) on a connection of its own, with the
    # client's timeouts and retry policy but without redis-py's per-command pool checkout (a lock,
    # a readiness poll, timeout toggles: GIL hand-offs under gRPC's threads). false = the pool.
    thread_read_connections: bool = True
    # A near-cache hit is used only while the user's engagement counter is unchanged (known from Redis's invalidation
    # messages, or read: near_invalidations), so another process's engagement is reflected at once. false = near
    # hits check nothing (lag up to near_ttl_s behind an engagement logged through another process).
    near_validate: bool = True
    # How a validated near hit learns of a new engagement: Redis pushes every changed counter key to each
    # process (CLIENT TRACKING BCAST, serving/invalidation.py), so a hit reads nothing and stays strictly
    # fresh; it reads the counter whenever that cannot be certain (reconnecting, unread messages, TLS, Redis
    # Cluster). false = every validated near hit reads the counter.
    near_invalidations: bool = True

    def __post_init__(self) -> None:
        if self.ttl_s < 1:
            raise ValueError(f"--ttl-s must be >= 1 second, got {self.ttl_s}")
        if self.local_max_entries < 1:
            raise ValueError(f"--local-max-entries must be >= 1, got {self.local_max_entries}")
        for name in ("socket_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.retries < 0 or self.max_connections < 1 or self.circuit_open_s < 0:
            raise ValueError("--retries and --circuit-open-s must be >= 0 and --max-connections >= 1")
        if self.decoded_max_entries < 0:
            raise ValueError(f"--decoded-max-entries must be >= 0, got {self.decoded_max_entries}")
        if self.near_ttl_s < 0 or self.near_max_entries < 1:
            raise ValueError(f"--near-ttl-s must be >= 0 and --near-max-entries >= 1, got {self.near_ttl_s}, "
                             f"{self.near_max_entries}")


class CandidateStore(Protocol):
    """Where candidate sets live between requests."""

    def get(self, model_version: str, user_id: str) -> tuple[CandidateSet, str] | None:
        """(candidates, CACHE or PRECOMPUTED), or None on a miss or any store fault."""

    def put(self, model_version: str, user_id: str, candidates: CandidateSet) -> None:
        """Stores an online-computed entry; faults are counted, never raised."""

    def close(self) -> None: ...


@dataclasses.dataclass
class CacheEntry:
    """A decoded candidate set held in process, with memoized per-request-shape results.

    Attributes:
      candidates: the user's candidate set.
      source: CACHE or PRECOMPUTED — what a later hit on this entry reports.
      memo: (weights, k) → (the finished response, its item ids, its serialized bytes), filled by the servicer
        (at most MEMO_SIZE).
      counter: the user's engagement counter (feedback/log.py) these candidates were computed at.
      tracked: the invalidation snapshot (serving/invalidation.py) taken before the Redis read that last
        confirmed `counter`; a near hit is valid without a read while no invalidation came after it.
    """

    candidates: CandidateSet
    source: str = CACHE
    memo: dict = dataclasses.field(default_factory=dict)
    counter: int = 0  # the user's engagement counter the candidates were computed at
    # CounterInvalidations.snapshot() taken before the read `counter` was last confirmed by (-1 = never)
    tracked: int = -1

    MEMO_SIZE = 8


class LocalCandidateStore:
    """Thread-safe in-process LRU with a TTL: the only cache without Redis, the near cache with it."""

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple[str, str], tuple[float, CacheEntry]] = collections.OrderedDict()

    @property
    def max_entries(self) -> int:
        return self._max

    def get_entry(self, model_version: str, user_id: str) -> CacheEntry | None:
        # Read without the lock (a hit is the hot path): OrderedDict.get and move_to_end are single C calls
        # on keys of strings, so under the GIL each is atomic against the writers, which hold the lock.
        key = (model_version, user_id)
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            with self._lock:
                if self._entries.get(key) is found:
                    del self._entries[key]
            return None
        try:
            self._entries.move_to_end(key)
        except KeyError:  # evicted or replaced meanwhile: the entry read is still a valid answer
            pass
        return found[1]

    def put_entry(self, model_version: str, user_id: str, entry: CacheEntry) -> None:
        key = (model_version, user_id)
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def get(self, model_version: str, user_id: str) -> tuple[CandidateSet, str] | None:
        entry = self.get_entry(model_version, user_id)
        return None if entry is None else (entry.candidates, entry.source)

    def put(self, model_version: str, user_id: str, candidates: CandidateSet) -> None:
        self.put_entry(model_version, user_id, CacheEntry(candidates))

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


def redis_client(config: CacheConfig) -> redis.Redis:
    """A redis-py client with explicit timeouts, bounded retries and a blocking pool.

    redis-py's default retry policy backs off for up to seconds; a cache must give up in
    milliseconds and let the request compute instead, hence the explicit Retry.
    A `redis+cluster://` URL gives a RedisCluster client (core/redis_url.py) with the same timeouts and retry
    policy; its retries also re-read the slot map, which is how a replica promoted by a failover is found.
    """
    retry = Retry(ExponentialBackoff(cap=4 * config.retry_backoff_s, base=config.retry_backoff_s),
                  config.retries, supported_errors=(redis.ConnectionError, redis.TimeoutError, TimeoutError))
    return connect(config.redis_url, flag="--redis-url", socket_timeout=config.socket_timeout_s,
                   connect_timeout=config.connect_timeout_s, max_connections=config.max_connections, retry=retry)


class ThreadConnections:
    """MGET on a connection owned by the calling thread: one send and one receive, made like the client's pool
    makes connections.

    redis-py's `client.mget` checks a connection out of the pool and back in per command (a
    lock, a pid check, a non-blocking readiness read, two timeout toggles), and each of those
    syscalls releases the GIL that the gRPC server's other threads are waiting for: a Redis hit
    cost ~50 more futex calls than a near-cache hit (strace, bench/RESULTS.md issue 14). A
    connection per request thread needs no checkout. Each connection is opened by redis-py (the
    pool's settings: address, auth, db, timeouts, protocol), then its socket is switched to
    blocking mode with the same timeouts set in the kernel (SO_RCVTIMEO / SO_SNDTIMEO): a
    command is then one `send` and usually one `recv` syscall, where a Python socket timeout
    adds a `poll` before each. The reply is parsed by hiredis (redis-py's own parser). The
    semantics are redis-py's: a stall longer than the socket timeout is `redis.TimeoutError`, a
    dead socket `redis.ConnectionError`, an error reply `redis.ResponseError`; on the first two
    the client's retry policy disconnects (a late reply can never be read by the next command),
    backs off and retries. TLS connections keep redis-py's own send and read. There is at most one
    connection per thread that ever read; `close` disconnects them all.
    """

    _BUFFER = 65536

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list = []
        self._closed = False

    def _link(self) -> _Link:
        link = getattr(self._local, "link", None)
        if link is None:
            with self._lock:
                if self._closed:
                    raise redis.ConnectionError("the Redis store is closed")
                link = self._local.link = _Link(self._make())
                self._connections.append(link.conn)
        return link

    def mget(self, keys: list[str] | tuple[str, ...]) -> list[bytes | None]:
        """The values of `keys` (None where missing); raises redis.RedisError like `client.mget`.

        The usual call (this thread's connection is open) is one round trip with nothing around it: the
        command packed by hiredis (what redis-py's packer calls), no retry wrapper. Only when that attempt
        fails, or the connection must be (re)opened, does the client's retry policy run — with that failure
        counted as its first, so the attempts, disconnects and backoffs are the policy's own.
        """
        if self._closed:
            raise redis.ConnectionError("the Redis store is closed")
        link = getattr(self._local, "link", None)
        failed: list[BaseException] = []
        if link is not None and link.sock is not None and link.conn._sock is link.sock:
            try:
                return _round_trip(link, hiredis.pack_command(("MGET", *keys)))
            except Exception as e:  # handed to the retry policy below, which decides
                failed.append(e)
        link = link or self._link()

        def attempt() -> list[bytes | None]:
            if failed:  # the fast attempt's failure, as the policy's first (it disconnects, backs off or raises)
                raise failed.pop()
            return self._mget(link, keys)

        return link.conn.retry.call_with_retry(attempt, lambda error: link.conn.disconnect())

    def _mget(self, link: _Link, keys) -> list[bytes | None]:
        conn = link.conn
        sock = conn._sock  # redis-py's socket of this connection; None once disconnected
        if sock is None or sock is not link.sock:
            conn.connect()  # redis-py's handshake (AUTH, SELECT, ...) with its own timeouts
            sock = conn._sock
            if isinstance(sock, ssl.SSLSocket):
                link.sock = None
                conn.send_command("MGET", *keys)
                return conn.read_response()
            _kernel_timeouts(sock, conn.socket_timeout)
            link.sock = sock
            link.reader = hiredis.Reader(protocolError=redis.ConnectionError, replyError=redis.ResponseError)
        return _round_trip(link, hiredis.pack_command(("MGET", *keys)))  # the fast path's packer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.disconnect()


class _Link:
    """One thread's Redis connection (redis-py's, for the handshake and the retry policy) and its socket switched
    to blocking mode with kernel timeouts (None: not yet, or TLS), with the hiredis reader and receive buffer."""

    __slots__ = ("conn", "sock", "reader", "buffer")

    def __init__(self, conn) -> None:
        self.conn = conn
        self.sock: socket.socket | None = None
        self.reader = None
        self.buffer = bytearray(ThreadConnections._BUFFER)


def _round_trip(link: _Link, command: bytes):
    """Sends one packed command on the link's socket and returns its parsed reply (redis-py's errors)."""
    sock, reader, buffer = link.sock, link.reader, link.buffer
    try:
        sock.sendall(command)
        reply = False
        while reply is False:
            n = sock.recv_into(buffer)
            if not n:
                raise redis.ConnectionError("Connection closed by server.")
            reader.feed(buffer, 0, n)
            reply = reader.gets()
    except (BlockingIOError, TimeoutError) as e:  # the kernel timeout expired (EAGAIN)
        raise redis.TimeoutError("Timeout reading from Redis") from e
    except OSError as e:
        raise redis.ConnectionError(f"Error while reading from Redis: {e}") from e
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


def _kernel_timeouts(sock: socket.socket, timeout_s: float | None) -> None:
    """Blocking mode, with `timeout_s` as the kernel's send and receive timeouts (None = none)."""
    sock.settimeout(None)
    if timeout_s:
        seconds, micros = divmod(round(timeout_s * 1e6), 1_000_000)
        timeval = struct.pack("ll", seconds, micros if seconds else max(micros, 1))  # (0, 0) would be no timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class RedisCandidateStore:
    """Candidate sets in Redis under the key layout in this module's docstring."""

    def __init__(self, client: redis.Redis, ttl_s: int, metrics: ServingMetrics, circuit_open_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, decoded_max_entries: int = 0,
                 thread_read_connections: bool = True) -> None:
        self.client = client
        self._ttl = ttl_s
        self._metrics = metrics
        self._circuit_open_s = circuit_open_s
        self._clock = clock
        self._closed_until = 0.0  # Redis is skipped while clock() < this
        self._decoded_max = decoded_max_entries
        # key → (the exact bytes read, the entry decoded from them); LRU-bounded
        self._decoded: collections.OrderedDict[str, tuple[bytes, CacheEntry]] = collections.OrderedDict()
        self._decoded_lock = threading.Lock()
        # A cluster client routes each command to its slot's node itself (no single pool to make connections from).
        cluster = isinstance(client, redis.RedisCluster)
        self._reader = ThreadConnections(client) if thread_read_connections and not cluster else None

    @classmethod
    def from_config(cls, config: CacheConfig, metrics: ServingMetrics) -> RedisCandidateStore:
        return cls(redis_client(config), config.ttl_s, metrics, config.circuit_open_s,
                   decoded_max_entries=config.decoded_max_entries,
                   thread_read_connections=config.thread_read_connections)

    def _skip(self, op: str) -> bool:
        if self._closed_until and self._clock() < self._closed_until:
            self._metrics.redis_fault(op, "circuit_open")
            return True
        return False

    def _fault(self, op: str, e: BaseException) -> None:
        kind = "timeout" if isinstance(e, redis.TimeoutError) else "error"
        # the cluster client's own errors (no node for a slot, the slot map unreadable mid-failover) are outages too
        if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException,
                          redis.exceptions.ClusterDownError)):
            if not self._closed_until or self._clock() >= self._closed_until:
                log.warning("redis %s failed (%s: %s); serving online, skipping Redis for %.1fs", op,
                            type(e).__name__, e, self._circuit_open_s, extra={"event": "redis_fault", "op": op})
            self._closed_until = self._clock() + self._circuit_open_s
        else:
            log.warning("redis %s failed: %s: %s", op, type(e).__name__, e, extra={"event": "redis_fault", "op": op})
        self._metrics.redis_fault(op, kind)

    def get(self, model_version: str, user_id: str) -> tuple[CandidateSet, str] | None:
        entry = self.get_entry(model_version, user_id)
        return None if entry is None else (entry.candidates, entry.source)

    def get_entry(self, model_version: str, user_id: str) -> CacheEntry | None:
        """The decoded entry for the user (precomputed first), or None on a miss or any fault (no counter check)."""
        return self.lookup(model_version, user_id)[0]

    def _mget(self, keys: tuple[str, ...]) -> list[bytes | None]:
        return self._reader.mget(keys) if self._reader is not None else self.client.mget(keys)

    def lookup_keys(self, model_version: str, user_id: str, counter_key: str | None = None) -> tuple[str, ...]:
        """The keys `lookup` reads in one MGET: the precomputed entry, the cached entry[, the counter]."""
        keys = (precomputed_key(model_version, user_id), cache_key(model_version, user_id))
        return keys + (counter_key,) if counter_key else keys

    @property
    def circuit_open(self) -> bool:
        """True while Redis is skipped after a failure (nothing counted: see `_skip`)."""
        return bool(self._closed_until) and self._clock() < self._closed_until

    def lookup(self, model_version: str, user_id: str, counter_key: str | None = None,
               values: Sequence[bytes | None] | None = None) -> tuple[CacheEntry | None, int | None]:
        """(the user's valid entry or None, the user's engagement counter or None when it was not read).

        With `counter_key` the counter is read in the same MGET as both entries, and an entry is
        valid only for it (module docstring); without it (no event log) every entry is valid.
        A fault (or the open circuit) is (None, None). `values`: the reply of that MGET (`lookup_keys`)
        when the caller made it (serving/aio.py reads on its event loop); nothing is read then, and a corrupt
        entry is neither logged nor counted: the caller's fallback, get_or_compute, reads it again and does both.
        """
        keys = self.lookup_keys(model_version, user_id, counter_key)
        report = values is None
        if values is None:
            if self._skip("get"):
                return None, None
            try:
                values = self._mget(keys)
            except REDIS_ERRORS as e:
                self._fault("get", e)
                return None, None
        self._closed_until = 0.0
        counter = None
        if counter_key:
            raw_counter = values[2]
            try:
                counter = int(raw_counter) if raw_counter is not None else 0
            except ValueError:
                if report:
                    self._metrics.redis_fault("get", "corrupt")
                return None, None
        for key, raw, source in ((keys[0], values[0], PRECOMPUTED), (keys[1], values[1], CACHE)):
            if raw is None:
                continue
            if self._decoded_max:
                with self._decoded_lock:
                    known = self._decoded.get(key)
                if known is not None and known[0] == raw:  # the same bytes: the same decoded entry
                    if counter is None or known[1].counter == counter:
                        return known[1], counter
                    continue
            at, data = unstamp(raw) if source == CACHE else (0, raw)
            if counter is not None and at != counter:
                continue  # computed before the user's latest engagement (or for a counter that expired)
            try:
                candidates = CandidateSet.from_bytes(data)
            except CorruptEntryError as e:
                if report:
                    log.warning("corrupt cache entry for user %r (%s); recomputing", user_id, e,
                                extra={"event": "corrupt_entry"})
                    self._metrics.redis_fault("get", "corrupt")
                continue
            if candidates.model_version != model_version:
                if report:
                    self._metrics.redis_fault("get", "corrupt")
                continue
            entry = CacheEntry(candidates, source, counter=at)
            if self._decoded_max:
                with self._decoded_lock:
                    self._decoded[key] = (raw, entry)
                    self._decoded.move_to_end(key)
                    while len(self._decoded) > self._decoded_max:
                        self._decoded.popitem(last=False)
            return entry, counter
        return None, counter

    def read_counter(self, counter_key: str) -> int | None:
        """The user's engagement counter (0 = none); None on a fault or while the circuit is open."""
        if self._skip("get"):
            return None
        try:
            raw = self._mget((counter_key,))[0]
        except REDIS_ERRORS as e:
            self._fault("get", e)
            return None
        self._closed_until = 0.0
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            self._metrics.redis_fault("get", "corrupt")
            return None

    def put(self, model_version: str, user_id: str, candidates: CandidateSet, counter: int = 0) -> None:
        if self._skip("set"):
            return
        try:
            self.client.set(cache_key(model_version, user_id), stamp(counter, candidates.to_bytes()), ex=self._ttl)
        except REDIS_ERRORS as e:
            self._fault("set", e)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        with self._decoded_lock:
            self._decoded.clear()
        self.client.close()


class SingleFlight:
    """Runs one computation per key at a time; concurrent callers of the same key share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[object, concurrent.futures.Future] = {}

    def do(self, key: object, fn: Callable[[], T], timeout: float | None = None,
           after: Callable[[T], None] | None = None) -> tuple[T, bool]:
        """(fn(), False) for the caller that runs it; (its result, True) for those who waited.

        `after(result)` runs in the leader once waiters have been released but before the
        key is free again (used to write the cache, so no new caller recomputes meanwhile).
        Waiters raise concurrent.futures.TimeoutError after `timeout` seconds, and the
        leader's exception if it failed.
        """
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if leader:
                future = self._calls[key] = concurrent.futures.Future()
        if not leader:
            return future.result(timeout), True
        try:
            try:
                result = fn()
            except BaseException as e:
                future.set_exception(e)
                raise
            future.set_result(result)
            if after is not None:
                after(result)
            return result, False
        finally:
            with self._lock:
                del self._calls[key]

    def in_flight(self) -> int:
        with self._lock:
            return len(self._calls)


class CandidateCache:
    """Near cache → store (Redis or in-process) → on a miss compute once (single-flight) → store."""

    def __init__(self, store: CandidateStore, metrics: ServingMetrics,
                 near: LocalCandidateStore | None = None, near_validate: bool = True,
                 near_invalidations: bool = True) -> None:
        self.store = store
        self.near = near
        self.near_validate = near_validate
        self._near_invalidations = near_invalidations
        # The layer a hit can come from without leaving the process: the near cache, or the store without Redis.
        self._local = near if near is not None else (store if isinstance(store, LocalCandidateStore) else None)
        self._counts_engagements = hasattr(store, "lookup")  # fixed with the store; read on every hit
        # One Redis (not a cluster): connections of our own can be made like the pool's (connection_factory)
        self._single_redis = isinstance(store, RedisCandidateStore) and not isinstance(store.client, redis.RedisCluster)
        # Set by track_counters: validated near hits read the counter only when these cannot vouch for it.
        self.invalidations: CounterInvalidations | None = None
        self._metrics = metrics
        self._flight = SingleFlight()
        # user → the highest engagement counter this process has seen acknowledged (LogEvents here): an
        # unvalidated near entry below it is stale, so the process that logged an engagement never serves
        # the list from before it, even with near_validate off. Bounded: oldest users dropped first.
        self._seen_counters: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._seen_lock = threading.Lock()
        self._seen_max = max(near.max_entries if near is not None else 0, 1024)

    @classmethod
    def from_config(cls, config: CacheConfig, metrics: ServingMetrics) -> CandidateCache:
        if not config.redis_url:
            return cls(LocalCandidateStore(config.local_max_entries, config.ttl_s), metrics)
        near = LocalCandidateStore(config.near_max_entries, config.near_ttl_s) if config.near_ttl_s > 0 else None
        return cls(RedisCandidateStore.from_config(config, metrics), metrics, near, config.near_validate,
                   config.near_invalidations)

    def track_counters(self, prefix: str) -> None:
        """Validates near hits by Redis's invalidation messages for the counter keys under `prefix` (the event
        log's, in this cache's Redis) instead of a read per hit, where that can work: a near cache, validation on,
        `near_invalidations`, one Redis (not a cluster). Otherwise (or while it is down) hits read the counter."""
        connect = self.connection_factory()
        if (self.near is None or not self.near_validate or not self._near_invalidations or self.invalidations
                is not None or connect is None):
            return
        tracker = CounterInvalidations(connect, prefix, max_keys=max(self.near.max_entries, 1024))
        registry = self._metrics.registry
        from prometheus_client import Gauge

        Gauge("recsys_near_tracking_up", "1 while near-cache hits are validated by Redis's invalidation messages "
              "(0: each reads the engagement counter)", registry=registry).set_function(lambda: float(tracker.up))
        Gauge("recsys_near_invalidations", "Invalidation messages received for engagement counters since start",
              registry=registry).set_function(lambda: tracker.messages)
        self.invalidations = tracker.start()

    def connection_factory(self) -> Callable[[], redis.connection.AbstractConnection] | None:
        """A function making a new, unconnected redis-py connection with the store pool's settings (address, auth,
        db, timeouts, protocol), for connections of their own (invalidation tracking, an event loop's reads); None
        without a single Redis (in-process store, Redis Cluster)."""
        if not self._single_redis:
            return None
        pool = self.store.client.connection_pool
        return lambda: pool.connection_class(**pool.connection_kwargs)

    @property
    def counts_engagements(self) -> bool:
        """True when lookups can read users' engagement counters with the entries (a Redis store)."""
        return self._counts_engagements

    def get_or_compute(self, model_version: str, user_id: str, compute: Callable[..., CandidateSet],
                       timeout: float | None = None, counter_key: str | None = None) -> tuple[CacheEntry, str]:
        """(entry, CACHE | PRECOMPUTED | ONLINE): where this request's answer came from.

        With `counter_key` (the user's engagement counter, in the entries' hash slot; needs
        `counts_engagements`) an entry is used only if it was computed at the counter read in the
        same round trip, and `compute(counter)` is called with that counter (0 when Redis could
        not say: batch history only); the entry returned carries it. Without it, `compute()`.

        Raises concurrent.futures.TimeoutError if another request's computation of the
        same user does not finish within `timeout` seconds.
        """
        local = self._local
        counting = counter_key is not None and self._counts_engagements
        counter: int | None = None
        if local is not None:
            entry = self._local_hit(local, model_version, user_id, counter_key if counting else None)
            if entry is not None:
                return entry, entry.source
        since = self._snapshot()  # before the read the counter comes from (used only where a counter was read)
        if local is not self.store:
            if counting:
                entry, counter = self.store.lookup(model_version, user_id, counter_key)
            elif (get_entry := getattr(self.store, "get_entry", None)) is not None:
                entry = get_entry(model_version, user_id)
            else:
                hit = self.store.get(model_version, user_id)
                entry = None if hit is None else CacheEntry(*hit)
            if entry is not None:
                return self._store_hit(model_version, user_id, entry, counter, since), entry.source
        self._metrics.cache_lookup("miss")
        at = counter or 0

        def computed() -> CacheEntry:
            entry = CacheEntry(compute(at) if counting else compute(), counter=at)
            self._metrics.online_computations.inc()  # after: a compute that declines (raises) computed nothing
            return entry

        def store(entry: CacheEntry) -> None:
            if local is self.store:
                self.store.put_entry(model_version, user_id, entry)
                return
            if counting and counter is None:
                pass  # Redis failed (circuit open): do not write what was computed without the streamed history
            elif counting:
                self.store.put(model_version, user_id, entry.candidates, at)
            else:
                self.store.put(model_version, user_id, entry.candidates)
            if self.near is not None:
                if counter is not None:
                    entry.tracked = since
                self.near.put_entry(model_version, user_id, entry)

        entry, shared = self._flight.do((model_version, user_id, at), computed, timeout, after=store)
        if shared:
            self._metrics.singleflight_shared.inc()
        return entry, ONLINE

    def _snapshot(self) -> int:
        """The invalidation snapshot to take before a Redis read that confirms a counter (-1 without tracking)."""
        tracker = self.invalidations
        return tracker.snapshot() if tracker is not None else -1

    def _store_hit(self, model_version: str, user_id: str, entry: CacheEntry, counter: int | None,
                   since: int) -> CacheEntry:
        """Counts a hit from the store and keeps it in the near cache (confirmed at `since` when a counter was
        read with it)."""
        self._metrics.cache_lookup("hit" if entry.source == CACHE else "precomputed")
        if self.near is not None:
            if counter is not None:
                entry.tracked = since
            self.near.put_entry(model_version, user_id, entry)
        return entry

    def remote_read(self, model_version: str, user_id: str, counter_key: str | None = None
                    ) -> tuple[tuple[str, ...], int] | None:
        """(keys, since) of the one MGET get_or_compute would make for this user past the near cache, for a
        caller that makes it itself (serving/aio.py: on its event loop) and then calls `remote_hit`; None = no
        such read (no Redis store, a Redis Cluster, the circuit open after a fault: use get_or_compute).
        `since` is the invalidation snapshot taken before the read (CounterInvalidations)."""
        if not self._single_redis or self.store.circuit_open:
            return None
        counting = counter_key is not None and self._counts_engagements
        return self.store.lookup_keys(model_version, user_id, counter_key if counting else None), self._snapshot()

    def remote_hit(self, model_version: str, user_id: str, counter_key: str | None,
                   values: Sequence[bytes | None], since: int) -> CacheEntry | None:
        """What get_or_compute answers from `remote_read`'s MGET reply `values`: the valid entry (counted and
        kept in the near cache as get_or_compute does), or None = not a hit (call get_or_compute: it reads again
        and computes once)."""
        counting = counter_key is not None and self._counts_engagements
        entry, counter = self.store.lookup(model_version, user_id, counter_key if counting else None, values)
        return None if entry is None else self._store_hit(model_version, user_id, entry, counter, since)

    def near_hit(self, model_version: str, user_id: str, counter_key: str | None = None,
                 read: bool = True) -> CacheEntry | None:
        """The entry get_or_compute would answer from without going past the process (near cache, or the
        in-process store without Redis), validated the same way but not counted (`count_local_hit` once it
        is used); None = ask get_or_compute.

        read=False: never touches Redis (an event loop's inline path): an entry that only a read of its
        counter could vouch for is None, as if absent.
        """
        local = self._local
        if local is None:
            return None
        return self._local_hit(local, model_version, user_id,
                               counter_key if counter_key is not None and self._counts_engagements else None, False,
                               read)

    def count_local_hit(self, entry: CacheEntry) -> None:
        """Counts an answer from `near_hit`'s entry as get_or_compute counts its hits."""
        self._metrics.cache_lookup("hit" if entry.source == CACHE else "precomputed",
                                   "near" if self._local is self.near else "store")

    def _local_hit(self, local: LocalCandidateStore, model_version: str, user_id: str,
                   counter_key: str | None, count: bool = True, read: bool = True) -> CacheEntry | None:
        """`local`'s entry if still valid for the user's engagement counter (`counter_key`, None = not counting);
        read=False: None where validating would need a Redis read."""
        entry = local.get_entry(model_version, user_id)
        if entry is None:
            return None
        if counter_key is not None and self.near_validate:
            tracker = self.invalidations
            if tracker is None or not tracker.fresh(counter_key, entry.tracked):
                if not read:
                    return None
                since = self._snapshot()
                counter = self.store.read_counter(counter_key)
                if entry.counter != (counter or 0):  # computed before the latest engagement (fault: batch only)
                    return None
                if counter is not None:
                    entry.tracked = since  # confirmed: later hits need no read until a message says otherwise
        elif counter_key is not None and entry.counter < self._seen_counters.get(user_id, 0):
            return None  # an engagement acknowledged by this process since (see note_engagements)
        if count:
            self.count_local_hit(entry)
        return entry

    def note_engagements(self, counters: Mapping[str, int]) -> None:
        """Users' new engagement counters acknowledged by this process's event log: their near entries
        computed before are not served again (what keeps this process fresh with near_validate off)."""
        if self.near is None:
            return
        with self._seen_lock:
            for user, counter in counters.items():
                if counter > self._seen_counters.get(user, 0):
                    self._seen_counters[user] = int(counter)
                    self._seen_counters.move_to_end(user)
            while len(self._seen_counters) > self._seen_max:
                self._seen_counters.popitem(last=False)

    def close(self) -> None:
        if self.invalidations is not None:
            self.invalidations.close()
        if self.near is not None:
            self.near.close()
        self.store.close()
