"""The durable event log on Redis Streams, users' streamed engagements, and the served-list logger.

Redis layout (prefix P = EventLogConfig.stream_key, default "recsys:events"):

  P                    the stream: one entry per event (fields below), XADD MAXLEN ~ max_len
  P:seen:{event_id}    dedupe marker, SET NX with a TTL (dedupe_ttl_s): a replay within it is a no-op
  P:rv:{user_id}       the user's engagement counter (INCR per engagement/rating): the "recent
                       version" serving keys its cached candidates by, so a new engagement makes
                       that user's cache stale at once (serving/server.py)
  P:users              pub/sub channel: "{rv}\\t{user_id}" per engagement (UserVersions listens)
  recent_key(user_id)  the user's engaged items, newest first, LPUSH + LTRIM to recent_length

Stream entry fields (all strings; absent = empty): id (event id), type (impression,
engagement, rating, or served = a list the server served), user, item (served: the items
joined by ITEM_SEP, positions 1..k), value, ts (epoch seconds), req (request id), pos,
ver/src/blend (served: model version, answer source, "w_e,w_q,mode,transform").

`EventLog.append` writes a validated batch with one Lua script, which Redis runs
atomically: for each event not seen before, the dedupe marker, the XADD and (engagements)
the recent list and counter — so a batch is written whole or, if Redis fails before the
script runs, not at all, and a replayed batch changes nothing. Persistence is Redis's: the
project's launcher runs it with AOF and fsync every second (serving/local_redis.py).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from core.errors import RecsysError
from feedback.events import ITEM_SEP, Event
from pipeline import recent_key

log = logging.getLogger(__name__)


class EventLogUnavailableError(RecsysError):
    """The event log (Redis) could not be reached or failed; nothing of the batch was written: retry."""


@dataclasses.dataclass(frozen=True)
class EventLogConfig:
    """The event log (`recsys serve --events-*`): where it lives, its bounds, and what the server logs itself."""

    redis_url: str = ""              # "" = the cache's --redis-url; both empty = no event log (LogEvents refused)
    stream_key: str = "recsys:events"  # the stream; its dedupe, counter and channel keys share this prefix
    max_len: int = 10_000_000        # entries kept (approximate MAXLEN trim); export more often than it fills
    dedupe_ttl_s: int = 7 * 86400    # an event id is remembered this long; a replay within it is a no-op
    recent_length: int = 50          # streamed engagements kept per user (newest first)
    recent_ttl_s: int = 30 * 86400   # a user's recent list and counter expire this long after their last event
    max_batch_events: int = 1000     # events per LogEvents call
    max_batch_bytes: int = 1 << 20   # serialized LogEvents request size
    max_id_length: int = 256         # event, user, item and request ids: UTF-8 bytes
    timeout_s: float = 1.0           # per Redis command of LogEvents; slower = UNAVAILABLE
    read_timeout_s: float = 0.05     # per Redis read on the Recommend path (counter, recent list)
    log_served: bool = True          # log every served list as impressions (request id, items, positions, ...)
    served_queue: int = 100_000      # served lists waiting to be written; beyond it they are dropped and counted
    served_flush_s: float = 0.005    # the writer thread sends what queued at most this often
    versions_ttl_s: float = 30.0     # a process trusts its copy of a user's counter this long without an update
    versions_max_entries: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_len", "dedupe_ttl_s", "recent_length", "recent_ttl_s", "max_batch_events",
                     "max_batch_bytes", "max_id_length", "served_queue", "versions_max_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "read_timeout_s", "served_flush_s", "versions_ttl_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not self.stream_key:
            raise ValueError("--stream-key must not be empty")


def seen_key(stream_key: str, event_id: str) -> str:
    return f"{stream_key}:seen:{event_id}"


def state_key(stream_key: str, user_id: str) -> str:
    return f"{stream_key}:rv:{user_id}"


def channel(stream_key: str) -> str:
    return f"{stream_key}:users"


# KEYS = [stream, then per event: seen, recent, counter]; ARGV = [max_len, dedupe_ttl, recent_length,
# recent_ttl, channel, then per event: engaged (1/0), user, item, number of field pairs, the pairs].
_APPEND = """
local stream = KEYS[1]
local maxlen, ttl, rlen, rttl, chan = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local a, accepted, duplicates, bumped = 6, 0, 0, {}
for k = 2, #KEYS, 3 do
  local engaged, user, item, nf = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local fields = {}
  for j = 1, 2 * nf do fields[j] = ARGV[a + 3 + j] end
  a = a + 4 + 2 * nf
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    accepted = accepted + 1
    if engaged == '1' then
      redis.call('LPUSH', KEYS[k + 1], item)
      redis.call('LTRIM', KEYS[k + 1], 0, rlen - 1)
      redis.call('EXPIRE', KEYS[k + 1], rttl)
      local v = redis.call('INCR', KEYS[k + 2])
      redis.call('EXPIRE', KEYS[k + 2], rttl)
      redis.call('PUBLISH', chan, v .. '\\t' .. user)
      bumped[#bumped + 1] = user
      bumped[#bumped + 1] = tostring(v)
    end
  else
    duplicates = duplicates + 1
  end
end
return {accepted, duplicates, bumped}
"""


def _fields(e: Event) -> list[str]:
    out = ["id", e.event_id, "type", e.type, "user", e.user_id, "item", e.item_id, "ts", str(int(e.timestamp))]
    if e.value is not None:
        out += ["value", repr(float(e.value))]
    if e.request_id:
        out += ["req", e.request_id]
    if e.position:
        out += ["pos", str(int(e.position))]
    return out


def _client(url: str, timeout_s: float, max_connections: int = 64) -> redis.Redis:
    try:
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s,
                                                     socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                     protocol=2)
    except ValueError as e:
        raise ValueError(f"--events-redis-url {url!r}: {e}") from e
    return redis.Redis(connection_pool=pool)


class EventLog:
    """Appends events to the log and reads users' streamed state; every Redis failure is EventLogUnavailableError.

    Args:
      url: the Redis holding the log.
      config: bounds and keys (EventLogConfig).
    """

    def __init__(self, url: str, config: EventLogConfig = EventLogConfig()) -> None:
        self.url = url
        self.config = config
        self.client = _client(url, config.timeout_s)  # LogEvents: wait up to timeout_s
        self.reader = _client(url, config.read_timeout_s)  # the Recommend path: give up fast
        self._append = self.client.register_script(_APPEND)

    def append(self, events: Sequence[Event]) -> tuple[int, int, dict[str, int]]:
        """Writes a validated batch atomically (see the module docstring).

        Returns:
          (accepted, duplicates, {user_id: new counter} of users whose engagements were written).

        Raises:
          EventLogUnavailableError when Redis fails; nothing of the batch was written then
          (the script runs whole or not at all), so the caller retries the same batch.
        """
        c = self.config
        keys = [c.stream_key]
        args: list[Any] = [c.max_len, c.dedupe_ttl_s, c.recent_length, c.recent_ttl_s, channel(c.stream_key)]
        for e in events:
            keys += [seen_key(c.stream_key, e.event_id), recent_key(e.user_id), state_key(c.stream_key, e.user_id)]
            fields = _fields(e)
            args += ["1" if e.engaged else "0", e.user_id, e.item_id, len(fields) // 2, *fields]
        try:
            accepted, duplicates, bumped = self._append(keys=keys, args=args)
        except redis.RedisError as e:
            raise EventLogUnavailableError(f"the event log (Redis) failed: {type(e).__name__}: {e}; nothing of this "
                                           "batch was written, retry it") from e
        users = {}
        for i in range(0, len(bumped), 2):
            user, version = bumped[i].decode(), int(bumped[i + 1])
            users[user] = max(users.get(user, 0), version)
        return int(accepted), int(duplicates), users

    def recent(self, user_id: str) -> list[str]:
        """The user's streamed engagements, newest first (at most recent_length)."""
        try:
            raw = self.reader.lrange(recent_key(user_id), 0, self.config.recent_length - 1)
        except redis.RedisError as e:
            raise EventLogUnavailableError(f"reading the recent list of {user_id!r} failed: {e}") from e
        return [r.decode() for r in raw]

    def version(self, user_id: str) -> int:
        """The user's engagement counter (0 = no streamed engagements)."""
        try:
            raw = self.reader.get(state_key(self.config.stream_key, user_id))
        except redis.RedisError as e:
            raise EventLogUnavailableError(f"reading the event counter of {user_id!r} failed: {e}") from e
        return int(raw) if raw is not None else 0

    def close(self) -> None:
        self.client.close()
        self.reader.close()


@dataclasses.dataclass(frozen=True)
class ServedList:
    """One list the server answered, logged as impressions at positions 1..len(item_ids)."""

    request_id: str
    user_id: str
    item_ids: Sequence[str]
    model_version: str
    source: str
    blend: Any          # ranking.BlendWeights (engagement, quality, mode, transform)
    timestamp: float


def _served_fields(s: ServedList) -> dict[str, str]:
    b = s.blend
    return {"id": s.request_id, "type": "served", "user": s.user_id, "item": ITEM_SEP.join(s.item_ids),
            "ts": str(int(s.timestamp)), "req": s.request_id, "ver": s.model_version, "src": s.source,
            "blend": f"{b.engagement:g},{b.quality:g},{b.mode},{b.transform}"}


class ServedListLogger:
    """Writes served lists to the stream from a background thread, in pipelined batches.

    `log` only appends to an in-memory queue (no I/O on the request path). When the queue
    holds `served_queue` lists, or a write fails, lists are dropped and counted
    (`dropped`, `failed`), never retried forever and never an RPC failure.
    """

    def __init__(self, log_: EventLog, clock: Callable[[], float] = time.time) -> None:
        self._log = log_
        self._clock = clock
        self._queue: collections.deque[ServedList] = collections.deque()
        self._max = log_.config.served_queue
        self._wake = threading.Event()
        self._stopped = False
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="served-list-logger", daemon=True)
        self._thread.start()

    def log(self, request_id: str, user_id: str, item_ids: Sequence[str], model_version: str, source: str,
            blend: Any) -> None:
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(ServedList(request_id, user_id, item_ids, model_version, source, blend, self._clock()))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Waits until the queue is written (tests, shutdown); False if it is not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    _busy = False

    def _run(self) -> None:
        c = self._log.config
        while not self._stopped or self._queue:
            if not self._queue:
                self._wake.wait(c.served_flush_s)
                continue
            self._busy = True
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 512))]
            try:
                pipe = self._log.client.pipeline(transaction=False)
                for s in batch:
                    pipe.xadd(c.stream_key, _served_fields(s), maxlen=c.max_len, approximate=True)
                pipe.execute()
                self.written += len(batch)
            except redis.RedisError as e:
                self.failed += len(batch)
                log.warning("could not log %d served lists: %s: %s", len(batch), type(e).__name__, e,
                            extra={"event": "served_log_failed"})
            finally:
                self._busy = False

    def close(self) -> None:
        """Writes what is queued (up to a few seconds), then stops the thread."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
