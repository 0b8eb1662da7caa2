"""Near-cache validation by Redis's invalidation messages instead of a read per hit (CLIENT TRACKING BCAST).

A near-cache entry is valid while the user's engagement counter (feedback/log.py, `P:rv:{<u>}`)
is the one it was computed at. Reading the counter on every near hit costs a Redis round trip, as
much as the rest of the hit (bench/RESULTS.md, issue 14). Instead, each server process keeps one
connection on which Redis pushes the name of every counter key that changes, by any client, any
command, expiry or FLUSH (RESP2: `CLIENT TRACKING on REDIRECT <own id> BCAST PREFIX <P>:rv:`, then
`SUBSCRIBE __redis__:invalidate`; RESP3: the same without REDIRECT, as pushes). A reader thread applies
each message.

Strict freshness holds by construction, not by timing:

- **Writer:** `EventLog.append` answers only after one more round trip to Redis (`flush_invalidations`).
  Redis writes every client's pending output — our invalidation messages included — at the end of the
  event-loop pass that ran the script, before it reads that next command, so when LogEvents is
  acknowledged the messages are already in every server's socket buffer.
- **Reader:** a hit checks, holding the GIL, that (1) the socket has no unread byte and no end of stream
  (`poll` with timeout 0 through ctypes, which keeps the GIL), (2) the reader thread is not between taking
  bytes off the socket and applying them (`_busy`, set before every `recv`), (3) the connection is up, and
  (4) no invalidation of this key (or of everything) was applied after the entry's snapshot. In that
  order: a message that arrived before (1) was either still unread — (1) fails — or taken by the reader,
  which is then busy or has applied it.
- **Snapshots:** `snapshot()` is taken *before* the Redis read an entry's counter comes from; any change
  after that read is a message applied later, so "nothing applied since the snapshot" means the counter
  read is still current. A message applied between the snapshot and the read only costs a spurious miss.

Whatever is uncertain falls back to the per-hit read: the connection down or reconnecting (messages may
have been missed: every older snapshot is invalid, `_floor`), unread bytes, the bounded table of
invalidated keys overflowing (its oldest entry raises the floor), TLS (no raw socket to peek) or a Redis
Cluster (keys spread over nodes; not supported here). `recsys_near_tracking_up` shows which mode a process
is in.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable

import hiredis
import redis

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"

# poll(2) through ctypes.PyDLL: a foreign call that keeps the GIL (select.poll releases it, and taking it back
# costs a wait behind the gRPC server's other threads). Timeout 0: it never blocks. Measured ~0.4 µs a call, where
# recv(MSG_PEEK) with errno took ~2.5 µs.
_POLL = ctypes.PyDLL(None).poll
_POLL.restype = ctypes.c_int


class _PollFd(ctypes.Structure):
    _fields_ = (("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short))


class _Watch:
    """One socket's pollfd (POLLIN) and a reference to it, built once per connection."""

    __slots__ = ("fd", "pollfd", "ref")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pollfd = _PollFd(fd, select.POLLIN, 0)
        self.ref = ctypes.byref(self.pollfd)

    def quiet(self) -> bool:
        """Nothing to read, no end of stream, no error (poll returns 0); revents is never read back, so threads
        may share the struct."""
        return _POLL(self.ref, 1, 0) == 0


def socket_quiet(fd: int) -> bool:
    """True when the socket `fd` has nothing to read and is not closed or failed (checked without blocking and
    without releasing the GIL)."""
    return _Watch(fd).quiet()


class CounterInvalidations:
    """Redis's invalidation messages for the keys under `prefix`, applied by a thread; `fresh` answers from them.

    Args:
      make_connection: opens an unconnected redis-py Connection with the cache client's settings (address,
        auth, db, timeouts); its handshake is redis-py's, the rest is a raw socket.
      prefix: the key prefix to track (the engagement counters': `<stream_key>:rv:`).
      max_keys: invalidated keys remembered; beyond it the oldest one raises the floor (all older snapshots
        are treated as stale: a spurious read, never a stale hit).
      reconnect_s: wait between reconnection attempts.
      setup_timeout_s: per command while subscribing (then the socket is non-blocking).
    """

    def __init__(self, make_connection: Callable[[], redis.Connection], prefix: str, max_keys: int = 100_000,
                 reconnect_s: float = 0.5, setup_timeout_s: float = 1.0) -> None:
        self._make = make_connection
        self._setup_timeout_s = setup_timeout_s
        self.prefix = prefix
        self._max_keys = max_keys
        self._reconnect_s = reconnect_s
        self._seq = 0            # messages applied (plus one per reconnect / flush)
        self._floor = 1          # snapshots below this are stale (nothing is fresh before the first connect)
        self._invalidated: collections.OrderedDict[str, int] = collections.OrderedDict()  # key → its last seq
        self._watch: _Watch | None = None  # the tracking socket while up, else None
        self._busy = False       # the reader has taken bytes off the socket and not yet applied them
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._unsupported = ""
        self.messages = 0        # invalidation messages applied (metrics)
        self.reconnects = 0
        self._conn: redis.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="near-invalidations", daemon=True)

    def start(self, wait_s: float = 2.0) -> CounterInvalidations:
        """Starts the reader thread and waits up to `wait_s` for the first subscription (hits are read-validated
        until it is up)."""
        self._thread.start()
        self._ready.wait(wait_s)
        return self

    @property
    def up(self) -> bool:
        """True while hits can be validated by the messages (connected and subscribed)."""
        return self._watch is not None

    @property
    def unsupported(self) -> str:
        """Why tracking cannot work on this Redis ("" = it can)."""
        return self._unsupported

    def snapshot(self) -> int:
        """Take before the Redis read an entry's counter comes from; pass to `fresh` on later hits."""
        return self._seq

    def fresh(self, key: str, since: int) -> bool:
        """True when `key` has certainly not changed since the read that followed `snapshot()` == `since`
        (module docstring: the order of the checks is what makes it safe). False = read it."""
        watch = self._watch
        if watch is None or not watch.quiet():
            return False
        if self._busy or self._watch is not watch or since < self._floor:
            return False
        return self._invalidated.get(key, 0) <= since

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        self._watch = None
        if conn is not None:
            conn.disconnect()  # wakes the reader's poll
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    # -- the reader thread -------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                sock, reader = self._subscribe()
                failures = 0
                self._listen(sock, reader)
            except _Unsupported as e:
                self._unsupported = str(e)
                log.info("near-cache hits keep reading the engagement counter: %s", e,
                         extra={"event": "near_tracking_unsupported"})
                self._ready.set()
                return
            except Exception as e:  # a connection error, a reset, an error reply: reconnect
                if not self._stop.is_set():
                    failures += 1
                    if failures == 1:
                        log.warning("near-cache invalidations lost (%s: %s); near hits read Redis until they are "
                                    "back", type(e).__name__, e, extra={"event": "near_tracking_down"})
            finally:
                self._down()
            self._stop.wait(self._reconnect_s if failures else 0.0)

    def _subscribe(self) -> tuple[socket.socket, hiredis.Reader]:
        conn = self._conn = self._make()
        conn.connect()  # redis-py's handshake (AUTH, SELECT, client name) on a fresh connection: nothing unread
        sock = conn._sock
        if isinstance(sock, ssl.SSLSocket):
            raise _Unsupported("TLS to Redis (no raw socket to check for unread invalidations)")
        sock.settimeout(self._setup_timeout_s)
        reader = hiredis.Reader(protocolError=redis.ConnectionError, replyError=redis.ResponseError)

        def call(*args):
            sock.sendall(hiredis.pack_command(args))
            return _read_one(sock, reader)

        resp3 = str(getattr(conn, "protocol", 2)) == "3"  # RESP3: messages are pushes on this connection itself
        redirect = () if resp3 else ("REDIRECT", str(call("CLIENT", "ID")))
        try:
            call("CLIENT", "TRACKING", "on", *redirect, "BCAST", "PREFIX", self.prefix)
        except redis.ResponseError as e:  # Redis < 6, or a proxy that does not pass it through
            raise _Unsupported(f"CLIENT TRACKING refused: {e}") from e
        if not resp3:  # RESP2: the redirect target receives them as messages on this channel
            reply = call("SUBSCRIBE", CHANNEL)
            if not (isinstance(reply, list) and reply[0] == b"subscribe"):
                raise redis.ConnectionError(f"unexpected SUBSCRIBE reply {reply!r}")
        sock.setblocking(False)
        # Up: snapshots from here on see every later change; older ones may have missed messages.
        self._seq += 1
        self._floor = self._seq
        self._watch = _Watch(sock.fileno())
        self._ready.set()
        if self.reconnects:
            log.info("near-cache invalidations back", extra={"event": "near_tracking_up"})
        self.reconnects += 1
        return sock, reader

    def _listen(self, sock: socket.socket, reader: hiredis.Reader) -> None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        buffer = bytearray(65536)
        while not self._stop.is_set():
            if not poller.poll(1000):
                continue
            self._busy = True  # before any byte leaves the socket (module docstring)
            try:
                while True:
                    try:
                        n = sock.recv_into(buffer)
                    except BlockingIOError:
                        break
                    if not n:
                        raise redis.ConnectionError("the invalidation connection was closed by Redis")
                    reader.feed(buffer, 0, n)
                    while (message := reader.gets()) is not False:
                        self._apply(message)
            except BaseException:
                self._watch = None  # down before the reader stops being busy
                raise
            finally:
                self._busy = False

    def _apply(self, message) -> None:
        # RESP2: [b"message", CHANNEL, keys]; RESP3: the push [b"invalidate", keys]. keys None = everything.
        if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
            keys = message[2]
        elif isinstance(message, list) and len(message) == 2 and message[0] == b"invalidate":
            keys = message[1]
        else:
            return  # anything else carries no invalidation
        self.messages += 1
        self._seq += 1
        seq = self._seq
        if keys is None:  # FLUSHDB / FLUSHALL, or Redis's tracking table evicted keys: everything
            self._floor = seq
            self._invalidated.clear()
            return
        invalidated = self._invalidated
        for key in keys:
            k = key.decode()
            invalidated[k] = seq
            invalidated.move_to_end(k)
        while len(invalidated) > self._max_keys:
            _, oldest = invalidated.popitem(last=False)
            self._floor = max(self._floor, oldest)  # its key's older snapshots are stale; so, now, are all

    def _down(self) -> None:
        self._watch = None
        self._seq += 1
        self._floor = self._seq + 1  # nothing read before the next connect is fresh
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()


class _Unsupported(Exception):
    pass


def _read_one(sock: socket.socket, reader: hiredis.Reader):
    reply = reader.gets()
    while reply is False:
        data = sock.recv(65536)
        if not data:
            raise redis.ConnectionError("Redis closed the connection")
        reader.feed(data)
        reply = reader.gets()
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply
