"""The batch-scoring job through Beam's portable path, as Flink/Spark/Dataflow run it: a job service
(`local_job_service_main`) and an EXTERNAL environment whose SDK workers are processes a worker pool
(`worker_pool_main`) starts — all started and stopped here. Output identical to the local runner."""
from __future__ import annotations

import json

import pytest

from beam_jobs import read_scores
from tests.beam_jobs.conftest import batch_score, redis_snapshot
from tests.beam_jobs.distributed import PortableJobService
from tests.conftest import RedisServer, integration_fixture

pytestmark = pytest.mark.integration


@integration_fixture("Beam's portable job service and a worker pool", scope="module")
def job_service(tmp_path_factory):
    service = PortableJobService(tmp_path_factory.mktemp("portable"))
    try:
        yield service.start_service()
    finally:
        service.stop()


def _job(output) -> dict:
    body = json.loads((output / "job.json").read_text())
    body["config"] = {k: v for k, v in body["config"].items() if k not in ("output", "redis_url")}
    return body


def test_the_job_on_the_portable_runner_writes_what_the_local_runner_writes(scored, tiny_version, job_service,
                                                                            tmp_path):
    local_redis, local_out = scored
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        output = tmp_path / "scores"
        code = batch_score(tiny_version, "--redis-url", server.url, "--output", str(output), "--",
                           *job_service.flags())
        assert code == 0, job_service.logs()
        assert redis_snapshot(server) == redis_snapshot(local_redis)  # byte-identical entries
    finally:
        server.stop()
    assert read_scores(output).equals(read_scores(local_out))
    assert _job(output) == _job(local_out)  # config and every counter
