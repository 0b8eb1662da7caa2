"""The server stack before any model is loaded: health, reflection, validation, metrics endpoint."""
from __future__ import annotations

import math
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving.server import SERVICE_NAME, RecommendServer, ServerConfig
from serving.validation import RequestLimits
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=[True, False], ids=["aio", "threads"])
def bare_server(request):
    """A server on a loopback port with no model loaded (it is still 'starting'); both server models."""
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=free_port(),
                                          aio=request.param),
                             limits=RequestLimits(max_num_results=20, max_exclude_ids=5)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, channel
    channel.close()
    server.stop(grace=0)


def test_health_is_not_serving_until_a_model_is_loaded(bare_server):
    _, channel = bare_server
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_recommend_before_load_is_unavailable(bare_server):
    _, channel = bare_server
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id="u1", num_results=5), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("request_kwargs, field", [
    ({"user_id": ""}, "user_id"),
    ({"user_id": "u" * 1000}, "user_id"),
    ({"user_id": "u\x001"}, "user_id"),
    ({"num_results": 0}, "num_results"),
    ({"num_results": -1}, "num_results"),
    ({"num_results": 21}, "num_results"),
    ({"weights": pb.BlendWeights(engagement=math.nan, quality=1.0)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=1.0, quality=math.inf)}, "weights.quality"),
    ({"weights": pb.BlendWeights(engagement=-1.0, quality=1.0)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=0.0, quality=0.0)}, "weights"),
    ({"weights": pb.BlendWeights(engagement=10.0, quality=1.0)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=1.0, quality=1e-9, mode=pb.MULTIPLICATIVE)}, "weights.quality"),
    ({"weights": pb.BlendWeights(engagement=1.0, quality=1.0, mode=7)}, "weights.mode"),
    ({"weights": pb.BlendWeights(engagement=1.0, quality=1.0, mode=pb.MULTIPLICATIVE, transform=pb.LOG)},
     "weights.transform"),
    ({"exclude_item_ids": [str(i) for i in range(6)]}, "exclude_item_ids"),
    ({"exclude_item_ids": ["i1", ""]}, "exclude_item_ids[1]"),
    ({"exclude_item_ids": ["i" * 300]}, "exclude_item_ids[0]"),
    ({"context": {str(i): "x" for i in range(65)}}, "context"),
])
def test_bad_recommend_input_is_invalid_argument(bare_server, request_kwargs, field):
    _, channel = bare_server
    request = pb.RecommendRequest(**{"user_id": "u1", "num_results": 5, **request_kwargs})
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.RecommenderStub(channel).Recommend(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field)  # the message names the offending field


@pytest.mark.parametrize("request_kwargs, field", [
    ({"item_id": ""}, "item_id"),
    ({"item_id": "i" * 300}, "item_id"),
    ({"num_results": 0}, "num_results"),
    ({"num_results": 21}, "num_results"),
])
def test_bad_similar_items_input_is_invalid_argument(bare_server, request_kwargs, field):
    _, channel = bare_server
    request = pb.SimilarItemsRequest(**{"item_id": "i1", "num_results": 3, **request_kwargs})
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.RecommenderStub(channel).SimilarItems(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field)


def test_reflection_lists_the_services_and_serves_the_proto(bare_server):
    _, channel = bare_server
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # grpcurl can decode messages


def test_metrics_endpoint_counts_rpcs_by_code(bare_server):
    server, channel = bare_server
    with pytest.raises(grpc.RpcError):
        pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id="", num_results=5), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.config.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recsys_requests_total{code="INVALID_ARGUMENT",method="Recommend"}' in body
    assert "recsys_request_latency_seconds_bucket" in body
    assert "recsys_cache_hit_ratio" in body
