"""Hostile input: hypothesis-generated malformed and extreme requests against a real server (fuzzing.py).

CI runs RECSYS_FUZZ_EXAMPLES (default 250) Recommend examples and a fifth as many
SimilarItems with a fixed seed, so a failure reproduces; bench/fuzz.py runs 10,000.
"""
from __future__ import annotations

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import CacheConfig, RecommendServer, ServerConfig
from tests.serving.fuzzing import Checker, fuzz

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "250"))


def test_hostile_requests_get_invalid_argument_or_a_valid_answer_and_the_server_stays_healthy(pipeline, redis_url):
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
                             CacheConfig(redis_url=redis_url)).start()
    try:
        server.set_model(pipeline)
        users = list(pipeline.features.vocabularies["user_id"].tokens[:50])
        items = [str(i) for i in pipeline.index.item_ids[:50]]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            checker = Checker(channel, pipeline.model_version)
            fuzz(checker, users, items, EXAMPLES, max(1, EXAMPLES // 5), seed=8)
            assert sum(checker.counts.values()) >= EXAMPLES
            assert checker.counts.get("Recommend:OK", 0) > EXAMPLES // 20  # valid answers were exercised too
            assert checker.counts.get("Recommend:INVALID_ARGUMENT", 0) > EXAMPLES // 4
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            response = pb_grpc.RecommenderStub(channel).Recommend(
                pb.RecommendRequest(user_id=users[0], num_results=5), timeout=30)
            assert len(response.items) == 5
        assert server.metrics.value("recsys_requests_total", {"code": "INTERNAL"}) == 0
    finally:
        server.stop(grace=0)
