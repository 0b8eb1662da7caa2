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
