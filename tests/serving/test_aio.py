"""The grpc.aio server model (serving/aio.py): near-cache hits answered on the event loop, the rest in the pool."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from protos.recsys.v1 import recommender_pb2 as pb
from serving.aio import EventLoopThread, ThreadContext
from tests.serving.test_faults import GatedPipeline


def _answered_while_the_pool_is_busy(stub, gated: GatedPipeline, hot: str, other: str) -> bool:
    """Computes and memoizes `hot`'s answer, holds the server's one pool thread inside `other`'s cache miss, then
    asks for `hot` again: True if it was answered (the same items, from the cache), False if it waited past its
    1 s deadline for the pool."""
    request = pb.RecommendRequest(user_id=hot, num_results=5)
    first = stub.Recommend(request, timeout=30)
    assert stub.Recommend(request, timeout=30).source == pb.CACHE  # memoizes the answer on the entry
    gated.gate.clear()
    gated.entered.clear()
    busy = stub.Recommend.future(pb.RecommendRequest(user_id=other, num_results=5), timeout=30)
    try:
        assert gated.entered.wait(10)  # the one pool thread now waits inside a cache miss
        try:
            again = stub.Recommend(request, timeout=1.0)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            return False
        assert again.source == pb.CACHE and [i.item_id for i in again.items] == [i.item_id for i in first.items]
        assert again.request_id != first.request_id
        return True
    finally:
        gated.gate.set()
        assert busy.result().source == pb.ONLINE
        assert stub.Recommend(request, timeout=30).source == pb.CACHE


@pytest.mark.integration
@pytest.mark.parametrize("aio", [True, False], ids=["aio", "threads"])
def test_near_hits_do_not_wait_for_a_busy_thread_pool_on_the_loop(start, redis_url, pipeline, known_users, aio):
    gated = GatedPipeline(pipeline)
    _, stub = start(redis_url, model=gated, workers=1, aio=aio)
    # aio: answered on the loop; the synchronous server has no thread to give it
    assert _answered_while_the_pool_is_busy(stub, gated, known_users[0], known_users[1]) is aio


@pytest.mark.integration
@pytest.mark.parametrize("loop_reads", [True, False], ids=["loop-reads", "pool-reads"])
@pytest.mark.parametrize("cache", [{"near_invalidations": False}, {"near_ttl_s": 0.0}],
                         ids=["near-hit-read-per-hit", "redis-hit"])
def test_cache_hits_that_need_a_redis_read_are_read_on_the_loop(start, redis_url, pipeline, known_users, loop_reads,
                                                                 cache):
    gated = GatedPipeline(pipeline)
    _, stub = start(redis_url, model=gated, workers=1, cache=cache, aio_redis_reads=loop_reads)
    # loop reads: the MGET is awaited on the loop and the hit answered there; pool reads wait for the busy thread
    assert _answered_while_the_pool_is_busy(stub, gated, known_users[2], known_users[3]) is loop_reads


def test_thread_context_reports_the_deadline_and_cancellation():
    assert ThreadContext(None).time_remaining() is None and ThreadContext(None).is_active()
    no_deadline = ThreadContext(1e9)  # what gRPC reports when the client set no deadline
    assert no_deadline.time_remaining() is None and no_deadline.is_active()
    later = ThreadContext(60.0)
    assert 0 < later.time_remaining() <= 60.0 and later.is_active()
    later.cancelled = True
    assert not later.is_active()
    passed = ThreadContext(-1.0)
    assert passed.time_remaining() == 0.0 and not passed.is_active()


def test_event_loop_thread_runs_coroutines_and_refuses_to_wait_on_itself():
    loop = EventLoopThread("test-loop")
    try:
        async def double(x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

        assert loop.run(double(21)) == 42

        async def nested() -> None:
            coroutine = double(1)
            try:
                loop.run(coroutine)
            finally:
                coroutine.close()

        with pytest.raises(RuntimeError, match="own thread"):
            loop.run(nested())
    finally:
        loop.close()
    assert loop.loop.is_closed()
