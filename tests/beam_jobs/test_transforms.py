"""The batch job's own transforms and DoFns, one at a time on Beam's local runner (TestPipeline + assert_that):
user ids in, fixed batches, Parquet rows, progress counters, and Redis writes against a real redis-server."""
from __future__ import annotations

import numpy as np
import pytest
from apache_beam import Create, FlatMap, Map, ParDo
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # "Test*" would be collected
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.handlers import UserBatch, assign_batches
from beam_jobs.io import (
    COUNTER_NAMESPACE,
    SCORES_SCHEMA,
    CountScored,
    ReadUsers,
    RedisTarget,
    ScoresTable,
    TrainUsers,
    ValidateUsers,
    WriteCandidatesToRedis,
)
from beam_jobs.pipeline import DistinctUsers, FixedBatches
from core import layout
from features import SplitConfig, fit_feature_store, split_interactions
from pipeline import CandidateSet, precomputed_key
from ranking import BlendWeights
from tests.conftest import free_port

pytestmark = pytest.mark.integration  # every test here runs a Beam pipeline

VERSION = "v-test"


def _counters(result) -> dict[str, int]:
    """The job's counters of a finished TestPipeline run, summed over steps."""
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def _run(build) -> dict[str, int]:
    """Builds a TestPipeline with `build(p)`, runs it to completion, returns its counters."""
    p = BeamTestPipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    return _counters(result)


def _cands(n: int, seed: int) -> CandidateSet:
    rng = np.random.default_rng(seed)
    return CandidateSet(item_ids=np.asarray([f"i{seed}-{j}" for j in range(n)], dtype=object),
                        retrieval_scores=rng.random(n).astype(np.float32),
                        engagement=rng.random(n).astype(np.float32), quality=rng.random(n).astype(np.float32),
                        model_version=VERSION)


@pytest.fixture(scope="module")
def version_dir(small_synthetic, tmp_path_factory):
    """A version directory holding only the feature store (what the user-reading DoFns load)."""
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    d = tmp_path_factory.mktemp("version") / VERSION
    fit_feature_store(small_synthetic, split.train).save(layout.features_dir(d))
    return d


@pytest.fixture(scope="module")
def known(version_dir) -> list[str]:
    from features import FeatureStore

    return list(FeatureStore.load(layout.features_dir(version_dir)).vocabularies["user_id"].tokens)


# -- user ids -------------------------------------------------------------------------------
def test_distinct_users_keeps_each_id_once_and_counts_the_repeats():
    def build(p):
        out = p | Create(["a", "b", "a", "c", "a", "b"]) | DistinctUsers()
        assert_that(out, equal_to(["a", "b", "c"]))

    assert _run(build)["users_duplicate"] == 3


@pytest.mark.parametrize("num_users, batch_size", [(1, 4), (10, 4), (257, 64), (50, 1000)])
def test_fixed_batches_are_the_batches_assign_batches_names(num_users, batch_size):
    users = [f"user-{i}" for i in range(num_users)]

    def build(p):
        batches = p | Create(users) | FixedBatches(batch_size)
        assert_that(batches | Map(lambda b: b.user_ids), equal_to(assign_batches(users, batch_size)))
        assert_that(batches | Map(type), equal_to([UserBatch] * len(assign_batches(users, batch_size))),
                    label="AllUserBatches")

    _run(build)


def test_fixed_batches_rejects_a_non_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        FixedBatches(0)


def test_read_users_reads_text_and_parquet_files(tmp_path):
    import pandas as pd

    text = tmp_path / "users.txt"
    text.write_text("user_id\nu1\n\n  u2  \nu1\n")
    parquet = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": ["u3", None, "u4"]}).to_parquet(parquet)

    def build(p):
        # text lines stay bytes (decoded leniently by ValidateUsers); Parquet yields str, None as ""
        assert_that(p | "Text" >> ReadUsers(str(text)), equal_to([b"user_id", b"u1", b"", b"  u2  ", b"u1"]),
                    label="TextLines")
        assert_that(p | "Parquet" >> ReadUsers(str(parquet)), equal_to(["u3", "", "u4"]), label="ParquetIds")

    _run(build)


def test_validate_users_keeps_known_ids_and_counts_invalid_and_unknown(version_dir, known):
    lines = [f"  {known[0]} ".encode(), known[1], "user_id", "", "x" * 257, "bad\tid", "nobody", b"\xff\xfe",
             known[0]]

    def build(p):
        out = p | Create(lines) | ParDo(ValidateUsers(str(version_dir)))
        assert_that(out, equal_to([known[0], known[1], known[0]]))

    counters = _run(build)
    assert counters["users_read"] == len(lines)
    assert counters["users_invalid"] == 4  # header, blank, too long, control character
    assert counters["users_unknown"] == 2  # not a train user; undecodable bytes


def test_train_users_shards_cover_the_vocabulary_once(version_dir, known):
    def build(p):
        out = p | Create(list(range(5))) | ParDo(TrainUsers(str(version_dir), 5))
        assert_that(out, equal_to(known))

    _run(build)


# -- Parquet rows ---------------------------------------------------------------------------
def _expected_rows(scored, weights: BlendWeights, top_k: int) -> list[tuple]:
    """The rows by hand: blend each candidate set, best first (ties by position), ranks from 1."""
    rows = []
    for user, c in scored:
        assert (weights.mode, weights.transform) == ("additive", "identity")
        blended = weights.engagement * c.engagement.astype(np.float64) + weights.quality * c.quality.astype(np.float64)
        order = np.argsort(-blended, kind="stable")[:top_k or len(c)]
        rows += [(user, rank, c.item_ids[j], float(blended[j]), float(c.engagement[j]),
                  float(c.quality[j]), float(c.retrieval_scores[j]), VERSION)
                 for rank, j in enumerate(order, 1)]
    return rows


@pytest.mark.parametrize("top_k", [0, 3])
def test_scores_table_writes_the_blended_top_k_rows_of_each_batch(top_k):
    weights = BlendWeights(engagement=0.7, quality=0.3)
    batches = [[("u1", _cands(5, 1)), ("u2", _cands(4, 2))], [("u3", _cands(6, 3))], []]
    expected = _expected_rows([s for b in batches for s in b], weights, top_k)

    def build(p):
        tables = p | Create(batches) | ParDo(ScoresTable(weights, top_k))
        assert_that(tables | Map(lambda t: t.schema.equals(SCORES_SCHEMA)), equal_to([True, True]), label="Schema")
        rows = tables | FlatMap(lambda t: [tuple(r.values()) for r in t.to_pylist()])
        assert_that(rows, equal_to(expected))

    assert _run(build)["parquet_rows"] == len(expected) == (15 if top_k == 0 else 9)


# -- progress -------------------------------------------------------------------------------
def test_count_scored_passes_batches_through_and_counts_users_and_batches():
    batches = [[("u1", None), ("u2", None)], [("u3", None)], [("u4", None), ("u5", None), ("u6", None)]]
    ticks = iter(range(0, 1000, 5))

    def build(p):
        # a fake clock (5 s per call) exercises the progress log line without waiting
        out = p | Create(batches) | ParDo(CountScored(every_s=4.0, clock=lambda: next(ticks)))
        assert_that(out | Map(lambda b: [u for u, _ in b]), equal_to([["u1", "u2"], ["u3"], ["u4", "u5", "u6"]]))

    counters = _run(build)
    assert (counters["users_scored"], counters["batches"]) == (6, 3)


# -- Redis ----------------------------------------------------------------------------------
def test_write_candidates_to_redis_writes_the_precomputed_entries(redis_server, redis_url):
    batches = [[("u1", _cands(3, 1)), ("u2", _cands(2, 2))], [("u3", _cands(4, 3))]]

    def build(p):
        written = (p | Create(batches)
                   | ParDo(WriteCandidatesToRedis(RedisTarget(redis_url, ttl_s=60), VERSION)).with_outputs(
                       WriteCandidatesToRedis.FAILED, main="written"))
        assert_that(written[WriteCandidatesToRedis.FAILED], equal_to([]), label="NoneFailed")
        assert_that(written.written, equal_to([]), label="NothingElse")

    counters = _run(build)
    assert counters["redis_writes"] == 3 and counters.get("redis_failed", 0) == 0
    client = redis_server.client()
    try:
        want = {precomputed_key(VERSION, u).encode(): c.to_bytes() for b in batches for u, c in b}
        assert {k: client.get(k) for k in client.keys("*")} == want
        assert all(0 < client.ttl(k) <= 60 for k in want)
        assert CandidateSet.from_bytes(client.get(precomputed_key(VERSION, "u3"))).item_ids.tolist() == \
            batches[1][0][1].item_ids.tolist()
    finally:
        client.close()


def test_write_candidates_to_redis_emits_the_users_of_a_lost_write():
    """Nothing listens on the port: every attempt fails, the retries are counted, the users come out as failed."""
    target = RedisTarget(f"redis://127.0.0.1:{free_port()}/0", retries=2, backoff_s=0.01, timeout_s=0.5)
    batches = [[("u1", _cands(2, 1)), ("u2", _cands(2, 2))], [("u3", _cands(2, 3))]]

    def build(p):
        written = (p | Create(batches)
                   | ParDo(WriteCandidatesToRedis(target, VERSION)).with_outputs(WriteCandidatesToRedis.FAILED))
        assert_that(written[WriteCandidatesToRedis.FAILED], equal_to(["u1", "u2", "u3"]))

    counters = _run(build)
    assert counters["redis_failed"] == 3 and counters.get("redis_writes", 0) == 0
    assert counters["redis_retries"] == 2 * len(batches)
