"""Shared fixtures. TF_USE_LEGACY_KERAS is set before anything can import TensorFlow."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from features import Dataset, SyntheticConfig, generate_synthetic, load_movielens_100k  # noqa: E402


@pytest.fixture(scope="session")
def movielens() -> Dataset:
    """The real MovieLens-100k (downloaded once into ./data or $RECSYS_DATA_DIR)."""
    return load_movielens_100k()


@pytest.fixture(scope="session")
def small_synthetic() -> Dataset:
    return generate_synthetic(SyntheticConfig(num_users=200, num_items=100, num_interactions=8000, seed=3))


# -- a real redis-server (serving, Beam and reliability tests) ---------------------------
# Started and stopped here; a missing binary is a failure with a clear message, not a skip.
from serving.local_redis import LocalRedis, free_port  # noqa: E402,F401  (free_port: used by the tests)


class RedisServer(LocalRedis):
    """serving.local_redis.LocalRedis, with its errors reported as test failures."""

    def __init__(self, workdir) -> None:
        try:
            super().__init__(workdir)
        except FileNotFoundError as e:
            pytest.fail(f"{e} — these tests need a real Redis")

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        try:
            return super().start(timeout_s)
        except RuntimeError as e:
            pytest.fail(str(e))


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


# -- one tiny complete version (features + retrieval + index + ranking), trained once ------
TINY_SYNTHETIC = ("--synthetic-num-users", "300", "--synthetic-num-items", "150", "--synthetic-num-interactions",
                  "6000", "--synthetic-seed", "0")
TINY_TRAIN = ("--source", "synthetic", *TINY_SYNTHETIC, "--epochs", "1", "--retrieval-embedding-dim", "16",
              "--retrieval-id-dim", "16", "--retrieval-feature-dim", "8", "--no-retrieval-progress",
              "--index-recall-queries", "100", "--no-promote")
TINY_RANKING = ("--ranking-id-dim", "8", "--ranking-feature-dim", "4", "--ranking-hidden", "16",
                "--ranking-head-hidden", "8", "--ranking-wide-buckets", "1009", "--ranking-history-length", "5",
                "--no-ranking-progress", "--neg-source", "sampled", "--pipeline-num-candidates", "50")


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory):
    """<tmp artifacts root>/tiny/: a complete sealed version trained once by `recsys train` on
    synthetic data (300 users, 150 items, 6000 interactions; 1 epoch). Not promoted (no CURRENT):
    pass `--artifacts tiny_version.parent --version tiny`. Treat it as read-only; copy it to modify."""
    from recsys.cli import main as recsys_main

    root = tmp_path_factory.mktemp("artifacts")
    code = recsys_main(["--log-level", "WARNING", "train", "--artifacts", str(root), "--new-version", "tiny", *TINY_TRAIN,
                        *TINY_RANKING])
    assert code == 0, "recsys train failed for the tiny_version fixture"
    version_dir = root / "tiny"
    assert (version_dir / "ranking").is_dir(), "recsys train wrote no ranking/ stage"
    return version_dir


@pytest.fixture(scope="session")
def pipeline(tiny_version):
    """The tiny version loaded as the online RecommendPipeline (once per session: serving and Beam
    tests compare against it; wrap it, never mutate it)."""
    from pipeline import RecommendPipeline

    return RecommendPipeline.from_version_dir(tiny_version)
