"""A local redis-server: for `recsys serve-demo`, the tests and the benches.

Loopback only, no RDB snapshots. By default with the persistence the event log needs
(feedback/log.py): the append-only file on, fsync every second (`--appendonly yes
--appendfsync everysec`), so a crash (even kill -9) loses at most the last second of
acknowledged writes and a restart in the same `workdir` replays the AOF. With
`appendonly=False` nothing is written: stopping and starting it again gives an empty Redis
on the same port (how the cache fault tests simulate a Redis restart). Production points
`recsys serve --redis-url` at its own Redis, configured the same way (README, "Events").
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

REDIS_BINARY = "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalRedis:
    """redis-server on 127.0.0.1:`port` (0 = a free port), writing nothing but its socket."""

    def __init__(self, workdir: str | os.PathLike, port: int = 0, appendonly: bool = True) -> None:
        binary = shutil.which(REDIS_BINARY)
        if binary is None:
            raise FileNotFoundError(f"{REDIS_BINARY} is not installed: run scripts/setup.sh (it installs the "
                                    "Debian package redis-server)")
        self.binary = binary
        self.workdir = str(workdir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        """Starts it and waits until it answers PING (after replaying its AOF, if any); RuntimeError if it
        does not within `timeout_s`."""
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
             "--dir", self.workdir, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{REDIS_BINARY} did not start on port {self.port}") from None
                    time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; a no-op when not running."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """SIGKILL (a crash, for fault injection); a no-op when not running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self, timeout_s: float = 1.0):
        import redis

        return redis.Redis(port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def free_cluster_port(taken: set[int] = frozenset(), host: str = "127.0.0.1") -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too (Redis Cluster needs both)."""
    import random

    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 55535)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


class LocalRedisCluster:
    """A Redis Cluster on loopback: `masters` redis-server nodes (+ `replicas` per master), for tests and benches.

    Each node is `redis-server --cluster-enabled yes` on a free port with its own directory; `start`
    joins them with `redis-cli --cluster create ... --cluster-replicas N --cluster-yes` and waits
    until every node reports `cluster_state:ok` and every replica is in sync. A short
    `node_timeout_ms` makes a failover (a replica promoted after its master is killed) take about
    a second; `cluster-require-full-coverage no` keeps the other masters serving meanwhile;
    `repl-diskless-sync-delay 0` lets a replica sync at once (Redis 7 waits 5 s by default).
    `url` is the `redis+cluster://` URL every Redis user of the project accepts (core/redis_url.py).
    """

    def __init__(self, workdir: str | os.PathLike, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000, appendonly: bool = True) -> None:
        for binary in (REDIS_BINARY, "redis-cli"):
            if shutil.which(binary) is None:
                raise FileNotFoundError(f"{binary} is not installed: run scripts/setup.sh (it installs the Debian "
                                        "package redis-server, which ships redis-cli)")
        self.binary = shutil.which(REDIS_BINARY)
        self.workdir = str(workdir)
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.ports: list[int] = []
        for _ in range(masters * (1 + replicas)):
            self.ports.append(free_cluster_port(set(self.ports)))
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:self.masters])

    def _start_node(self, port: int) -> None:
        node_dir = os.path.join(self.workdir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0", "--dir", node_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def node(self, port: int, timeout_s: float = 0.5):
        import redis

        return redis.Redis(port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def start(self, timeout_s: float = 30.0) -> LocalRedisCluster:
        """Starts every node, creates the cluster and waits until it is ok; RuntimeError if it is not."""
        import redis

        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            client = self.node(port)
            try:
                while True:
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        if self.processes[port].poll() is not None or time.monotonic() > deadline:
                            self.stop()
                            raise RuntimeError(f"{REDIS_BINARY} did not start on port {port}") from None
                        time.sleep(0.01)
            finally:
                client.close()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s)
        if create.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr[-2000:]}")
        if not self.wait_ok(deadline - time.monotonic()):
            self.stop()
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        return self

    def wait_ok(self, timeout_s: float = 30.0, ports: list[int] | None = None) -> bool:
        """True once every running node (or `ports`) says cluster_state:ok, sees all slots served and every
        replica's link to its master is up."""
        import redis

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(self._node_ok(p) for p in (ports or self.running())):
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    def _node_ok(self, port: int) -> bool:
        client = self.node(port)
        try:
            info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
            if str(info.get("cluster_state")) != "ok" or str(info.get("cluster_slots_ok")) != "16384":
                return False
            replication = client.info("replication")
            return replication.get("role") != "slave" or replication.get("master_link_status") == "up"
        finally:
            client.close()

    def running(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def roles(self) -> dict[int, str]:
        """port → "master" | "slave" of every running node that answers (its INFO replication role)."""
        import redis

        out: dict[int, str] = {}
        for port in self.running():
            client = self.node(port)
            try:
                out[port] = client.info("replication")["role"]
            except redis.RedisError:
                pass
            finally:
                client.close()
        return out

    def masters_now(self) -> list[int]:
        return sorted(p for p, role in self.roles().items() if role == "master")

    def replicas_now(self) -> list[int]:
        return sorted(p for p, role in self.roles().items() if role == "slave")

    def kill(self, port: int) -> None:
        """SIGKILL one node (fault injection)."""
        proc = self.processes.get(port)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, port: int) -> None:
        """Starts a killed node again with its nodes.conf: it rejoins (a killed master as its successor's replica)."""
        self._start_node(port)

    def flush(self) -> None:
        """FLUSHALL on every running master (between tests sharing one cluster)."""
        for port in self.masters_now():
            client = self.node(port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL after 5 s."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
