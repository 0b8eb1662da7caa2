"""Serving on a `grpc.aio` event loop: cache hits answered on the loop, everything else in a thread pool.

`ServerConfig.aio` (the default) runs the Recommender service this way; `--no-aio` runs the
synchronous gRPC server, where every RPC is handed to a pool thread.

Why (bench/RESULTS.md, issue 14): with the synchronous server a near-cache hit costs its ~10 µs of
Python plus ~100 µs of thread hand-offs and cold caches per RPC (gRPC's poller thread → a handler
thread → back), so it served ~0.6× the empty RPC's rate on 2 cores. On the loop the same hit is a
function call inside the coroutine gRPC already runs for the RPC.

What runs where:
- On the loop: a Recommend that needs no model and no blocking call — a plain request (user and k)
  answered from the near cache when Redis's invalidation messages vouch for the entry
  (`RecommenderServicer.recommend_inline`), or from the one Redis MGET a cache hit needs, awaited on
  the loop (`recommend_read` → `LoopRedis.mget` → `recommend_from_read`) — plus health, reflection,
  token auth and strict decoding.
- In the `workers` thread pool: everything else (`RecommenderServicer.call`: misses through the batcher,
  requests with weights, exclusions or explanations, experiments, LogEvents, SimilarItems, errors, and
  any loop read that failed). The servicer is the synchronous one; its context is `ThreadContext` (the
  deadline and cancellation as the loop saw them). A miss found on the loop is read once more in the pool
  (get_or_compute's own read, then one computation): one extra round trip on a path that costs ms.

The loop runs in its own thread (`EventLoopThread`), so `RecommendServer` keeps its synchronous API
(start, stop, wait, load, set_model) for `serve`, `--processes` and the tests.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, TypeVar

import grpc
import grpc.aio
import hiredis
import redis

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

T = TypeVar("T")
log = logging.getLogger(__name__)


class EventLoopThread:
    """An asyncio event loop running in a daemon thread; `run` executes a coroutine on it from any other thread."""

    def __init__(self, name: str = "grpc-aio-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """The coroutine's result (its exception re-raised here); never call it from the loop's own thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EventLoopThread.run called on the loop's own thread (it would wait forever)")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stops the loop and closes it once its thread has left."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def finite_time_left(remaining: float | None) -> float | None:
    """Seconds left, or None for no deadline: gRPC reports a huge number (not None) when the client set none."""
    return None if remaining is None or remaining > 1e6 else remaining


class ThreadContext:
    """What RecommenderServicer uses of a gRPC context, for a call run off the loop: the deadline as the loop
    read it at the start of the RPC, and whether the RPC was cancelled since (set by the awaiting coroutine)."""

    __slots__ = ("_deadline", "cancelled")

    def __init__(self, time_remaining: float | None) -> None:
        left = finite_time_left(time_remaining)
        self._deadline = None if left is None else time.monotonic() + left
        self.cancelled = False

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self.cancelled and (self._deadline is None or time.monotonic() < self._deadline)


class _Pipelined(asyncio.Protocol):
    """One Redis connection on the loop: commands are written as they come, and since Redis answers in order
    each reply resolves the oldest waiting future. A command unanswered after `timeout_s` closes the connection
    (every waiting future fails with redis.TimeoutError), so a late reply is never taken for another's."""

    def __init__(self, timeout_s: float | None) -> None:
        self._timeout = timeout_s
        self._reader = hiredis.Reader(protocolError=redis.ConnectionError, replyError=redis.ResponseError)
        self._waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def call(self, command: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((future, loop.time()))
        self._transport.write(command)
        if self._timer is None and self._timeout:
            self._timer = loop.call_later(self._timeout, self._check_timeout)
        return future

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            while (reply := self._reader.gets()) is not False:
                future = self._waiting.popleft()[0]  # IndexError: a reply nobody asked for
                if not future.done():  # a cancelled RPC's reply is read and dropped
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except (redis.ConnectionError, IndexError) as e:
            self._close(redis.ConnectionError(f"unreadable reply from Redis: {e}"))

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._waiting or self.closed:
            return
        loop = asyncio.get_running_loop()
        oldest = self._waiting[0][1]
        if loop.time() - oldest >= self._timeout:
            self._close(redis.TimeoutError(f"no reply from Redis within {self._timeout}s"))
        else:
            self._timer = loop.call_later(oldest + self._timeout - loop.time(), self._check_timeout)

    def _close(self, error: Exception) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Closes the connection after writing what is buffered (waiting calls fail when it is lost)."""
        if self._transport is not None and not self.closed:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)


class LoopRedis:
    """Redis MGETs awaited on the event loop, pipelined on one connection.

    The connection is made by redis-py with the cache pool's own settings (address or unix socket, auth, db,
    protocol handshake), in the thread pool, and its socket is then handed to asyncio; hiredis parses replies.
    It is used for cache-hit reads only: a failure (no connection, `timeout_s` without a reply, an error reply)
    is raised to the caller, which then serves the request from the pool, where reads have the client's retries
    and the cache's circuit breaker. After a failed connect the next attempt waits `retry_after_s`. TLS
    connections are not taken over (the first connect fails over to the pool for good).
    """

    def __init__(self, make_connection: Callable[[], Any], timeout_s: float | None,
                 executor: concurrent.futures.Executor, retry_after_s: float = 1.0) -> None:
        self._make_connection = make_connection
        self._timeout = timeout_s
        self._executor = executor
        self._retry_after = retry_after_s
        self._protocol: _Pipelined | None = None
        self._connecting: asyncio.Future | None = None
        self._down_until = 0.0
        self.unsupported = ""  # why the loop cannot read (TLS): every call raises then

    async def mget(self, keys: tuple[str, ...]) -> list[bytes | None]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        return await protocol.call(hiredis.pack_command(("MGET", *keys)))

    async def _connected(self) -> _Pipelined:
        if self.unsupported:
            raise redis.ConnectionError(self.unsupported)
        loop = asyncio.get_running_loop()
        if self._connecting is None:
            if loop.time() < self._down_until:
                raise redis.ConnectionError("Redis was unreachable from the event loop moments ago")
            self._connecting = loop.create_future()
            asyncio.ensure_future(self._connect(self._connecting))
        return await asyncio.shield(self._connecting)

    async def _connect(self, done: asyncio.Future) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(self._executor, self._open_socket)
            if sock.family == socket.AF_UNIX:
                _, protocol = await loop.create_unix_connection(lambda: _Pipelined(self._timeout), sock=sock)
            else:
                _, protocol = await loop.create_connection(lambda: _Pipelined(self._timeout), sock=sock)
            self._protocol = protocol
            done.set_result(protocol)
        except Exception as e:
            self._down_until = loop.time() + self._retry_after
            log.warning("event-loop Redis reads unavailable (%s: %s); cache hits are read in the thread pool",
                        type(e).__name__, e, extra={"event": "loop_redis_down"})
            done.set_exception(e if isinstance(e, redis.RedisError) else redis.ConnectionError(str(e)))
            done.exception()  # retrieved: no "never retrieved" warning when nobody waited
        finally:
            self._connecting = None

    def _open_socket(self) -> socket.socket:
        """A socket connected and handshaken by redis-py (in a pool thread), detached from its connection."""
        conn = self._make_connection()
        conn.connect()
        sock = conn._sock
        if isinstance(sock, ssl.SSLSocket):
            conn.disconnect()
            self.unsupported = "TLS connections to Redis are read in the thread pool"
            raise redis.ConnectionError(self.unsupported)
        conn._sock = None  # ours now: redis-py must not close it
        sock.setblocking(False)
        return sock

    async def close(self) -> None:
        """Closes the connection (on the loop, which owns it)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()


class AioRecommenderServicer(pb_grpc.RecommenderServicer):
    """The Recommender service as coroutines over a synchronous RecommenderServicer (module docstring).

    Request metrics, error statuses and the access log are the servicer's (`call`, `observe`), so both
    server models report the same series for the same requests.
    """

    def __init__(self, servicer: Any, executor: concurrent.futures.Executor, redis_reads: LoopRedis | None = None
                 ) -> None:
        self._servicer = servicer
        self._executor = executor
        self._redis = redis_reads  # None: cache hits from Redis are read in the pool

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> bytes:
        start = perf_counter()
        servicer = self._servicer
        remaining = context.time_remaining()
        answer = servicer.recommend_inline(request, remaining)
        if answer is None and self._redis is not None and (read := servicer.recommend_read(request, remaining)):
            keys, plan = read
            try:
                reply = await self._redis.mget(keys)
            except (redis.RedisError, OSError):  # the pool's read has the retries and the circuit breaker
                reply = None
            if reply is not None:
                answer = servicer.recommend_from_read(request, plan, reply)
        if answer is not None:
            servicer.observe("Recommend", answer[1], None, start, context.peer)
            return answer[0]
        return await self._off_loop("Recommend", servicer._recommend, request, context, start)

    async def SimilarItems(self, request: pb.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.SimilarItemsResponse:
        return await self._off_loop("SimilarItems", self._servicer._similar_items, request, context, perf_counter())

    async def LogEvents(self, request: pb.LogEventsRequest, context: grpc.aio.ServicerContext) -> pb.LogEventsResponse:
        return await self._off_loop("LogEvents", self._servicer._log_events, request, context, perf_counter())

    async def _off_loop(self, method: str, fn: Callable, request: Any, context: grpc.aio.ServicerContext,
                        start: float) -> Any:
        """`fn(request, ThreadContext)` in the thread pool; its error becomes the RPC's status."""
        thread_context = ThreadContext(context.time_remaining())
        future = self._executor.submit(self._servicer.call, method, fn, request, thread_context)
        try:
            response, source, status, message = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client went away or the deadline passed: the thread sees it,
            thread_context.cancelled = True  # and the RPC is counted when it ends, as the sync server counts it
            try:
                peer = context.peer()
            except Exception:  # the call is gone: the access log shows no peer
                peer = ""
            future.add_done_callback(lambda done: self._observe_cancelled(method, done, start, peer))
            raise
        self._servicer.observe(method, source, status, start, context.peer)
        if status is not None:
            await context.abort(status, message)
        return response

    def _observe_cancelled(self, method: str, done: concurrent.futures.Future, start: float, peer: str) -> None:
        """Counts a cancelled RPC once its thread is done (DEADLINE_EXCEEDED, the servicer's answer to an inactive
        RPC), or at once if it never started."""
        if done.cancelled():
            source, status = "error", grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            _, source, status, _ = done.result()
        self._servicer.observe(method, source, status, start, lambda: peer)
