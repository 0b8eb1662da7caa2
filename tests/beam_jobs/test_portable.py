"""The batch-scoring job through Beam's portable path, as Flink/Spark/Dataflow run it: a job service
(`local_job_service_main`) and an EXTERNAL environment whose SDK workers are processes a worker pool
(`worker_pool_main`) starts — all started and stopped here. Output identical to the local runner."""
from __future__ import annotations

import pytest

from tests.beam_jobs.conftest import assert_writes_what_the_local_runner_writes
from tests.beam_jobs.distributed import PortableJobService
from tests.conftest import integration_fixture

pytestmark = pytest.mark.integration


@integration_fixture("Beam's portable job service and a worker pool", scope="module")
def job_service(tmp_path_factory):
    service = PortableJobService(tmp_path_factory.mktemp("portable"))
    try:
        yield service.start_service()
    finally:
        service.stop()


def test_the_job_on_the_portable_runner_writes_what_the_local_runner_writes(scored, tiny_version, job_service,
                                                                            tmp_path):
    assert_writes_what_the_local_runner_writes(scored, tiny_version, tmp_path, "--", *job_service.flags(),
                                               diagnostics=job_service.logs)
