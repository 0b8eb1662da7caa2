"""One way to open Redis from a URL, standalone or Redis Cluster, for every Redis user of the project.

`redis://host:port/db` (or `rediss://`, `unix://`) is one Redis server (redis-py's `Redis`);
`redis+cluster://host:port[,host:port...]` (or `rediss+cluster://` for TLS) is a Redis Cluster
reached through any of the listed nodes (redis-py's `RedisCluster`, which discovers the others,
follows MOVED/ASK redirections and re-reads the slot map after a connection error, so a
replica promoted by a failover is found on the next retry). The server's cache, the event log,
the served-list logger, `recsys events export` and the Beam job's precomputed writer all open
their client here, so the scheme alone selects cluster mode everywhere.

Cluster mode needs the project's key layout, where every key of one user carries the same hash
tag (`{user id}`: pipeline/candidates.py, feedback/log.py) so a user's keys are read in one MGET
and written by one script.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

from core.errors import RecsysError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Errors of a Redis call that mean "Redis is unavailable or misbehaving right now": redis-py's own, and
# the cluster client's which are not RedisError subclasses (the slot map cannot be built while a failover is
# in progress, a slot has no node).
try:
    import redis as _redis

    REDIS_ERRORS: tuple[type[BaseException], ...] = (_redis.RedisError, _redis.exceptions.RedisClusterException)
except ImportError:  # pragma: no cover - redis is a dependency
    REDIS_ERRORS = ()


class RedisUrlError(RecsysError, ValueError):
    """A Redis URL that cannot be used (malformed, or no node of a cluster answers); the message names the flag."""


def is_cluster(url: str) -> bool:
    """True for a `redis+cluster://` or `rediss+cluster://` URL."""
    return urllib.parse.urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(the plain redis:// URL of the first node with the credentials and query, [(host, port) of every node])."""
    parts = urllib.parse.urlsplit(url)
    scheme = CLUSTER_SCHEMES[parts.scheme.lower()]
    creds, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host_port in hosts.split(","):
        host, _, port = host_port.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            nodes.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ValueError(f"bad node address {host_port!r} (host:port)") from None
    if not nodes or not nodes[0][0]:
        raise ValueError("a redis+cluster:// URL needs at least one host:port")
    first = urllib.parse.urlunsplit((scheme, (creds + "@" if creds else "") + hosts.split(",")[0].strip(),
                                     parts.path, parts.query, ""))
    return first, nodes


def connect(url: str, *, flag: str = "--redis-url", socket_timeout: float, connect_timeout: float | None = None,
            max_connections: int = 64, retry: Any = None, blocking_pool: bool = True) -> Any:
    """A redis-py client for `url`: `redis.Redis` on a BlockingConnectionPool, or `redis.RedisCluster`.

    Args:
      url: see the module docstring.
      flag: the option the URL came from, named in the error for a bad URL.
      socket_timeout, connect_timeout: seconds per command / per connection attempt.
      max_connections: pool size (per node for a cluster).
      retry: a redis.retry.Retry for connection errors and timeouts (None = redis-py's default). For a
        cluster it also bounds the client's re-read of the slot map after a failed node.
      blocking_pool: a standalone client waits up to `socket_timeout` for a free pooled connection.

    Raises:
      RedisUrlError (a ValueError) naming `flag` for a URL redis-py cannot parse, or a cluster none of whose
      nodes answers (redis-py's RedisCluster reads the slot map when it is created).
    """
    import redis

    connect_timeout = socket_timeout if connect_timeout is None else connect_timeout
    try:
        if is_cluster(url):
            first, nodes = cluster_nodes(url)
            from redis.cluster import ClusterNode

            kwargs: dict[str, Any] = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                                          max_connections=max_connections, protocol=2,
                                          # serve what is reachable while a failover is in progress
                                          require_full_coverage=False)
            if retry is not None:
                kwargs["retry"] = retry
            return redis.RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                                               **kwargs)
        pool_class = redis.BlockingConnectionPool if blocking_pool else redis.ConnectionPool
        extra = {"timeout": socket_timeout} if blocking_pool else {}
        pool = pool_class.from_url(url, max_connections=max_connections, socket_timeout=socket_timeout,
                                   socket_connect_timeout=connect_timeout, protocol=2,
                                   **({"retry": retry} if retry is not None else {}), **extra)
        return redis.Redis(connection_pool=pool)
    except (ValueError, redis.exceptions.RedisClusterException) as e:
        raise RedisUrlError(f"{flag} {url!r}: {e}") from e


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of `key` (its `{hash tag}` when it has one)."""
    from redis.crc import key_slot as _slot

    return _slot(key.encode())
