"""Request validation: every bad field is an InvalidRequestError naming the field."""
from __future__ import annotations

import math

import pytest

from core.errors import InvalidRequestError
from protos.recsys.v1 import recommender_pb2 as pb
from serving.validation import BlendRequest, RequestLimits, validate_recommend, validate_similar

LIMITS = RequestLimits(max_num_results=50, max_id_length=16, max_exclude_ids=3, max_context_entries=2)


def test_validate_recommend_accepts_a_good_request():
    q = validate_recommend(pb.RecommendRequest(user_id="u1", num_results=10, exclude_item_ids=["a", "b"],
                                               weights=pb.BlendWeights(engagement=1, quality=0), explain=True),
                           LIMITS)
    assert (q.user_id, q.num_results, q.weights, q.exclude, q.explain) == ("u1", 10, BlendRequest(1.0, 0.0),
                                                                           frozenset({"a", "b"}), True)
    assert validate_recommend(pb.RecommendRequest(user_id="u1", num_results=1), LIMITS).weights is None


@pytest.mark.parametrize("request_kwargs, field", [
    ({"user_id": ""}, "user_id"),
    ({"user_id": "x" * 17}, "user_id"),
    ({"user_id": "a\nb"}, "user_id"),
    ({"num_results": 0}, "num_results"),
    ({"num_results": -3}, "num_results"),
    ({"num_results": 51}, "num_results"),
    ({"weights": pb.BlendWeights(engagement=math.nan, quality=1)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=1, quality=-0.5)}, "weights.quality"),
    ({"weights": pb.BlendWeights(engagement=math.inf, quality=1)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=0, quality=0)}, "weights"),
    ({"weights": pb.BlendWeights(engagement=0, quality=0, mode=pb.ADDITIVE)}, "weights"),
    ({"weights": pb.BlendWeights(engagement=3.01, quality=1)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1e6)}, "weights.quality"),
    ({"weights": pb.BlendWeights(engagement=0.09, quality=1)}, "weights.engagement"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1e-300)}, "weights.quality"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1, mode=3)}, "weights.mode"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1, mode=-1)}, "weights.mode"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1, transform=4)}, "weights.transform"),
    ({"weights": pb.BlendWeights(engagement=1, quality=1, mode=pb.MULTIPLICATIVE, transform=pb.LOGIT)},
     "weights.transform"),
    ({"exclude_item_ids": ["a", "b", "c", "d"]}, "exclude_item_ids"),
    ({"exclude_item_ids": ["a", ""]}, "exclude_item_ids[1]"),
    ({"context": {"a": "1", "b": "2", "c": "3"}}, "context"),
])
def test_validate_recommend_rejects_bad_fields(request_kwargs, field):
    request = pb.RecommendRequest(**{"user_id": "u1", "num_results": 5, **request_kwargs})
    with pytest.raises(InvalidRequestError) as e:
        validate_recommend(request, LIMITS)
    assert str(e.value).startswith(field)


def test_validate_recommend_reads_the_blend_mode_and_transform():
    def blend(**kwargs):
        w = pb.BlendWeights(engagement=0.1, quality=3, **kwargs)
        return validate_recommend(pb.RecommendRequest(user_id="u1", num_results=1, weights=w), LIMITS).weights

    assert blend() == BlendRequest(0.1, 3.0, None, None)
    assert blend(mode=pb.ADDITIVE, transform=pb.LOG) == BlendRequest(0.1, 3.0, "additive", "log")
    assert blend(mode=pb.MULTIPLICATIVE, transform=pb.IDENTITY) == BlendRequest(0.1, 3.0, "multiplicative", "identity")


def test_validate_similar():
    assert validate_similar(pb.SimilarItemsRequest(item_id="i1", num_results=3), LIMITS) == ("i1", 3)
    with pytest.raises(InvalidRequestError, match="^item_id"):
        validate_similar(pb.SimilarItemsRequest(item_id="", num_results=3), LIMITS)
    with pytest.raises(InvalidRequestError, match="^num_results"):
        validate_similar(pb.SimilarItemsRequest(item_id="i1", num_results=0), LIMITS)


def test_request_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_num_results"):
        RequestLimits(max_num_results=0)
