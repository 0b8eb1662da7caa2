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
