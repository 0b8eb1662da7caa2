"""Micro-batched cache misses (serving/batcher.py): answers identical to one user at a time, deadlines,
batching off, the candidate-set codec and the array feature gather the request path uses."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest

from pipeline import CandidateSet, CorruptEntryError, cache_key
from protos.recsys.v1 import recommender_pb2 as pb
from serving import ServerConfig
from serving.batcher import CandidateBatcher

K = 10


class Recording:
    """The real pipeline, recording the users of every candidates()/candidates_each() call (optionally held
    at a gate)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _record(self, user_ids) -> None:
        with self._lock:
            self.calls.append(list(user_ids))
        self.gate.wait(10)

    def candidates(self, user_ids, exclude=None):
        self._record(user_ids)
        return self.inner.candidates(user_ids, exclude)

    def candidates_each(self, user_ids, exclude=None):
        self._record(user_ids)
        return self.inner.candidates_each(user_ids, exclude)


@pytest.fixture(scope="module")
def one_at_a_time(pipeline, known_users) -> dict[str, CandidateSet]:
    """Every known user's candidates computed alone: the unbatched answer."""
    return {u: pipeline.candidates([u])[0] for u in known_users}


@pytest.fixture
def start(start):
    """The conftest server starter with 16 handler threads, for 16 concurrent clients."""
    def _start(*args, **overrides):
        return start(*args, **{"workers": 16, **overrides})
    return _start


def expected_items(pipeline, cands: CandidateSet, k: int = K) -> list[tuple[str, float, float, float]]:
    """What the server answers for `cands`: the blend's top k, as the response's float32 fields hold them."""
    item_ids, scores, order = pipeline.blend_top_k(cands, pipeline.default_weights, k)
    f32 = np.float32
    return [(str(i), float(f32(s)), float(f32(cands.engagement[j])), float(f32(cands.quality[j])))
            for i, s, j in zip(item_ids, scores, order)]


def got_items(response: pb.RecommendResponse) -> list[tuple[str, float, float, float]]:
    return [(i.item_id, i.score, i.engagement, i.quality) for i in response.items]


# -- the candidate-set codec -------------------------------------------------------------------------------
def test_candidate_set_codec_round_trips_exactly(pipeline, known_users):
    for cands in [*pipeline.candidates(known_users[:5]),
                  CandidateSet(np.array(["é", "x\ty", "a b"], dtype=object), np.array([np.inf, -0.0, 1e-38], np.float32),
                               np.array([0.0, 1.0, 5e-45], np.float32), np.array([0.5, 0.25, 1.0], np.float32), "v-ü"),
                  CandidateSet(np.array([], dtype=object), *(np.zeros(0, np.float32),) * 3, "v")]:
        raw = cands.to_bytes()
        back = CandidateSet.from_bytes(raw)
        assert list(back.item_ids) == [str(i) for i in cands.item_ids] and back.model_version == cands.model_version
        for name in ("retrieval_scores", "engagement", "quality"):
            got, want = getattr(back, name), np.asarray(getattr(cands, name), dtype=np.float32)
            assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
        assert back.to_bytes() == raw


def test_candidate_set_codec_rejects_truncated_and_padded_bytes(pipeline, known_users):
    raw = pipeline.candidates(known_users[:1])[0].to_bytes()
    for bad in (raw[:-1], raw + b"\x00", raw[:20], b"RC\x02" + raw[3:], b""):
        with pytest.raises(CorruptEntryError):
            CandidateSet.from_bytes(bad)


# -- the feature gather on the request path ----------------------------------------------------------------
def test_feature_gather_equals_the_pandas_reindex_it_replaced(pipeline):
    store = pipeline.features

    def reindexed(table, ids, categorical, numeric, multi, text, id_name):
        rows = table.reindex(np.asarray([str(i) for i in ids], dtype=object))
        out = {id_name: np.asarray([str(i) for i in ids], dtype=object)}
        for col in (*categorical, *multi, *text):
            out[col] = rows[col].fillna("").astype(str).to_numpy(dtype=object)
        for col in numeric:
            mean = store.numeric_stats.get(col, (0.0, 1.0))[0]
            out[col] = rows[col].astype("float64").fillna(mean).to_numpy(dtype=np.float32)
        return out

    spec = store.spec
    users = [*map(str, store.users.index[:50]), "no-such-user", ""]
    items = [*map(str, store.items.index), "no-such-item"]
    for got, want in ((store.user_features(users),
                       reindexed(store.users, users, spec.user_categorical, spec.user_numeric, (), (), "user_id")),
                      (store.item_features(items),
                       reindexed(store.items, items, spec.item_categorical, spec.item_numeric, spec.item_multi,
                                 spec.item_text, "item_id"))):
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype
            if want[k].dtype == object:
                assert list(got[k]) == list(want[k])
            else:
                assert got[k].tobytes() == want[k].tobytes()


def test_feature_gather_follows_a_replaced_table(pipeline):
    import dataclasses

    store = dataclasses.replace(pipeline.features)
    user = str(store.users.index[0])
    before = store.user_features([user])
    store.users = pd.DataFrame(store.users.iloc[1:])  # a new table object: the gather arrays are rebuilt
    after = store.user_features([user])
    for col in store.spec.user_categorical:
        assert after[col][0] == "" and before[col][0] == str(pipeline.features.users[col].iloc[0])


# -- candidates_each: shared model calls, one-user bits ------------------------------------------------------
def test_candidates_each_equals_candidates_one_user_at_a_time(pipeline, known_users, one_at_a_time):
    plan = pipeline.batching_plan()
    assert plan.tower_rows >= 1
    for size in (1, 2, 7, 8, 9, 33, len(known_users)):
        users = known_users[:size]
        got = pipeline.candidates_each(users)
        assert [c.to_bytes() for c in got] == [one_at_a_time[u].to_bytes() for u in users]
    exclude = [set(one_at_a_time[u].item_ids[:3]) for u in known_users[:5]]
    got = pipeline.candidates_each(known_users[:5], exclude)
    want = [pipeline.candidates([u], [e])[0] for u, e in zip(known_users[:5], exclude)]
    assert [c.to_bytes() for c in got] == [c.to_bytes() for c in want]


# -- the batcher itself ------------------------------------------------------------------------------------
def test_batcher_answers_each_user_as_if_alone_in_bounded_batches(pipeline, known_users, one_at_a_time):
    model = Recording(pipeline)
    model.gate.clear()  # hold the first batch so the rest queue up
    batcher = CandidateBatcher(max_users=8, max_wait_s=0.05)
    try:
        users = known_users[:40]
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(batcher.compute, model, u, 30.0) for u in users]
            time.sleep(0.2)
            model.gate.set()
            results = [f.result() for f in futures]
    finally:
        batcher.close()
    assert all(r.to_bytes() == one_at_a_time[u].to_bytes() for u, r in zip(users, results))
    assert sorted(u for call in model.calls for u in call) == sorted(users)
    assert max(len(c) for c in model.calls) <= 8 and len(model.calls) < len(users)


def test_batcher_gives_every_waiter_the_batchs_error(pipeline, known_users):
    class Failing(Recording):
        def candidates_each(self, user_ids, exclude=None):
            super().candidates_each(user_ids, exclude)
            raise RuntimeError("boom")

    model = Failing(pipeline)
    model.gate.clear()
    batcher = CandidateBatcher(max_users=4, max_wait_s=0.05)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.compute, model, u, 30.0) for u in known_users[:4]]
            time.sleep(0.2)
            model.gate.set()
            for f in futures:
                with pytest.raises(RuntimeError, match="boom"):
                    f.result()
        assert batcher.compute(pipeline, known_users[0], 30.0).to_bytes() == \
            pipeline.candidates([known_users[0]])[0].to_bytes()  # the worker survives
    finally:
        batcher.close()


def test_batcher_calls_each_model_with_its_own_users(pipeline, known_users):
    a, b = Recording(pipeline), Recording(pipeline)
    a.gate.clear()
    batcher = CandidateBatcher(max_users=16, max_wait_s=0.05)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = pool.submit(batcher.compute, a, known_users[0], 30.0)
            time.sleep(0.1)  # a's first batch is running (held at its gate); the rest queue together
            futures = [pool.submit(batcher.compute, m, u, 30.0) for m, u in zip([a, b] * 3, known_users[1:7])]
            time.sleep(0.1)
            a.gate.set()
            first.result()
            [f.result() for f in futures]
    finally:
        batcher.close()
    assert sorted(u for c in a.calls for u in c) == sorted([known_users[0], *known_users[1:7:2]])
    assert sorted(u for c in b.calls for u in c) == sorted(known_users[2:7:2])


def test_batcher_closes_a_batch_for_a_deadline_shorter_than_its_wait(pipeline, known_users):
    batcher = CandidateBatcher(max_users=64, max_wait_s=60.0)
    try:
        user = known_users[0]
        try:
            got = batcher.compute(pipeline, user, timeout=1.0)
        except concurrent.futures.TimeoutError:
            got = None  # a machine too slow to compute it in 1 s: still not held for the 60 s wait
        if got is not None:
            assert got.to_bytes() == pipeline.candidates([user])[0].to_bytes()
        assert batcher.queued() == 0
    finally:
        batcher.close()


def test_batcher_drops_requests_whose_waiters_gave_up(pipeline, known_users):
    model = Recording(pipeline)
    model.gate.clear()
    batcher = CandidateBatcher(max_users=8, max_wait_s=0.0)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(batcher.compute, model, known_users[0], 30.0)
            time.sleep(0.1)  # the first batch runs, held at the gate
            with pytest.raises(concurrent.futures.TimeoutError):
                batcher.compute(model, known_users[1], timeout=0.05)  # gives up while queued
            model.gate.set()
            held.result()
        batcher.compute(model, known_users[2], 30.0)
    finally:
        batcher.close()
    assert known_users[1] not in [u for c in model.calls for u in c]


# -- over gRPC ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_batched_server_answers_equal_one_user_at_a_time_under_concurrency(start, pipeline, known_users,
                                                                           one_at_a_time, redis_server, redis_url):
    model = Recording(pipeline)
    server, stub = start(redis_url, model=model, cache={"near_ttl_s": 0}, batch_max_users=16, batch_max_wait_s=0.02)
    users = known_users
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(
            lambda u: stub.Recommend(pb.RecommendRequest(user_id=u, num_results=K), timeout=60), users))
    for user, response in zip(users, responses):
        assert response.source == pb.ONLINE
        assert got_items(response) == expected_items(pipeline, one_at_a_time[user])
    # The cached entries are the unbatched candidate sets, byte for byte.
    client = redis_server.client()
    stored = client.mget([cache_key(pipeline.model_version, u) for u in users])
    client.close()
    assert stored == [one_at_a_time[u].to_bytes() for u in users]
    assert len(model.calls) < len(users)  # some misses shared a batch
    assert server.metrics.value("recsys_batch_users_sum") == len(users)
    # Re-weighted requests are served from the same entries and still match.
    again = stub.Recommend(pb.RecommendRequest(user_id=users[0], num_results=K), timeout=10)
    assert again.source == pb.CACHE and got_items(again) == got_items(responses[0])


@pytest.mark.integration
def test_deadline_shorter_than_the_batch_wait_is_honoured(start, pipeline, known_users, one_at_a_time, redis_url):
    server, stub = start(redis_url, batch_max_users=64, batch_max_wait_s=60.0)
    stub.Recommend(pb.RecommendRequest(user_id="warm-up-the-channel", num_results=K), timeout=10)  # fallback
    user = known_users[1]
    try:
        response = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=K), timeout=2.0)
    except grpc.RpcError as e:  # too slow a machine to compute it in time: the deadline still holds
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:  # the batch closed early enough to meet the deadline rather than waiting 60 s
        assert response.source == pb.ONLINE
        assert got_items(response) == expected_items(pipeline, one_at_a_time[user])
    assert server.servicer.batcher.queued() == 0
    unknown = stub.Recommend(pb.RecommendRequest(user_id="unknown-user-gets-fallback", num_results=K), timeout=5)
    assert unknown.source == pb.FALLBACK
    assert server.metrics.value("recsys_requests_total", {"code": "INTERNAL"}) == 0


@pytest.mark.integration
def test_batching_off_computes_every_miss_alone_as_before(start, pipeline, known_users, one_at_a_time, redis_url):
    model = Recording(pipeline)
    server, stub = start(redis_url, model=model, cache={"near_ttl_s": 0}, batch_max_users=0)
    assert server.servicer.batcher is None
    users = known_users[:24]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda u: stub.Recommend(pb.RecommendRequest(user_id=u, num_results=K), timeout=60), users))
    assert sorted(model.calls) == sorted([u] for u in users)
    for user, response in zip(users, responses):
        assert response.source == pb.ONLINE
        assert got_items(response) == expected_items(pipeline, one_at_a_time[user])
    assert server.metrics.value("recsys_batch_users_count") == 0


def test_server_config_rejects_negative_batching_and_thread_settings():
    for bad in ({"batch_max_users": -1}, {"batch_max_wait_s": -0.1}, {"tf_intra_op_threads": -1},
                {"tf_inter_op_threads": -2}):
        with pytest.raises(ValueError):
            ServerConfig(**bad)
