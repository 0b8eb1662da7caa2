"""Each server process's copy of users' engagement counters, so a cache hit needs no extra Redis read.

Used only by a server whose event log is in another Redis than its cache (`--events-redis-url` ≠
`--redis-url`): otherwise the counter is read in the same MGET as the cached entry (serving/cache.py),
which is strictly fresh across processes. What follows describes this fallback design.

A Recommend request keys the user's cached candidates by the user's engagement counter
(EventLog.version): a new engagement bumps it, so the next request looks under a new key
and computes with the new history. Reading the counter from Redis on every request would
cost a round trip even on a near-cache hit, so each process keeps a copy here:

- the process that logs an engagement bumps its copy before LogEvents answers (`bump`);
- every other process hears it through Redis pub/sub (the append script PUBLISHes
  "{counter}\\t{user}" in the same atomic step) and bumps its copy — typically within a
  millisecond, but asynchronously: a request to another process in that window can still be
  answered from the previous entry;
- a copy older than `ttl_s`, or any copy after the subscription dropped, is read from Redis
  again, so a lost message costs at most `ttl_s` of staleness.
Counters only grow: a copy takes the max of what it has and what it hears.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from feedback.log import EventLog, EventLogUnavailableError, channel

log = logging.getLogger(__name__)


class UserVersions:
    """user id → engagement counter, read through from Redis and kept fresh by pub/sub.

    Args:
      event_log: the log whose counters these are.
      ttl_s: how long a copy is trusted without an update.
      max_entries: copies kept (the oldest are dropped beyond it).
      clock: monotonic seconds (injected by tests).
    """

    def __init__(self, event_log: EventLog, ttl_s: float = 30.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = event_log
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, float]] = {}  # user → (counter, trusted until)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, user_id: str) -> int:
        """The user's counter (0 = no streamed engagements); EventLogUnavailableError if Redis cannot say."""
        found = self._entries.get(user_id)
        if found is not None and found[1] > self._clock():
            return found[0]
        return self.bump(user_id, self._log.version(user_id))

    def bump(self, user_id: str, version: int) -> int:
        """Records that the user's counter is at least `version`; returns the counter now held."""
        with self._lock:
            found = self._entries.pop(user_id, None)
            if found is not None and found[0] > version:
                version = found[0]
            self._entries[user_id] = (version, self._clock() + self._ttl)
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]
        return version

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- pub/sub ----------------------------------------------------------------------
    def start(self) -> UserVersions:
        """Starts the subscriber thread (reconnects with backoff while Redis is down)."""
        self._thread = threading.Thread(target=self._listen, name="user-versions", daemon=True)
        self._thread.start()
        return self

    def wait_subscribed(self, timeout_s: float = 5.0) -> bool:
        return self._subscribed.wait(timeout_s)

    def _listen(self) -> None:
        backoff = 0.05
        client = redis.Redis.from_url(self._log.url, socket_timeout=5.0, socket_connect_timeout=1.0, protocol=2)
        name = channel(self._log.config.stream_key)
        while not self._stop.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(name)
                self.clear()  # anything heard before (or missed while down) is read again
                self._subscribed.set()
                backoff = 0.05
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        version, user = message["data"].decode().split("\t", 1)
                        self.bump(user, int(version))
            except (redis.RedisError, OSError, ValueError) as e:
                if self._subscribed.is_set():
                    log.warning("event counter subscription lost (%s); reconnecting", e,
                                extra={"event": "versions_subscription_lost"})
                self._subscribed.clear()
                self.clear()
                self._stop.wait(backoff)
                backoff = min(2 * backoff, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection may raise; nothing to do
                    pass
        client.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["UserVersions", "EventLogUnavailableError"]
