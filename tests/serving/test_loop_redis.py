"""LoopRedis (serving/aio.py): MGETs awaited on an event loop, pipelined on one connection, against a real Redis."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
import redis

from serving.aio import EventLoopThread, LoopRedis
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def loop():
    thread = EventLoopThread("test-loop-redis")
    yield thread
    thread.close()


@pytest.fixture
def pool():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    yield executor
    executor.shutdown(wait=False)


def _reader(url: str, pool, timeout_s: float = 0.2, retry_after_s: float = 1.0) -> LoopRedis:
    client = redis.Redis.from_url(url)
    connections = client.connection_pool
    return LoopRedis(lambda: connections.connection_class(**connections.connection_kwargs), timeout_s, pool,
                     retry_after_s)


def test_concurrent_mgets_each_get_their_own_reply_in_one_connection(own_redis, loop, pool):
    admin = own_redis.client()
    admin.mset({f"k{i}": f"v{i}".encode() * (1 + i % 50) for i in range(300)})
    reader = _reader(own_redis.url, pool)

    async def many() -> list:
        return await asyncio.gather(*(reader.mget((f"k{i}", f"k{i + 1}", "absent")) for i in range(299)))

    replies = loop.run(many())
    assert replies == [[f"v{i}".encode() * (1 + i % 50), f"v{i + 1}".encode() * (1 + (i + 1) % 50), None]
                       for i in range(299)]
    reader_clients = [c for c in admin.client_list() if c["cmd"] == "mget"]
    assert len(reader_clients) == 1  # all pipelined on one connection
    loop.run(reader.close())


def test_a_paused_redis_times_the_waiting_reads_out_and_the_next_read_reconnects(own_redis, loop, pool):
    admin = own_redis.client()
    admin.set("k", b"v")
    reader = _reader(own_redis.url, pool, timeout_s=0.2)
    assert loop.run(reader.mget(("k",))) == [b"v"]
    admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # longer than the wait below
    try:
        async def both() -> list:
            return await asyncio.gather(reader.mget(("k",)), reader.mget(("k",)), return_exceptions=True)

        errors = loop.run(both(), timeout=2.5)  # only the reader's own timeout can end them while Redis is paused
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert [type(e) for e in errors] == [redis.TimeoutError, redis.TimeoutError]
    assert loop.run(reader.mget(("k",))) == [b"v"]  # a new connection: the late replies are never misread
    loop.run(reader.close())


def test_a_killed_connection_fails_its_reads_and_the_next_read_reconnects(own_redis, loop, pool):
    admin = own_redis.client()
    admin.set("k", b"v")
    reader = _reader(own_redis.url, pool)
    assert loop.run(reader.mget(("k",))) == [b"v"]
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    for _ in range(50):  # the loop notices the closed socket, or the next write does
        try:
            assert loop.run(reader.mget(("k",))) == [b"v"]
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    else:
        pytest.fail("the reader never reconnected")
    loop.run(reader.close())


def test_an_unreachable_redis_is_a_connection_error_retried_only_after_the_pause(loop, pool):
    reader = _reader(f"redis://127.0.0.1:{free_port()}/0", pool, retry_after_s=30.0)
    with pytest.raises(redis.ConnectionError):
        loop.run(reader.mget(("k",)))
    with pytest.raises(redis.ConnectionError, match="moments ago"):  # no new connect attempt for 30 s
        loop.run(reader.mget(("k",)))
