"""Shared fixtures, and the `integration` marker enforced. TF_USE_LEGACY_KERAS is set before anything can
import TensorFlow."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from features import Dataset, SyntheticConfig, generate_synthetic, load_movielens_100k  # noqa: E402

# -- `integration`: every test that starts redis-server, a gRPC server or a Beam pipeline has it -------
# Two checks, so a new test cannot forget the marker: using a fixture declared with
# @integration_fixture (even indirectly) fails before set-up; starting one directly (LocalRedis.start,
# grpc.server, a Beam Pipeline.run — through the CLI, a helper or a test body) fails at the start.
INTEGRATION_FIXTURES: dict[str, str] = {}  # fixture name -> what it starts
_running: list[pytest.Item] = []  # the test whose setup, call or teardown is running


def integration_fixture(starts: str, **fixture_kwargs):
    """@pytest.fixture(**fixture_kwargs) for a fixture that starts `starts`: tests using it must be marked
    integration."""
    def decorate(fn):
        INTEGRATION_FIXTURES[fn.__name__] = starts
        return pytest.fixture(**fixture_kwargs)(fn)
    return decorate


def require_integration(item: pytest.Item | None, starts: str) -> None:
    """Fails `item` (the running test; None outside a test) when it lacks the integration marker."""
    if item is not None and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} starts {starts} but is not marked integration: add `pytestmark = "
                    "pytest.mark.integration` to its module, or @pytest.mark.integration to the test",
                    pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in item.fixturenames:
        if name in INTEGRATION_FIXTURES:
            require_integration(item, f"{INTEGRATION_FIXTURES[name]} (fixture {name})")


def _guarded(starts: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        require_integration(_running[-1] if _running else None, starts)
        return fn(*args, **kwargs)
    wrapper.__integration_guard__ = True
    return wrapper


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` right after module `name` is first executed (Beam loads only when a test runs it)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then(module):
                exec_module(module)
                self.then(module)
            spec.loader.exec_module = exec_then
        return spec


def _guard_beam(module) -> None:
    if not getattr(module.Pipeline.run, "__integration_guard__", False):
        module.Pipeline.run = _guarded("a Beam pipeline", module.Pipeline.run)


def pytest_configure(config) -> None:
    import grpc

    from serving.local_redis import LocalRedis

    if not getattr(LocalRedis.start, "__integration_guard__", False):
        LocalRedis.start = _guarded("redis-server", LocalRedis.start)
    if not getattr(grpc.server, "__integration_guard__", False):
        grpc.server = _guarded("a gRPC server", grpc.server)
    if "apache_beam.pipeline" in sys.modules:
        _guard_beam(sys.modules["apache_beam.pipeline"])
    else:
        sys.meta_path.insert(0, _AfterImport("apache_beam.pipeline", _guard_beam))


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
    """serving.local_redis.LocalRedis, with its errors reported as test failures. Without persistence unless
    `appendonly`: a restart gives an empty Redis (what the cache fault tests rely on)."""

    def __init__(self, workdir, appendonly: bool = False) -> None:
        try:
            super().__init__(workdir, appendonly=appendonly)
        except FileNotFoundError as e:
            pytest.fail(f"{e} — these tests need a real Redis")

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        try:
            return super().start(timeout_s)
        except RuntimeError as e:
            pytest.fail(str(e))


@integration_fixture("redis-server", scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One redis-server for the session; use `redis_url` to get it flushed."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@integration_fixture("redis-server")
def redis_url(redis_server: RedisServer) -> str:
    """The session redis-server's URL, flushed before the test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@integration_fixture("redis-server")
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
# (the validation choices — β, calibration, stacking, blend, residual quality head — are the defaults)


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


@pytest.fixture(scope="session")
def tiny_eval_data():
    """EvalData of the split tiny_version was trained on (the data flags `recsys train` got)."""
    from core.config import parse_config
    from evaluation import build_eval_data
    from features import fit_feature_store
    from workflows.data import DataConfig, load_split

    dataset, split = load_split(parse_config(DataConfig, ["--source", "synthetic", *TINY_SYNTHETIC]))
    return build_eval_data(dataset, split, fit_feature_store(dataset, split.train))
