"""Serving on a `grpc.aio` event loop: cache hits answered on the loop, everything else in a thread pool.

`ServerConfig.aio` (the default) runs the Recommender service this way; `--no-aio` runs the
synchronous gRPC server, where every RPC is handed to a pool thread.

Why (bench/RESULTS.md, issue 14): with the synchronous server a near-cache hit costs its ~10 µs of
Python plus ~100 µs of thread hand-offs and cold caches per RPC (gRPC's poller thread → a handler
thread → back), so it served ~0.6× the empty RPC's rate on 2 cores. On the loop the same hit is a
function call inside the coroutine gRPC already runs for the RPC.

What runs where:
- On the loop: a Recommend that needs no I/O, no model and no lock wait
  (`RecommenderServicer.recommend_inline`: a plain repeat whose near-cache entry Redis's invalidation
  messages vouch for), plus health, reflection, token auth and strict decoding.
- In the `workers` thread pool: everything else (`RecommenderServicer.call`: misses through the batcher,
  Redis reads, LogEvents, SimilarItems, errors). The servicer is the synchronous one, unchanged; its
  context is `ThreadContext` (the deadline and cancellation as the loop saw them).

The loop runs in its own thread (`EventLoopThread`), so `RecommendServer` keeps its synchronous API
(start, stop, wait, load, set_model) for `serve`, `--processes` and the tests.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, TypeVar

import grpc
import grpc.aio

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

T = TypeVar("T")


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


class ThreadContext:
    """What RecommenderServicer uses of a gRPC context, for a call run off the loop: the deadline as the loop
    read it at the start of the RPC, and whether the RPC was cancelled since (set by the awaiting coroutine)."""

    __slots__ = ("_deadline", "cancelled")

    def __init__(self, time_remaining: float | None) -> None:
        # gRPC reports a huge number (not None) when the client set no deadline
        self._deadline = None if time_remaining is None or time_remaining > 1e6 else time.monotonic() + time_remaining
        self.cancelled = False

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self.cancelled and (self._deadline is None or time.monotonic() < self._deadline)


class AioRecommenderServicer(pb_grpc.RecommenderServicer):
    """The Recommender service as coroutines over a synchronous RecommenderServicer (module docstring).

    Request metrics, error statuses and the access log are the servicer's (`call`, `observe`), so both
    server models report the same series for the same requests.
    """

    def __init__(self, servicer: Any, executor: concurrent.futures.Executor) -> None:
        self._servicer = servicer
        self._executor = executor

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> bytes:
        start = perf_counter()
        inline = self._servicer.recommend_inline(request, context.time_remaining())
        if inline is not None:
            self._servicer.observe("Recommend", inline[1], None, start, context.peer)
            return inline[0]
        return await self._off_loop("Recommend", self._servicer._recommend, request, context, start)

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
