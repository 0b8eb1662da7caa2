"""The batch-scoring job on Beam's local runner against a real redis-server, the real gRPC server and the
online pipeline: coverage, agreement with online answers, PRECOMPUTED serving, idempotence, bad ids, lost writes,
and offline evaluation of its Parquet."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import redis

from beam_jobs import read_scores
from beam_jobs.handlers import assign_batches
from evaluation import run_to_ranked
from pipeline import CandidateSet, precomputed_key
from tests.beam_jobs.conftest import BATCH_SIZE, batch_score, in_memory, job_counters, redis_snapshot
from tests.conftest import free_port

# Beam's local runner, redis-server and the gRPC server (the flag-checking tests at the end start none).
pytestmark = pytest.mark.integration

K = 10


def test_every_train_user_gets_a_precomputed_entry_and_parquet_rows(scored, pipeline, train_users):
    server, output = scored
    entries = redis_snapshot(server)
    assert set(entries) == {precomputed_key(pipeline.model_version, u).encode() for u in train_users}
    counters = job_counters(output)
    n = len(train_users)
    assert counters["users_scored"] == counters["redis_writes"] == counters["users_read"] == n
    assert counters["redis_failed"] == counters["users_unknown"] == counters["users_invalid"] == 0
    assert counters["batches"] == len(assign_batches(train_users, BATCH_SIZE)) > 1
    df = read_scores(output)
    assert sorted(df["user_id"].unique()) == sorted(train_users)
    assert set(df["model_version"]) == {pipeline.model_version}
    assert counters["parquet_rows"] == len(df)
    first = df.groupby("user_id")["rank"].agg(["min", "max", "count"])
    assert (first["min"] == 1).all() and (first["max"] == first["count"]).all()
    assert [f.name for f in (output.glob("scores-*.parquet"))] == ["scores-00000-of-00001.parquet"]


def test_entries_are_bit_identical_to_the_online_pipeline_on_the_same_batches(scored, pipeline, train_users):
    server, _ = scored
    client = server.client()
    for batch in assign_batches(train_users, BATCH_SIZE):
        expected = pipeline.candidates(list(batch))
        got = client.mget([precomputed_key(pipeline.model_version, u) for u in batch])
        assert got == [c.to_bytes() for c in expected]
    client.close()


def test_precomputed_top_k_equals_the_online_top_k(scored, pipeline, train_users):
    server, output = scored
    df = read_scores(output)
    client = server.client()
    weights = pipeline.default_weights
    for user in train_users[::15]:
        online = pipeline.candidates([user])[0]  # what the server computes for one request
        want_ids, want_scores, _ = pipeline.blend_top_k(online, weights, K)
        entry = CandidateSet.from_bytes(client.get(precomputed_key(pipeline.model_version, user)))
        got_ids, got_scores, _ = pipeline.blend_top_k(entry, weights, K)
        assert list(got_ids) == list(want_ids) and len(want_ids) == K
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
        rows = df.loc[(df["user_id"] == user) & (df["rank"] <= K)]
        assert list(rows["item_id"]) == list(want_ids)
        np.testing.assert_allclose(rows["score"], want_scores, rtol=1e-6)
    client.close()


def test_a_served_request_for_a_precomputed_user_reports_precomputed(scored, tiny_version, pipeline, train_users):
    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving import CacheConfig, RecommendServer, ServerConfig

    redis_srv, output = scored
    df = read_scores(output)
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0),
                             CacheConfig(redis_url=redis_srv.url)).start()
    try:
        server.load(tiny_version)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for user in train_users[:3]:
                response = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=K), timeout=30)
                assert response.source == pb.PRECOMPUTED
                assert response.model_version == pipeline.model_version
                top = df.loc[(df["user_id"] == user) & (df["rank"] <= K)]
                assert [i.item_id for i in response.items] == list(top["item_id"])
                np.testing.assert_allclose([i.engagement for i in response.items], top["engagement"], rtol=1e-6)
                np.testing.assert_allclose([i.quality for i in response.items], top["quality"], rtol=1e-6)
        assert server.metrics.value("recsys_online_computations_total") == 0
    finally:
        server.stop(grace=0)


def test_a_rerun_on_two_worker_processes_leaves_identical_state(scored, tiny_version):
    server, output = scored
    before = redis_snapshot(server)
    files_before = {p.name: p for p in output.iterdir()}
    table_before = read_scores(output)
    job_before = (output / "job.json").read_text()
    code = batch_score(tiny_version, "--redis-url", server.url, "--output", str(output),
                       "--direct-running-mode", "multi_processing", "--direct-num-workers", "2")
    assert code == 0
    assert redis_snapshot(server) == before  # same keys, byte-identical values
    assert {p.name for p in output.iterdir()} == set(files_before)  # same files, overwritten in place
    assert read_scores(output).equals(table_before)
    assert (output / "job.json").read_text() == job_before


def test_unknown_and_invalid_ids_are_counted_not_fatal(tiny_version, train_users, redis_server, redis_url, tmp_path):
    known = train_users[:5]
    lines = ["user_id", *known, "", "  ", "no-such-user", "another-unknown", known[0], "x" * 300]
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    output = tmp_path / "out"
    code = batch_score(tiny_version, "--users", str(ids), "--redis-url", redis_url, "--output", str(output),
                       *in_memory())
    assert code == 0
    c = job_counters(output)
    assert c["users_scored"] == c["redis_writes"] == 5
    assert c["users_unknown"] == 3  # two unknown ids and one undecodable line
    assert c["users_invalid"] == 4  # the header, two blank lines, an id longer than any request may carry
    assert c["users_duplicate"] == 1
    assert c["users_read"] == len(lines) + 1
    client = redis_server.client()
    assert sorted(client.keys("*")) == sorted(precomputed_key(tiny_version.name, u).encode() for u in known)
    client.close()
    assert sorted(read_scores(output)["user_id"].unique()) == sorted(known)


def test_lost_redis_writes_are_retried_counted_reported_and_fail_the_job(tiny_version, train_users, tmp_path,
                                                                          capsys):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: every write is refused
    output = tmp_path / "out"
    code = batch_score(tiny_version, "--redis-url", dead, "--output", str(output), "--redis-retries", "2",
                       "--redis-backoff-s", "0.01", "--redis-timeout-s", "0.5", *in_memory())
    assert code == 1
    out = capsys.readouterr().out
    assert f"{len(train_users)} LOST" in out and "rerun" in out
    c = job_counters(output)
    batches = len(assign_batches(train_users, BATCH_SIZE))
    assert c["redis_failed"] == c["users_scored"] == len(train_users) and c["redis_writes"] == 0
    assert c["redis_retries"] == 2 * batches
    assert (output / "failed_redis_users.txt").read_text().split() == sorted(train_users)
    assert len(read_scores(output)["user_id"].unique()) == len(train_users)  # the Parquet is still complete


# -- the Redis writer on its own (failures a healthy server cannot produce on cue) -------------------------
def _scored_batch(pipeline, users):
    return list(zip(users, pipeline.candidates(users)))


def test_a_transient_connection_error_is_retried_and_the_batch_written(pipeline, train_users, redis_server,
                                                                       redis_url, monkeypatch):
    from beam_jobs.io import RedisTarget, WriteCandidatesToRedis

    fn = WriteCandidatesToRedis(RedisTarget(redis_url, retries=3, backoff_s=0.001), pipeline.model_version)
    fn.setup()
    real_pipeline = fn._client.pipeline
    calls = []

    def flaky(*args, **kwargs):  # the first round trip dies mid-way, as a dropped connection would
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset by peer (injected)")
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(fn._client, "pipeline", flaky)
    batch = _scored_batch(pipeline, train_users[:4])
    assert list(fn.process(batch)) == []  # nothing reported lost
    fn.teardown()
    assert len(calls) == 2
    client = redis_server.client()
    assert client.mget([precomputed_key(pipeline.model_version, u) for u, _ in batch]) == \
        [c.to_bytes() for _, c in batch]
    client.close()


def test_a_write_redis_refuses_is_reported_lost_not_dropped(pipeline, train_users, own_redis):
    from apache_beam.pvalue import TaggedOutput

    from beam_jobs.io import RedisTarget, WriteCandidatesToRedis

    client = own_redis.client()
    client.config_set("maxmemory", "1")  # a full Redis answers OOM to every write
    client.config_set("maxmemory-policy", "noeviction")
    fn = WriteCandidatesToRedis(RedisTarget(own_redis.url, retries=2, backoff_s=0.001), pipeline.model_version)
    fn.setup()
    users = train_users[:3]
    out = list(fn.process(_scored_batch(pipeline, users)))
    fn.teardown()
    assert all(isinstance(o, TaggedOutput) and o.tag == WriteCandidatesToRedis.FAILED for o in out)
    assert [o.value for o in out] == users
    assert client.dbsize() == 0
    client.close()


# -- offline evaluation of the Parquet ----------------------------------------------------------------------
def test_the_parquet_evaluates_to_the_offline_pipeline_metrics(scored, pipeline, eval_data):
    from evaluation import evaluate_rankings, evaluate_run
    from evaluation.pipeline import PipelineRecommender

    _, output = scored
    rec = PipelineRecommender(pipeline=pipeline)
    rec.fit(eval_data)
    offline = rec.recommend(eval_data.test_users, 100)
    batch = run_to_ranked(read_scores(output), eval_data, k=100).ranked
    np.testing.assert_array_equal(batch, offline)
    want = evaluate_rankings(offline, eval_data, (10, 100))
    got = evaluate_run(read_scores(output), eval_data, (10, 100))
    assert got == pytest.approx(want, abs=1e-12)
    assert want["ndcg@10"] > 0


def test_recsys_evaluate_scores_the_batch_output(scored, eval_data, tmp_path, capsys):
    from evaluation import evaluate_run
    from recsys.cli import main as recsys_main
    from tests.conftest import TINY_SYNTHETIC

    _, output = scored
    report = tmp_path / "report"
    code = recsys_main(["--log-level", "WARNING", "evaluate", "--source", "synthetic", *TINY_SYNTHETIC,
                        "--models", "popularity", "--batch-output", str(output), "--report-dir", str(report)])
    assert code == 0
    metrics = json.loads((report / "report.json").read_text())["metrics"]
    assert set(metrics) == {"popularity", "batch:tiny"}
    want = evaluate_run(read_scores(output), eval_data, (10, 100))
    for name in ("ndcg@10", "map@10", "ndcg@100", "map@100"):
        assert metrics["batch:tiny"][name] == pytest.approx(want[name], abs=1e-12)
    assert "batch:tiny" in capsys.readouterr().out


# -- user mistakes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    ((), "nothing to write"),
    (("--output", "o", "--batch-size", "0"), "--batch-size must be >= 1"),
    (("--output", "o", "--redis-url", "localhost:6379"), "--redis-url 'localhost:6379' must start with redis://"),
    (("--output", "o", "--users", "/no/such/ids.txt"), "--users /no/such/ids.txt: no such file"),
    (("--output", "o", "--version", "nope"), "'nope' not found"),
])
def test_bad_flags_exit_2_with_a_message_naming_them(tiny_version, flags, message, tmp_path, monkeypatch, capsys):
    from recsys.cli import main as recsys_main

    monkeypatch.chdir(tmp_path)
    version = () if "--version" in flags else ("--version", tiny_version.name)
    code = recsys_main(["batch-score", "--artifacts", str(tiny_version.parent), *version, *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_read_scores_names_the_missing_output(tmp_path):
    from core.errors import DataError

    with pytest.raises(DataError, match="run `recsys batch-score --output"):
        read_scores(tmp_path / "nothing-here")
