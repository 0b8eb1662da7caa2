"""The `integration` marker is enforced (tests/conftest.py): a test that starts redis-server, a gRPC server or a
Beam pipeline without it fails with a message saying how to fix it, before anything starts."""
from __future__ import annotations

import concurrent.futures

import pytest

from tests.conftest import INTEGRATION_FIXTURES, require_integration


def test_unmarked_tests_cannot_start_redis_grpc_or_beam(tmp_path, request):
    import apache_beam as beam
    import grpc

    from serving.local_redis import LocalRedis

    redis = LocalRedis(tmp_path)  # finding the binary starts nothing
    with pytest.raises(pytest.fail.Exception, match="starts redis-server but is not marked integration"):
        redis.start()
    assert redis.process is None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(pytest.fail.Exception, match="starts a gRPC server but is not marked integration: add "
                                                        "`pytestmark = pytest.mark.integration`"):
            grpc.server(pool)
    with pytest.raises(pytest.fail.Exception, match="starts a Beam pipeline but is not marked integration"):
        beam.Pipeline().run()
    with pytest.raises(pytest.fail.Exception, match=request.node.name):
        require_integration(request.node, "anything")


@pytest.mark.integration
def test_marked_tests_pass_the_check(request):
    require_integration(request.node, "anything")


def test_the_shared_server_fixtures_are_declared():
    assert {"redis_server", "redis_url", "own_redis"} <= set(INTEGRATION_FIXTURES)
