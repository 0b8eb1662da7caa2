"""Serving fixtures: a real redis-server on a free loopback port (started and stopped here)."""
from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time

import pytest
import redis

REDIS_BINARY = "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server (no persistence) that a test can stop and start again."""

    def __init__(self, workdir: pathlib.Path) -> None:
        binary = shutil.which(REDIS_BINARY)
        if binary is None:
            pytest.fail(f"{REDIS_BINARY} is not installed: run scripts/setup.sh (it installs the Debian package "
                        "redis-server) — serving tests need a real Redis")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One redis-server for the session; use `redis_url` to get it flushed."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session redis-server's URL, flushed before the test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path) -> RedisServer:
    """A redis-server of this test's own, which the test may stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# -- one tiny trained version shared by every server test -------------------------------
TINY_TRAIN = ["--source", "synthetic", "--synthetic-num-users", "300", "--synthetic-num-items", "150",
              "--synthetic-num-interactions", "6000", "--epochs", "1", "--retrieval-embedding-dim", "16",
              "--retrieval-id-dim", "16", "--retrieval-feature-dim", "8", "--no-retrieval-progress",
              "--index-recall-queries", "100", "--no-promote"]


def _add_tiny_ranker(version_dir: pathlib.Path) -> None:
    """Until `recsys train` has its ranking stage: a 1-epoch ranker added to the sealed version."""
    from features import FeatureStore, SplitConfig, SyntheticConfig, generate_synthetic, split_interactions
    from ranking import RankerConfig, export_ranker, train_ranker, training_rows
    from ranking.negatives import NegativeConfig
    from recsys import registry

    dataset = generate_synthetic(SyntheticConfig(num_users=300, num_items=150, num_interactions=6000))
    split = split_interactions(dataset.interactions, SplitConfig())
    store = FeatureStore.load(version_dir / "features")
    model, info = train_ranker(training_rows(split, store, NegativeConfig()), store,
                               RankerConfig(epochs=1, id_dim=8, hidden=(16,), head_hidden=8, wide_buckets=1009, history_length=0,
                                            progress=False))
    export_ranker(model, version_dir / "ranking", info)
    manifest = {k: v for k, v in registry.read_manifest(version_dir).items()
                if k not in ("checksums", "version", "created", "git_sha")}
    registry.finalize_version(version_dir, manifest)


@pytest.fixture(scope="session")
def trained_version(tmp_path_factory) -> pathlib.Path:
    """artifacts/<version>/ of a tiny model trained on synthetic data by `recsys train`."""
    from recsys.cli import main as recsys_main

    root = tmp_path_factory.mktemp("artifacts")
    code = recsys_main(["--log-level", "WARNING", "train", "--artifacts", str(root), "--version", "tiny", *TINY_TRAIN])
    assert code == 0, "recsys train failed for the serving fixture"
    version_dir = root / "tiny"
    if not (version_dir / "ranking").exists():
        _add_tiny_ranker(version_dir)
    return version_dir


@pytest.fixture(scope="session")
def pipeline(trained_version):
    from serving.pipeline import RecommendPipeline

    return RecommendPipeline.from_version_dir(trained_version)


@pytest.fixture(scope="session")
def known_users(pipeline) -> list[str]:
    """Train users with at least 3 seen items, in a fixed order."""
    users = [u for u in pipeline.features.vocabularies["user_id"].tokens
             if len(pipeline.features.seen_items([u])[0]) >= 3]
    assert len(users) >= 20
    return users
