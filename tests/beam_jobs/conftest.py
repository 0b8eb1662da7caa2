"""Beam fixtures on top of tests/conftest.py (redis_server, redis_url, own_redis, RedisServer, tiny_version, pipeline)."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.conftest import RedisServer, integration_fixture

BATCH_SIZE = 64  # several batches over the tiny version's ~300 users


def in_memory(workers: int = 1) -> list[str]:
    """Beam flags for the fast, single-process local runner."""
    return ["--direct-running-mode", "in_memory", "--direct-num-workers", str(workers)]


def batch_score(version_dir: pathlib.Path, *flags: str) -> int:
    """`recsys batch-score` on the tiny version, in-process; returns the exit code."""
    from recsys.cli import main as recsys_main

    return recsys_main(["--log-level", "WARNING", "batch-score", "--artifacts", str(version_dir.parent), "--version",
                        version_dir.name, "--batch-size", str(BATCH_SIZE), "--progress-s", "0.5", *flags])


def job_counters(output: pathlib.Path) -> dict[str, int]:
    return json.loads((output / "job.json").read_text())["counters"]


def job_record(output: pathlib.Path, redis_counters: bool = True) -> dict:
    """job.json without the two fields that name where the run wrote (and without the Redis counters unless
    `redis_counters`): what two runs of the same job must agree on."""
    body = json.loads((output / "job.json").read_text())
    body["config"] = {k: v for k, v in body["config"].items() if k not in ("output", "redis_url")}
    if not redis_counters:
        body["counters"] = {k: v for k, v in body["counters"].items() if not k.startswith("redis_")}
    return body


def assert_writes_what_the_local_runner_writes(scored, version_dir: pathlib.Path, tmp_path: pathlib.Path,
                                               *flags: str, diagnostics=lambda: "") -> pathlib.Path:
    """Runs the job with `flags` (a runner and its options) into a fresh redis-server and Parquet directory and
    asserts it wrote what the local runner's `scored` run wrote: Redis entries byte-identical, Parquet
    row-identical, job.json (config and every counter) identical. `diagnostics()` is shown if the job fails.
    Returns the run's output directory."""
    from beam_jobs import read_scores

    local_redis, local_out = scored
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        output = tmp_path / "scores"
        code = batch_score(version_dir, "--redis-url", server.url, "--output", str(output), *flags)
        assert code == 0, diagnostics()
        assert redis_snapshot(server) == redis_snapshot(local_redis)
    finally:
        server.stop()
    assert read_scores(output).equals(read_scores(local_out))
    assert job_record(output) == job_record(local_out)
    return output


def redis_snapshot(server: RedisServer) -> dict[bytes, bytes]:
    """Every key and value in the server's db 0."""
    client = server.client()
    try:
        keys = sorted(client.keys("*"))
        return dict(zip(keys, client.mget(keys))) if keys else {}
    finally:
        client.close()


@pytest.fixture(scope="session")
def train_users(pipeline) -> list[str]:
    return list(pipeline.features.vocabularies["user_id"].tokens)


@pytest.fixture(scope="session")
def eval_data(tiny_eval_data):
    """EvalData of the split tiny_version was trained on (tests/conftest.py `tiny_eval_data`)."""
    return tiny_eval_data


@integration_fixture("a Beam pipeline and a redis-server", scope="module")
def scored(tiny_version, tmp_path_factory):
    """One job run over every train user into a Redis of its own and a Parquet directory:
    (redis server, output dir). Module-scoped so the tests below read one run."""
    redis_dir = tmp_path_factory.mktemp("beam_redis")
    server = RedisServer(redis_dir)
    server.start()
    output = tmp_path_factory.mktemp("beam_out") / "scores"
    code = batch_score(tiny_version, "--redis-url", server.url, "--output", str(output), *in_memory())
    assert code == 0
    yield server, output
    server.stop()
