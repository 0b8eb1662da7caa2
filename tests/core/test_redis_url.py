"""core/redis_url.py: the URL scheme selects one Redis or a Redis Cluster; bad URLs name their flag."""
from __future__ import annotations

import pytest
import redis

from core.redis_url import cluster_nodes, connect, is_cluster, key_slot
from pipeline import stamp, unstamp


def test_the_scheme_selects_cluster_mode_and_every_node_is_a_startup_node():
    assert is_cluster("redis+cluster://a:7000,b:7001") and is_cluster("rediss+cluster://a:7000")
    assert not is_cluster("redis://a:6379/0") and not is_cluster("unix:///tmp/r.sock")
    first, nodes = cluster_nodes("redis+cluster://user:pw@10.0.0.1:7000,10.0.0.2:7001,h3?ssl_cert_reqs=none")
    assert first == "redis://user:pw@10.0.0.1:7000?ssl_cert_reqs=none"
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("h3", 6379)]
    assert cluster_nodes("rediss+cluster://h:7000")[0] == "rediss://h:7000"


def test_a_standalone_url_gives_a_plain_client_without_connecting():
    client = connect("redis://127.0.0.1:1/0", socket_timeout=0.1)
    assert type(client) is redis.Redis
    client.close()


@pytest.mark.parametrize("url", ["redis+cluster://h:notaport", "redis+cluster://", "nosuch://h:1"])
def test_a_bad_url_is_an_error_naming_the_flag(url):
    with pytest.raises(ValueError, match="--events-redis-url"):
        connect(url, flag="--events-redis-url", socket_timeout=0.1, connect_timeout=0.1)


def test_hash_tags_and_stamps():
    assert key_slot("x:{u1}:y") == key_slot("other:{u1}") != key_slot("other:{u2}")
    raw = b"RC\x01payload"
    assert unstamp(stamp(0, raw)) == (0, raw) and stamp(0, raw) == raw  # counter 0 is stored as is
    assert unstamp(stamp(7, raw)) == (7, raw)
