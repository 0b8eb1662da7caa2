"""The durable event log on Redis Streams, users' streamed engagements, and the served-list logger.

Redis layout (prefix P = EventLogConfig.stream_key, default "recsys:events"; `<u>` = user id,
`<id>` = event id; braces are literal: the user's hash tag, shared with the cache's keys):

  P                    the stream: one entry per event (fields below), XADD MAXLEN ~ max_len
                       (Redis Cluster: P:{s0} .. P:{s<stream_shards-1>}, see below)
  P:seen:<id>          dedupe marker, SET NX with a TTL (dedupe_ttl_s): a replay within it is a no-op
                       (Redis Cluster: P:seen:{<u>}:<id>, in the user's slot)
  P:rv:{<u>}           the user's engagement counter (+1 per engagement/rating). Serving reads it in
                       the same MGET as the user's cached entries and uses an entry only if it was
                       computed at this counter (serving/cache.py), so a new engagement makes that
                       user's cache stale at once, for every process
  P:users              pub/sub channel: "{rv}\\t{user_id}" per engagement (UserVersions listens: only
                       servers whose event log is in another Redis than their cache; standalone only)
  recent_key(<u>)      recsys:recent:{<u>}, the user's engaged items, newest first (LPUSH; trimmed to
                       recent_length once it holds twice that; readers take the first recent_length)

Stream entry fields (all strings; absent = empty): id (event id), type (impression,
engagement, rating, or served = a list the server served), user, item (served: the items
joined by ITEM_SEP, positions 1..k), value, ts (epoch seconds), req (request id), pos,
ver/src/blend (served: model version, answer source, "w_e,w_q,mode,transform"), arm (the
experiment arm of a served list or of an event's user; absent = no experiment).

`EventLog.append` writes a validated batch with one Lua script, which Redis runs
atomically: for each event not seen before, the dedupe marker, the XADD and (engagements)
the recent list and counter — so a batch is written whole or, if Redis fails before the
script runs, not at all, and a replayed batch changes nothing. Persistence is Redis's: the
project's launcher runs it with AOF and fsync every second (serving/local_redis.py).

On a Redis Cluster (a `redis+cluster://` URL, core/redis_url.py) one script cannot touch a
global stream and every user's keys (they live in different slots, on different nodes). There
a batch is written in two steps: (1) all its events are appended to one stream shard
P:{s<k>} (shards taken round robin per call; one script, atomic; MAXLEN ~ max_len/shards each),
then (2) per hash slot of the batch's users, one script does the dedupe markers (in the user's
slot), recent lists and counters — all sent in one pipeline. Only after both does LogEvents
answer. If anything fails the caller gets UNAVAILABLE and retries the same batch: step 1 then
appends the events again (the export drops entries whose event id it already wrote: exactly once
in its output) and step 2 applies each event's state exactly once (its dedupe marker). So
nothing acknowledged is lost and a replay changes no state; what a cluster does not give is
"UNAVAILABLE = nothing written": a failed call may have appended to the stream. `recsys events
export` reads every shard (found by SCAN), each with its own checkpoint.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from core.errors import RecsysError
from core.redis_url import REDIS_ERRORS, connect, is_cluster, key_slot
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
    served_flush_s: float = 0.25     # the writer sends what queued this often (bench/hit_attribution.py: 0.05 cost ~7% of hits)
    versions_ttl_s: float = 30.0     # a process trusts its copy of a user's counter this long without an update
    versions_max_entries: int = 100_000
    stream_shards: int = 16          # Redis Cluster only: streams P:{s0}..P:{s<n-1>}, spread over the masters

    def __post_init__(self) -> None:
        for name in ("max_len", "dedupe_ttl_s", "recent_length", "recent_ttl_s", "max_batch_events",
                     "max_batch_bytes", "max_id_length", "served_queue", "versions_max_entries", "stream_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "read_timeout_s", "served_flush_s", "versions_ttl_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not self.stream_key:
            raise ValueError("--stream-key must not be empty")
        if "{" in self.stream_key or "}" in self.stream_key:
            raise ValueError(f"--stream-key must not contain braces (the users' hash tags follow it), got "
                             f"{self.stream_key!r}")


def seen_key(stream_key: str, event_id: str) -> str:
    return f"{stream_key}:seen:{event_id}"


def state_key(stream_key: str, user_id: str) -> str:
    """The user's engagement counter (in the user's hash slot, like their cache keys)."""
    return f"{stream_key}:rv:{{{user_id}}}"


def cluster_seen_key(stream_key: str, user_id: str, event_id: str) -> str:
    """A Redis Cluster dedupe marker: in the event's user's slot, so one script checks it and updates the user."""
    return f"{stream_key}:seen:{{{user_id}}}:{event_id}"


def shard_key(stream_key: str, shard: int) -> str:
    """Stream shard `shard` of a Redis Cluster event log."""
    return f"{stream_key}:{{s{shard}}}"


def channel(stream_key: str) -> str:
    return f"{stream_key}:users"


# KEYS = [stream]; ARGV = [seen-key prefix, counter-key prefix, recent-key prefix, max_len, dedupe_ttl,
# recent_length, recent_ttl, channel, then one record per event]. A record is the event's stream fields
# joined by ITEM_SEP after an engaged flag: "1|id|<id>|type|<type>|user|<user>|item|<item>|ts|..." (ids are
# printable, so the separator cannot occur in them). One argument per event keeps the command small:
# redis-py packs every argument in Python, and 3 declared keys + 16 arguments per event cost more client
# time than the script costs Redis. The per-event keys are therefore built in the script, which standalone
# Redis (and Sentinel) allow; Redis Cluster would need them declared and batches split by hash slot.
# Shared by both scripts: split a record on ITEM_SEP (0x1f); apply a batch's engagements to its users' state.
_SPLIT = """
local function split(rec)
  local f, p = {}, 1
  while true do
    local e = string.find(rec, '\\031', p, true)
    if e == nil then
      f[#f + 1] = string.sub(rec, p)
      return f
    end
    f[#f + 1] = string.sub(rec, p, e - 1)
    p = e + 1
  end
end

-- Once per user of the batch: their engagements in batch order (LPUSH leaves the last one first), the
-- list trimmed lazily (at twice its length; readers take the first recent_length), the counter bumped
-- (and published on `chan` unless it is nil). Returns {user, counter, user, counter, ...}.
local function apply_users(users, pushed, recent, rv, rlen, rttl, chan)
  local bumped = {}
  for _, user in ipairs(users) do
    local tag = '{' .. user .. '}'
    local items, rkey, vkey = pushed[user], recent .. tag, rv .. tag
    if redis.call('LPUSH', rkey, unpack(items)) > 2 * rlen then
      redis.call('LTRIM', rkey, 0, rlen - 1)
    end
    redis.call('EXPIRE', rkey, rttl)
    local v = redis.call('INCRBY', vkey, #items)
    redis.call('EXPIRE', vkey, rttl)
    if chan ~= nil then
      redis.call('PUBLISH', chan, v .. '\\t' .. user)
    end
    bumped[#bumped + 1] = user
    bumped[#bumped + 1] = tostring(v)
  end
  return bumped
end
"""
_APPEND = _SPLIT + """
local stream = KEYS[1]
local seen, rv, recent = ARGV[1], ARGV[2], ARGV[3]
local maxlen, ttl, rlen, rttl, chan = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local accepted, duplicates, users, pushed = 0, 0, {}, {}
for a = 9, #ARGV do
  local f = split(ARGV[a])
  local id, user, item = f[3], f[7], f[9]
  if redis.call('SET', seen .. id, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(f, 2))
    accepted = accepted + 1
    if f[1] == '1' then
      if pushed[user] == nil then
        pushed[user] = {}
        users[#users + 1] = user
      end
      table.insert(pushed[user], item)
    end
  else
    duplicates = duplicates + 1
  end
end
return {accepted, duplicates, apply_users(users, pushed, recent, rv, rlen, rttl, chan)}
"""
# The scripts build recent_key(user) as this prefix + "{user}" (checked), state_key likewise.
_RECENT_PREFIX = recent_key("")[:-2]
assert recent_key("u") == _RECENT_PREFIX + "{u}", "pipeline.recent_key is no longer prefix + {user id}; update _APPEND"
assert state_key("P", "u") == state_key("P", "")[:-2] + "{u}"

# Redis Cluster, step 2 (module docstring): one call per hash slot of a batch's users. KEYS[1] = the counter of
# one user of the slot (it routes the call); ARGV = [seen prefix, counter prefix, recent prefix, dedupe_ttl,
# recent_length, recent_ttl, then one record per event: "<engaged 1|0>\x1f<event id>\x1f<user>\x1f<item>"].
_STATE = _SPLIT + """
local seen, rv, recent = ARGV[1], ARGV[2], ARGV[3]
local ttl, rlen, rttl = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local accepted, duplicates, users, pushed = 0, 0, {}, {}
for a = 7, #ARGV do
  local f = split(ARGV[a])
  local id, user, item = f[2], f[3], f[4]
  if redis.call('SET', seen .. '{' .. user .. '}:' .. id, '1', 'NX', 'EX', ttl) then
    accepted = accepted + 1
    if f[1] == '1' then
      if pushed[user] == nil then
        pushed[user] = {}
        users[#users + 1] = user
      end
      table.insert(pushed[user], item)
    end
  else
    duplicates = duplicates + 1
  end
end
return {accepted, duplicates, apply_users(users, pushed, recent, rv, rlen, rttl, nil)}
"""


def _fields(e: Event) -> list[str]:
    out = ["id", e.event_id, "type", e.type, "user", e.user_id, "item", e.item_id, "ts", str(int(e.timestamp))]
    if e.value is not None:
        out += ["value", repr(float(e.value))]
    if e.request_id:
        out += ["req", e.request_id]
    if e.position:
        out += ["pos", str(int(e.position))]
    if e.arm:
        out += ["arm", e.arm]
    return out


def _client(url: str, timeout_s: float, max_connections: int = 64) -> redis.Redis:
    return connect(url, flag="--events-redis-url", socket_timeout=timeout_s, max_connections=max_connections)


class EventLog:
    """Appends events to the log and reads users' streamed state; every Redis failure is EventLogUnavailableError.

    Args:
      url: the Redis holding the log.
      config: bounds and keys (EventLogConfig).
    """

    def __init__(self, url: str, config: EventLogConfig = EventLogConfig()) -> None:
        self.url = url
        self.config = config
        self.cluster = is_cluster(url)
        self.client = _client(url, config.timeout_s)  # LogEvents: wait up to timeout_s
        self.reader = _client(url, config.read_timeout_s)  # the Recommend path: give up fast
        self._append = self.client.register_script(_APPEND)
        self._xadd = self.client.register_script(_SERVED)  # cluster step 1: a batch into one stream shard
        self._shards = itertools.count()

    def streams(self) -> list[str]:
        """The stream keys this log writes: one, or the cluster's shards."""
        c = self.config
        return [shard_key(c.stream_key, k) for k in range(c.stream_shards)] if self.cluster else [c.stream_key]

    def next_stream(self) -> tuple[str, int]:
        """(the stream the next append goes to, its MAXLEN): round robin over the shards on a cluster."""
        c = self.config
        if not self.cluster:
            return c.stream_key, c.max_len
        return shard_key(c.stream_key, next(self._shards) % c.stream_shards), -(-c.max_len // c.stream_shards)

    def append(self, events: Sequence[Event]) -> tuple[int, int, dict[str, int]]:
        """Writes a validated batch atomically (see the module docstring).

        Returns:
          (accepted, duplicates, {user_id: new counter} of users whose engagements were written).

        Raises:
          EventLogUnavailableError when Redis fails; nothing of the batch was written then
          (the script runs whole or not at all), so the caller retries the same batch — except
          when Redis fails in the round trip after the script (`_flush_invalidations`), where the
          batch was written and the retry is a replay that changes nothing.
        """
        if self.cluster:
            return self._append_cluster(events)
        c = self.config
        args: list[Any] = [seen_key(c.stream_key, ""), state_key(c.stream_key, "")[:-2], _RECENT_PREFIX, c.max_len,
                           c.dedupe_ttl_s, c.recent_length, c.recent_ttl_s, channel(c.stream_key)]
        args += [ITEM_SEP.join(("1" if e.engaged else "0", *_fields(e))) for e in events]
        try:
            accepted, duplicates, bumped = self._append(keys=[c.stream_key], args=args)
        except REDIS_ERRORS as e:
            raise EventLogUnavailableError(f"the event log (Redis) failed: {type(e).__name__}: {e}; nothing of this "
                                           "batch was written, retry it") from e
        users: dict[str, int] = {}
        _bumped(bumped, users)
        if users:
            self._flush_invalidations()
        return int(accepted), int(duplicates), users

    def _flush_invalidations(self) -> None:
        """One more round trip after counters changed: Redis writes every client's pending output, the
        invalidation messages its CLIENT TRACKING subscribers get for those counters included, before it reads
        this command (serving/invalidation.py). So once append returns, every server process that tracks the
        counters has the messages in its socket, and its very next near-cache hit sees them."""
        try:
            self.client.ping()
        except REDIS_ERRORS as e:
            raise EventLogUnavailableError(f"the event log (Redis) failed after writing the batch: {type(e).__name__}: "
                                           f"{e}; retry it (a replay changes nothing)") from e

    def _append_cluster(self, events: Sequence[Event]) -> tuple[int, int, dict[str, int]]:
        """The two steps of the module docstring (Redis Cluster)."""
        c = self.config
        stream, max_len = self.next_stream()
        groups: dict[int, list[Event]] = {}
        for e in events:
            groups.setdefault(key_slot(state_key(c.stream_key, e.user_id)), []).append(e)
        head = [cluster_seen_key(c.stream_key, "", "")[:-3], state_key(c.stream_key, "")[:-2], _RECENT_PREFIX,
                c.dedupe_ttl_s, c.recent_length, c.recent_ttl_s]
        try:
            if events:
                self._xadd(keys=[stream], args=[max_len, _RECORD_SEP.join(_FIELD_SEP.join(_fields(e))
                                                                          for e in events)])
            pipe = self.client.pipeline(transaction=False)
            for group in groups.values():
                pipe.execute_command("EVAL", _STATE, 1, state_key(c.stream_key, group[0].user_id), *head,
                          *(ITEM_SEP.join(("1" if e.engaged else "0", e.event_id, e.user_id, e.item_id))
                            for e in group))
            results = pipe.execute()
        except REDIS_ERRORS as e:
            raise EventLogUnavailableError(f"the event log (Redis Cluster) failed: {type(e).__name__}: {e}; retry "
                                           "this batch (a retry applies each event exactly once)") from e
        accepted = duplicates = 0
        users: dict[str, int] = {}
        for a, d, bumped in results:
            accepted, duplicates = accepted + int(a), duplicates + int(d)
            _bumped(bumped, users)
        return accepted, duplicates, users

    def recent(self, user_id: str) -> list[str]:
        """The user's streamed engagements, newest first (at most recent_length)."""
        try:
            raw = self.reader.lrange(recent_key(user_id), 0, self.config.recent_length - 1)
        except REDIS_ERRORS as e:
            raise EventLogUnavailableError(f"reading the recent list of {user_id!r} failed: {e}") from e
        return [r.decode() for r in raw]

    def version(self, user_id: str) -> int:
        """The user's engagement counter (0 = no streamed engagements)."""
        try:
            raw = self.reader.get(state_key(self.config.stream_key, user_id))
        except REDIS_ERRORS as e:
            raise EventLogUnavailableError(f"reading the event counter of {user_id!r} failed: {e}") from e
        return int(raw) if raw is not None else 0

    def close(self) -> None:
        self.client.close()
        self.reader.close()


def _bumped(bumped: list, users: dict[str, int]) -> None:
    for i in range(0, len(bumped), 2):
        user, version = bumped[i].decode(), int(bumped[i + 1])
        users[user] = max(users.get(user, 0), version)


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


_FIELD_SEP = "\x1e"  # between a served list's fields (ITEM_SEP joins its items)
_RECORD_SEP = "\x1d"  # between served lists

# ARGV[1] = max_len, ARGV[2] = the served lists, each its stream fields and values joined by _FIELD_SEP,
# joined by _RECORD_SEP. One argument for the whole flush: redis-py packs each argument in Python (and
# copies its buffer per argument), in the writer thread, which holds the GIL the request threads need.
_SERVED = """
local stream, maxlen, data, n, pos = KEYS[1], ARGV[1], ARGV[2], 0, 1
local len = #data
while pos <= len do
  local stop = string.find(data, '\\029', pos, true) or (len + 1)
  local f, p = {}, pos
  while true do
    local e = string.find(data, '\\030', p, true)
    if e == nil or e > stop then
      f[#f + 1] = string.sub(data, p, stop - 1)
      break
    end
    f[#f + 1] = string.sub(data, p, e - 1)
    p = e + 1
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(f))
  n = n + 1
  pos = stop + 1
end
return n
"""


def _served_record(request_id: str, user_id: str, item_ids: Sequence[str], model_version: str, source: str,
                   blend: str, timestamp: float, arm: str = "") -> str:
    """A served list's stream fields (see the module docstring), joined by _FIELD_SEP."""
    fields = ("id", request_id, "type", "served", "user", user_id, "item", ITEM_SEP.join(item_ids),
              "ts", str(int(timestamp)), "req", request_id, "ver", model_version, "src", source, "blend", blend)
    return _FIELD_SEP.join(fields + ("arm", arm) if arm else fields)


def blend_text(blend: Any) -> str:
    """A ranking.BlendWeights as the log's `blend` field: "w_e,w_q,mode,transform"."""
    return f"{blend.engagement:g},{blend.quality:g},{blend.mode},{blend.transform}"


class ServedListLogger:
    """Writes served lists to the stream from a background thread, many per Redis call.

    `log` only appends to an in-memory queue (no I/O on the request path). When the queue
    holds `served_queue` lists, or a write fails, lists are dropped and counted
    (`dropped`, `failed`), never retried forever and never an RPC failure.
    """

    def __init__(self, log_: EventLog, clock: Callable[[], float] = time.time) -> None:
        self._log = log_
        self._clock = clock
        self._queue: collections.deque[tuple] = collections.deque()  # ServedList fields (a tuple is cheaper)
        self._max = log_.config.served_queue
        self._wake = threading.Event()
        self._stopped = False
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._write = log_.client.register_script(_SERVED)
        self._thread = threading.Thread(target=self._run, name="served-list-logger", daemon=True)
        self._thread.start()

    def log(self, request_id: str, user_id: str, item_ids: Sequence[str], model_version: str, source: str,
            blend: Any, arm: str = "") -> None:
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append((request_id, user_id, item_ids, model_version, source, blend, self._clock(), arm))

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
        while True:
            stopping = self._stopped
            if not stopping:
                self._wake.wait(c.served_flush_s)  # lets lists accumulate: one Redis call per interval
            while self._queue:
                self._busy = True
                # At most 256 lists per call: Redis runs a script alone, so a call must stay short (~1 ms).
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 256))]
                try:
                    blends: dict[int, str] = {}  # a handful of distinct weights objects per flush
                    records = _RECORD_SEP.join(_served_record(*f[:5], blends.get(id(f[5])) or blends.setdefault(
                        id(f[5]), blend_text(f[5])), f[6], f[7]) for f in batch)
                    stream, max_len = self._log.next_stream()
                    self._write(keys=[stream], args=[max_len, records])
                    self.written += len(batch)
                except REDIS_ERRORS as e:
                    self.failed += len(batch)
                    log.warning("could not log %d served lists: %s: %s", len(batch), type(e).__name__, e,
                                extra={"event": "served_log_failed"})
                except Exception:  # a bug must not stop the writer for good: count, log, go on
                    self.failed += len(batch)
                    log.exception("could not log %d served lists", len(batch), extra={"event": "served_log_failed"})
                finally:
                    self._busy = False
            if stopping:
                return

    def close(self) -> None:
        """Writes what is queued (up to a few seconds), then stops the thread."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
