"""The Redis hit path's per-thread read connections (serving.cache.ThreadConnections) on a real redis-server."""
from __future__ import annotations

import concurrent.futures
import socket
import struct
import threading
import time

import pytest
import redis

from serving.cache import CACHE, CacheConfig, RedisCandidateStore, ThreadConnections, cache_key, redis_client
from serving.metrics import ServingMetrics
from tests.serving.test_cache import assert_same, make_candidates

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("thread_connections", [True, False])
def test_concurrent_reads_each_get_their_own_users_entry(redis_server, redis_url, thread_connections):
    config = CacheConfig(redis_url=redis_url, thread_read_connections=thread_connections, decoded_max_entries=0,
                         socket_timeout_s=2.0)
    store = RedisCandidateStore.from_config(config, ServingMetrics())
    users = [f"u{i}" for i in range(40)]
    expected = {u: make_candidates(n=3 + i % 7, seed=i) for i, u in enumerate(users)}
    for u in users:
        store.put("v1", u, expected[u])
    start = threading.Barrier(16)

    def read(worker: int) -> list[tuple[str, object]]:
        start.wait()
        return [(u, store.get_entry("v1", u)) for n in range(150) for u in [users[(worker * 7 + n) % len(users)]]]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = [r for f in [pool.submit(read, w) for w in range(16)] for r in f.result()]
    assert len(results) == 16 * 150
    for user, entry in results:
        assert entry is not None and entry.source == CACHE
        assert_same(entry.candidates, expected[user])
    if thread_connections:
        assert len(store._reader._connections) == 16  # one per thread that read, reused for all its reads
    store.close()


def test_a_thread_connection_reconnects_after_a_redis_restart(own_redis):
    metrics = ServingMetrics()
    store = RedisCandidateStore.from_config(CacheConfig(redis_url=own_redis.url, socket_timeout_s=1.0), metrics)
    store.put("v1", "u1", make_candidates(seed=1))
    assert store.get_entry("v1", "u1") is not None
    own_redis.stop()
    own_redis.start()  # same port, empty: the thread's socket is dead
    store.put("v1", "u1", make_candidates(seed=2))
    entry = store.get_entry("v1", "u1")  # the dead socket fails, the retry policy reconnects
    assert entry is not None
    assert_same(entry.candidates, make_candidates(seed=2))
    assert metrics.value("recsys_redis_faults_total") == 0
    store.close()


def test_thread_connections_use_the_clients_settings_and_close(redis_server, redis_url):
    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=0.25))
    client.set(cache_key("v1", "a"), b"x")
    reader = ThreadConnections(client)
    assert reader.mget([cache_key("v1", "a"), cache_key("v1", "b")]) == [b"x", None]
    conn = reader._connections[0]
    assert conn.socket_timeout == 0.25 and conn.retry is not None
    reader.close()
    assert conn._sock is None  # disconnected
    with pytest.raises(Exception, match="closed"):
        reader.mget([cache_key("v1", "a")])
    client.close()


def test_a_read_after_close_is_a_counted_fault_not_an_error(redis_server, redis_url):
    metrics = ServingMetrics()
    store = RedisCandidateStore.from_config(CacheConfig(redis_url=redis_url), metrics)
    store.put("v1", "u1", make_candidates())
    store.close()
    assert store.get_entry("v1", "u1") is None
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "error"}) == 1


def test_thread_reads_on_a_blocking_socket_equal_the_clients_reads(redis_server, redis_url):
    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=0.5))
    values = {"small": b"x", "empty": b"", "big": bytes(range(256)) * 1200, "binary": b"\r\n$-1\r\n*2\r\n"}
    for key, value in values.items():
        client.set(key, value)
    reader = ThreadConnections(client)
    for keys in (["small"], ["big", "missing", "small"], list(values) + ["missing"], [f"k{i}" for i in range(300)]):
        assert reader.mget(keys) == client.mget(keys)
    sock = reader._local.link.sock  # redis-py's socket, switched to blocking mode with kernel timeouts
    assert sock is reader._connections[0]._sock and sock.gettimeout() is None
    assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)) == (0, 500_000)
    reader.close()
    client.close()


def test_a_stalled_redis_is_a_timeout_and_its_late_reply_is_never_read(redis_server, redis_url):
    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=0.05, retries=0))
    client.set("a", b"1")
    client.set("b", b"2")
    reader = ThreadConnections(client)
    assert reader.mget(["a"]) == [b"1"]
    redis_server.client().execute_command("CLIENT", "PAUSE", 300, "ALL")
    start = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        reader.mget(["a"])
    assert time.monotonic() - start < 0.25
    time.sleep(0.35)  # the pause is over: the reply to the timed-out MGET was sent, to a socket now closed
    assert reader.mget(["b"]) == [b"2"]  # a new connection: not the late [b"1"]
    reader.close()
    client.close()


def test_a_killed_connection_is_reconnected_by_the_retry_policy(redis_server, redis_url):
    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=0.5, retries=1))
    client.set("a", b"1")
    reader = ThreadConnections(client)
    assert reader.mget(["a"]) == [b"1"]
    redis_server.client().execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert reader.mget(["a"]) == [b"1"]  # the dead socket fails, the retry reconnects
    reader.close()
    client.close()


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_failed_read_makes_exactly_the_retry_policys_attempts(redis_server, redis_url, retries):
    """A read on an open connection is one round trip outside the retry wrapper; when it fails, that failure is
    the policy's first: `retries` more attempts (each a new connection), then the error — not one attempt more."""
    timeout_s = 0.05
    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s,
                                      retries=retries, retry_backoff_s=0.001))
    client.set("a", b"1")
    reader = ThreadConnections(client)
    assert reader.mget(["a"]) == [b"1"]  # the thread's connection is open: the next read takes the fast path
    admin = redis_server.client()
    before = int(admin.info("stats")["total_connections_received"])
    admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
    start = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        reader.mget(["a"])
    elapsed = time.monotonic() - start
    time.sleep(max(0.0, 0.45 - elapsed))  # the pause is over
    opened = int(admin.info("stats")["total_connections_received"]) - before
    assert opened == retries  # attempt 1 on the open connection, then one new connection per retry
    assert elapsed < 0.4
    assert reader._connections[0]._sock is None  # disconnected: a late reply is never read
    assert reader.mget(["a"]) == [b"1"]
    reader.close()
    client.close()


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_failing_redis_gets_one_plus_retries_round_trips(redis_server, redis_url, retries, monkeypatch):
    """Every round trip fails (injected): the read raises after exactly 1 + `retries` of them, each retry on a
    reconnected socket — the fast first attempt is the policy's first, not an extra one."""
    import serving.cache as cache_module

    client = redis_client(CacheConfig(redis_url=redis_url, socket_timeout_s=0.5, retries=retries,
                                      retry_backoff_s=0.001))
    client.set("a", b"1")
    reader = ThreadConnections(client)
    assert reader.mget(["a"]) == [b"1"]
    sockets = []

    def failing_round_trip(link, command):
        sockets.append(link.sock)
        raise redis.ConnectionError("injected")

    monkeypatch.setattr(cache_module, "_round_trip", failing_round_trip)
    with pytest.raises(redis.ConnectionError, match="injected"):
        reader.mget(["a"])
    assert len(sockets) == 1 + retries
    assert len(set(map(id, sockets))) == 1 + retries  # each retry after a disconnect, on a new socket
    monkeypatch.undo()
    assert reader.mget(["a"]) == [b"1"]
    reader.close()
    client.close()
