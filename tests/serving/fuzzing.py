"""Hostile-input fuzzing of a real Recommender server with hypothesis (issue 8): strategies and the oracle.

Generates malformed and extreme requests — huge strings, non-UTF-8 ids on the wire, empty
ids, control characters, num_results at the int32 extremes, NaN/±inf/huge/negative
weights, thousands of excludes, big context maps, truncated and random bytes — sends them
as raw bytes to a real gRPC server, and checks every answer:

  - a request the validation rules accept must get OK, one they reject INVALID_ARGUMENT
    (the oracle below restates serving.validation's rules independently);
  - undecodable bytes must get INVALID_ARGUMENT (never INTERNAL);
  - an OK answer has at most num_results unique items, none excluded, finite scores,
    the served model version and a real source;
  - SimilarItems may also answer NOT_FOUND for an unknown item.

tests/serving/test_fuzz.py runs a few hundred examples in CI; bench/fuzz.py runs 10,000 (and
checks health and INTERNAL counts afterwards, as the test does).
"""
from __future__ import annotations

import dataclasses
import math

import grpc
import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.recsys.v1 import recommender_pb2 as pb
from serving.validation import RequestLimits

RECOMMEND = "/recsys.v1.Recommender/Recommend"
SIMILAR = "/recsys.v1.Recommender/SimilarItems"
INT32 = (-2**31, 2**31 - 1)
SOURCES = {pb.CACHE, pb.PRECOMPUTED, pb.ONLINE, pb.FALLBACK}


# -- strategies ------------------------------------------------------------------------------
# Each field is hostile with probability 1/HOSTILE and otherwise benign, so that a good share
# of requests is valid (exercising the answer path) and each hostile value is tried alone.
HOSTILE = 4


def _mostly(draw, benign: st.SearchStrategy, hostile: st.SearchStrategy):
    return draw(hostile) if draw(st.integers(1, HOSTILE)) == 1 else draw(benign)


def hostile_ids() -> st.SearchStrategy[str]:
    """Ids no client should send: short/long/huge text, empty, control characters, 4-byte characters."""
    return st.one_of(
        st.text(max_size=40),
        st.text(min_size=60, max_size=300),                          # around the 256-byte limit
        st.integers(1, 200_000).map(lambda n: "x" * n),               # up to huge
        st.integers(60, 70).map(lambda n: "\U0001F600" * n),          # 4-byte characters across the limit
        st.just(""),
        st.text(st.characters(codec="ascii", categories=["Cc"]), min_size=1, max_size=5).map(lambda c: "u" + c),
    )


def _weight() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0.0, -0.0, 1e-320, 1.0, 1e308, -1.0, math.nan, math.inf, -math.inf]))


def _hostile_num_results() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(*INT32), st.sampled_from([-1, 0, 101, 102, *INT32]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string_field(number: int, value: bytes) -> bytes:
    """A length-delimited field with arbitrary bytes: how a string field with non-UTF-8 content looks on the wire."""
    return _varint((number << 3) | 2) + _varint(len(value)) + value


_NOT_UTF8 = st.binary(max_size=20).map(lambda b: b"\xff" + b + b"\xc3")  # 0xff never occurs in UTF-8


@dataclasses.dataclass
class Case:
    """One generated call: the raw bytes sent and, when they are an unmodified message, that message."""

    method: str
    raw: bytes
    message: pb.RecommendRequest | pb.SimilarItemsRequest | None
    mutation: str


@st.composite
def recommend_cases(draw, known_users: list[str], known_items: list[str]) -> Case:
    user = _mostly(draw, st.one_of(st.sampled_from(known_users), st.just("never-seen-user")), hostile_ids())
    k = _mostly(draw, st.integers(1, 100), _hostile_num_results())
    request = pb.RecommendRequest(user_id=user, num_results=k, explain=draw(st.booleans()))
    if draw(st.booleans()):
        benign = st.one_of(st.just(0.0), st.floats(0.1, 3.0))
        request.weights.engagement = _mostly(draw, benign, _weight())
        request.weights.quality = _mostly(draw, benign, _weight())
        request.weights.mode = _mostly(draw, st.sampled_from([0, 1, 2]), st.integers(-3, 9))
    request.exclude_item_ids.extend(_mostly(
        draw, st.lists(st.sampled_from(known_items), max_size=60),
        st.one_of(st.lists(hostile_ids(), max_size=10),
                  st.integers(900, 3000).map(lambda n: [f"item-{j}" for j in range(n)]))))  # thousands
    request.context.update(_mostly(draw, st.dictionaries(st.sampled_from(["page", "device"]), st.text(max_size=10),
                                                         max_size=2),
                                   st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=80)))
    raw = request.SerializeToString()
    mutation = draw(st.sampled_from(["none"] * 5 + ["non_utf8_user", "non_utf8_exclude", "truncated", "garbage"]))
    if mutation == "non_utf8_user":
        raw += _string_field(1, draw(_NOT_UTF8))
    elif mutation == "non_utf8_exclude":
        raw += _string_field(4, draw(_NOT_UTF8))
    elif mutation == "truncated":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif mutation == "garbage":
        raw = draw(st.binary(max_size=300))
    return Case(RECOMMEND, raw, request if mutation == "none" else None, mutation)


@st.composite
def similar_cases(draw, known_items: list[str]) -> Case:
    item = _mostly(draw, st.one_of(st.sampled_from(known_items), st.just("never-seen-item")), hostile_ids())
    request = pb.SimilarItemsRequest(item_id=item, num_results=_mostly(draw, st.integers(1, 100),
                                                                       _hostile_num_results()))
    raw = request.SerializeToString()
    mutation = draw(st.sampled_from(["none"] * 3 + ["non_utf8_item", "garbage"]))
    if mutation == "non_utf8_item":
        raw += _string_field(1, draw(_NOT_UTF8))
    elif mutation == "garbage":
        raw = draw(st.binary(max_size=300))
    return Case(SIMILAR, raw, request if mutation == "none" else None, mutation)


# -- the oracle ------------------------------------------------------------------------------
def _id_ok(value: str, limits: RequestLimits) -> bool:
    return bool(value) and len(value.encode()) <= limits.max_id_length and value.isprintable()


def recommend_is_valid(r: pb.RecommendRequest, limits: RequestLimits) -> bool:
    """serving.validation's rules, restated: what the server must accept."""
    if not _id_ok(r.user_id, limits) or not 1 <= r.num_results <= limits.max_num_results:
        return False
    if r.HasField("weights"):
        e, q = r.weights.engagement, r.weights.quality
        if not all(math.isfinite(w) and (w == 0 or 0.1 <= w <= 3.0) for w in (e, q)) or e == q == 0:
            return False
        if r.weights.mode not in (0, 1, 2):  # the cases leave transform unset
            return False
    if len(r.exclude_item_ids) > limits.max_exclude_ids or not all(_id_ok(i, limits) for i in r.exclude_item_ids):
        return False
    return len(r.context) <= limits.max_context_entries


def similar_is_valid(r: pb.SimilarItemsRequest, limits: RequestLimits) -> bool:
    return _id_ok(r.item_id, limits) and 1 <= r.num_results <= limits.max_num_results


class Checker:
    """Sends cases over one channel and asserts the contract; counts outcomes."""

    def __init__(self, channel: grpc.Channel, model_version: str, limits: RequestLimits = RequestLimits(),
                 timeout: float = 30.0) -> None:
        self.model_version = model_version
        self.limits = limits
        self.timeout = timeout
        self.calls = {m: channel.unary_unary(m, request_serializer=None, response_deserializer=None)
                      for m in (RECOMMEND, SIMILAR)}
        self.counts: dict[str, int] = {}

    def __call__(self, case: Case) -> None:
        try:
            raw = self.calls[case.method](case.raw, timeout=self.timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code, raw = e.code(), None
            assert e.details(), f"{code.name} without a message for {case}"
        key = f"{case.method.rsplit('/', 1)[-1]}:{code.name}"
        self.counts[key] = self.counts.get(key, 0) + 1
        allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
        if case.method == SIMILAR:
            allowed.add(grpc.StatusCode.NOT_FOUND)  # an unknown item is an answer, not a server error
        assert code in allowed, f"{code.name} for {case.mutation} {case.method} ({len(case.raw)} bytes)"
        if case.message is None:
            if case.mutation != "truncated" and case.mutation != "garbage":
                assert code == grpc.StatusCode.INVALID_ARGUMENT, f"non-UTF-8 {case.mutation} got {code.name}"
            return
        if case.method == RECOMMEND:
            valid = recommend_is_valid(case.message, self.limits)
        else:
            valid = similar_is_valid(case.message, self.limits)
        if not valid:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"invalid request answered {code.name}: {_short(case)}"
            return
        if case.method == SIMILAR:
            if code == grpc.StatusCode.OK:
                response = pb.SimilarItemsResponse.FromString(raw)
                assert len(response.items) <= case.message.num_results
                assert all(math.isfinite(i.score) for i in response.items)
            return
        assert code == grpc.StatusCode.OK, f"valid request answered {code.name}: {_short(case)}"
        response = pb.RecommendResponse.FromString(raw)
        items = [i.item_id for i in response.items]
        assert len(items) <= case.message.num_results
        assert len(set(items)) == len(items), "duplicate items"
        assert not set(items) & set(case.message.exclude_item_ids), "an excluded item was returned"
        assert response.model_version == self.model_version
        assert response.source in SOURCES
        for i in response.items:
            assert math.isfinite(i.score), f"non-finite score {i.score} for {_short(case)}"


def _short(case: Case) -> str:
    m = case.message
    if isinstance(m, pb.RecommendRequest):
        w = (m.weights.engagement, m.weights.quality) if m.HasField("weights") else None
        return (f"user_id[{len(m.user_id)}]={m.user_id[:30]!r} k={m.num_results} weights={w} "
                f"excludes={len(m.exclude_item_ids)} context={len(m.context)}")
    return repr(m)[:200]


def fuzz(checker: Checker, known_users: list[str], known_items: list[str], recommend_examples: int,
         similar_examples: int, seed: int = 0) -> None:
    """Runs both fuzzers (hypothesis with a fixed `seed`: reproducible); raises AssertionError on a broken contract."""
    common = dict(deadline=None, database=None, print_blob=False, suppress_health_check=list(HealthCheck))

    @hypothesis.seed(seed)
    @settings(max_examples=recommend_examples, **common)
    @given(recommend_cases(known_users, known_items))
    def recommend_(case):
        checker(case)

    @hypothesis.seed(seed)
    @settings(max_examples=similar_examples, **common)
    @given(similar_cases(known_items))
    def similar_(case):
        checker(case)

    recommend_()
    similar_()
