"""Dynamic micro-batching of concurrent cache misses: one user-tower call, one FAISS search and
one ranker call for every user whose candidates are being computed at the same moment.

A request thread that needs a user's candidates `compute`s them here instead of calling
`RecommendPipeline.candidates([user])` itself. A free worker thread takes what is queued and
calls `RecommendPipeline.candidates_each(users)`: the batch closes when it holds `max_users`,
when the first queued request has waited `max_wait_s`, or early enough that the tightest
queued deadline can still be met (the deadline less the recent batch compute time, and never
after half a request's time budget). Requests that queue while batches compute form the next
batch, so under load batches grow without any wait at all.

Answers are the unbatched ones, bit for bit: `candidates_each` shares model calls only in
layouts checked to reproduce `candidates([user])` (a plain batched call may round differently
in the last bit; see its docstring). tests/serving/test_batching.py compares every answer
with one-user-at-a-time calls.
Each waiter honours its own deadline (concurrent.futures.TimeoutError), and a request whose
deadline passed while it queued is dropped before the batch runs.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import CandidateSet

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
    model: Any
    user_id: str
    deadline: float | None  # clock() time; None = no deadline
    enqueued: float
    recent: Sequence[str] = ()  # the user's streamed engagements, newest first
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


class CandidateBatcher:
    """Groups concurrent `compute(model, user_id)` calls into `model.candidates_each(users)` calls.

    Args:
      max_users: the largest batch (users per candidates() call), >= 1.
      max_wait_s: how long the first request of a batch may wait for batch-mates, >= 0.
        0 = no wait: a batch is whatever queued while the previous one computed.
      workers: worker threads, each computing one batch at a time. Model calls release the
        GIL, so one worker's Python work (features, CandidateSets) overlaps another's model
        calls, while batches still form from what queues during a computation.
      clock: monotonic seconds (injected by tests).
      on_batch: called with (users in the batch, seconds it took) after each batch (metrics).
    """

    def __init__(self, max_users: int, max_wait_s: float, workers: int = 1, clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_users = max_users
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._on_batch = on_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._compute_s = 0.0  # recent batch compute time (EWMA): how early a deadline closes a batch
        self._threads = [threading.Thread(target=self._run, name=f"candidate-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- request threads ----------------------------------------------------------------
    def submit(self, model: Any, user_id: str, timeout: float | None = None,
               recent: Sequence[str] = ()) -> concurrent.futures.Future:
        """Queues `user_id` (with its streamed engagements `recent`, newest first) for `model`; the
        future's result is its CandidateSet."""
        now = self._clock()
        pending = _Pending(model, str(user_id), None if timeout is None else now + timeout, now, tuple(recent))
        with self._cond:
            if self._closed:
                raise RuntimeError("the candidate batcher is closed")
            self._queue.append(pending)
            self._cond.notify()
        return pending.future

    def compute(self, model: Any, user_id: str, timeout: float | None = None,
                recent: Sequence[str] = ()) -> CandidateSet:
        """`model.candidates([user_id], recent=[recent])[0]`, computed in a shared `model.candidates_each` call.

        Raises concurrent.futures.TimeoutError after `timeout` seconds (the request's
        deadline) and whatever the batch's candidates() call raised.
        """
        future = self.submit(model, user_id, timeout, recent)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # still queued: the worker skips it
            raise

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Finishes what is queued, then stops the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # -- the worker ---------------------------------------------------------------------
    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            close_at = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_users and not self._closed:
                at = close_at
                for p in self._queue:
                    if p.deadline is not None:
                        # Leave the request time to be computed: at most half its budget spent waiting.
                        at = min(at, p.deadline - self._compute_s, p.enqueued + 0.5 * (p.deadline - p.enqueued))
                remaining = at - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(len(self._queue), self.max_users)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = self._clock()
            live = []
            for p in batch:
                if not p.future.set_running_or_notify_cancel():
                    continue  # its waiter gave up
                if p.deadline is not None and p.deadline <= now:
                    p.future.set_exception(concurrent.futures.TimeoutError("deadline passed while queued"))
                    continue
                live.append(p)
            # A hot swap can leave requests for two models in one batch: one call per model.
            groups: dict[int, list[_Pending]] = {}
            for p in live:
                groups.setdefault(id(p.model), []).append(p)
            for group in groups.values():
                self._compute(group)

    def _compute(self, group: list[_Pending]) -> None:
        start = self._clock()
        try:
            users = [p.user_id for p in group]
            recent = [p.recent for p in group]
            # Without streamed history the call is exactly the pre-streaming one.
            results = (group[0].model.candidates_each(users, recent=recent) if any(recent)
                       else group[0].model.candidates_each(users))
        except BaseException as e:  # every waiter gets the batch's error, as a lone call would raise it
            for p in group:
                p.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        seconds = self._clock() - start
        self._compute_s = seconds if not self._compute_s else 0.8 * self._compute_s + 0.2 * seconds
        for p, result in zip(group, results):
            p.future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(group), seconds)
            except Exception:  # metrics never break serving
                log.exception("batch metrics callback failed")
