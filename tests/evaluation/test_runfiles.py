"""Run and qrels files: round trips, alignment, and clear errors for malformed input."""
import logging

import numpy as np
import pytest
import pytrec_eval

from core.errors import DataError
from evaluation import (
    PopularityRecommender,
    build_eval_data,
    evaluate_rankings,
    evaluate_run,
    evaluate_run_files,
    rank_users,
    read_qrels,
    read_run,
    reciprocal_rank,
    run_to_ranked,
    write_qrels,
    write_run,
)
from features import SplitConfig, fit_feature_store, split_interactions


@pytest.fixture(scope="module")
def data(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    return build_eval_data(small_synthetic, split, fit_feature_store(small_synthetic, split.train))


@pytest.fixture(scope="module")
def popular(data):
    model = PopularityRecommender()
    model.fit(data)
    return rank_users(model, data.test_users, 20)


@pytest.mark.parametrize("name", ["run.trec", "run.csv"])
def test_popularity_run_round_trips_through_trec_and_csv(tmp_path, data, popular, name):
    path = write_run(tmp_path / name, popular, data.user_ids[data.test_users], data.item_ids)
    first = path.read_text().splitlines()[0]
    assert first == ("user_id,item_id,rank,score" if name.endswith(".csv") else
                     f"{data.user_ids[data.test_users[0]]} Q0 {data.item_ids[popular[0, 0]]} 1 20 recsys")
    run = read_run(path)
    aligned = run_to_ranked(run, data)
    np.testing.assert_array_equal(aligned.ranked, popular)
    assert (aligned.unknown_items, aligned.ignored_users, aligned.missing_users, aligned.train_items) == (0, 0, 0, 0)
    expected = evaluate_rankings(popular, data, ks=(5, 20))
    assert evaluate_run(run, data, ks=(5, 20)) == expected


def test_run_against_qrels_alone_matches_the_protocol_except_coverage(tmp_path, data, popular):
    run_path = write_run(tmp_path / "run.txt", popular, data.user_ids[data.test_users], data.item_ids)
    qrels_path = write_qrels(tmp_path / "qrels.txt", data.test_gain, data.user_ids, data.item_ids)
    got = evaluate_run_files(run_path, qrels_path, ks=(5, 20))
    expected = evaluate_rankings(popular, data, ks=(5, 20))
    for key, value in expected.items():
        if not key.startswith("coverage"):  # the qrels-only catalogue is qrels ∪ run items
            assert got[key] == pytest.approx(value, abs=1e-12), key
    # The same files through trec_eval itself.
    qrels = {u: {i: int(g) for i, g in zip(df["item_id"], df["gain"])}
             for u, df in read_qrels(qrels_path).groupby("user_id")}
    run = {u: dict(zip(df["item_id"], df["score"])) for u, df in read_run(run_path).groupby("user_id")}
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.20"}).evaluate(run)
    assert got["ndcg_graded@20"] == pytest.approx(np.mean([v["ndcg_cut_20"] for v in trec.values()]), abs=1e-6)


def test_qrels_csv_defaults_gain_to_one(tmp_path):
    (tmp_path / "q.csv").write_text("user_id,item_id\nu1,a\nu1,b\nu2,c\n")
    (tmp_path / "r.csv").write_text("user_id,item_id,rank\nu1,b,1\nu1,x,2\nu1,a,3\nu2,y,1\nu3,a,1\n")
    got = evaluate_run_files(tmp_path / "r.csv", tmp_path / "q.csv", ks=(3,))
    assert got["users"] == 2  # u3 has no judgements and is ignored
    assert got["recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    assert got["map@3"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 0.0) / 2)
    assert got["coverage@3"] == pytest.approx(len({"b", "x", "a", "y"}) / len({"a", "b", "c", "x", "y"}))


def test_unknown_items_keep_their_slot_and_missing_users_count_as_misses(tmp_path, data, caplog):
    u0, u1 = data.user_ids[data.test_users[:2]]
    relevant = data.item_ids[data.test_binary[data.test_users[0]].indices[0]]
    (tmp_path / "r.trec").write_text(f"{u0} Q0 not-an-item 1 9 t\n{u0} Q0 {relevant} 2 8 t\nghost Q0 x 1 1 t\n")
    with caplog.at_level(logging.WARNING, logger="evaluation.runfiles"):
        aligned = run_to_ranked(read_run(tmp_path / "r.trec"), data, where="r.trec")
    assert aligned.ranked.shape == (len(data.test_users), 2)
    assert aligned.ranked[0, 0] == -1 and data.item_ids[aligned.ranked[0, 1]] == relevant
    assert (aligned.ranked[1:] == -1).all()
    assert (aligned.unknown_items, aligned.ignored_users, aligned.missing_users) == (1, 1, len(data.test_users) - 1)
    assert "outside the catalogue" in caplog.text and "no ranking in the run" in caplog.text
    assert reciprocal_rank(aligned.ranked[:1], data.test_binary[data.test_users[:1]])[0] == 0.5


def test_ranks_decide_the_order_and_disagreeing_scores_warn(tmp_path, caplog):
    (tmp_path / "r.trec").write_text("u Q0 b 7 1.0 t\nu Q0 a 3 0.5 t\n")
    with caplog.at_level(logging.WARNING, logger="evaluation.runfiles"):
        run = read_run(tmp_path / "r.trec")
    assert list(run["item_id"]) == ["a", "b"]
    assert "trec_eval would order by score" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("u Q0 a 1 0.5\n", r"r\.txt:1: expected 6 whitespace-separated fields"),
    ("u Q0 a 1 0.5 t\nu Q0 b two 0.4 t\n", r"r\.txt:2: rank \(field 4\) must be an integer, got 'two'"),
    ("u Q0 a 1 0.5 t\nu Q0 b 2 nan t\n", r"r\.txt:2: score \(field 5\) must be finite"),
    ("u Q0 a 1 0.5 t\nu Q0 a 2 0.4 t\n", r"r\.txt:2: lists item a twice for user u"),
    ("u Q0 a 1 0.5 t\nu Q0 b 1 0.4 t\n", r"r\.txt:2: gives two items rank 1 for user u"),
    ("user_id,item,rank\nu,a,1\n", r"r\.txt:1: the CSV run header must name user_id, item_id, rank"),
    ("user_id,item_id,rank\nu,a,1\nu,b\n", r"r\.txt:3: expected 3 comma-separated fields"),
    ("user_id,item_id,rank\nu,a,1.5\n", r"r\.txt:2: rank must be an integer"),
    ("user_id,item_id,rank\n", r"r\.txt: the run file has a header but no rows"),
    ("\n  \n", r"r\.txt: the run file is empty"),
])
def test_malformed_runs_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "r.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_run(tmp_path / "r.txt")


@pytest.mark.parametrize("text, message", [
    ("u 0 a\n", r"q\.txt:1: expected 4 whitespace-separated fields `user 0 item gain`"),
    ("u 0 a 1\nu 0 a 2\n", r"q\.txt:2: judges item a twice for user u"),
    ("u 0 a high\n", r"q\.txt:1: gain \(field 4\) must be a number"),
    ("user,item_id\nu,a\n", r"q\.txt:1: the CSV qrels header must name user_id, item_id \[, gain\]"),
])
def test_malformed_qrels_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "q.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_qrels(tmp_path / "q.txt")


def test_missing_file_and_qrels_without_relevant_items(tmp_path):
    with pytest.raises(DataError, match="cannot read .*nope.txt"):
        read_run(tmp_path / "nope.txt")
    (tmp_path / "q.txt").write_text("u 0 a 0\n")
    (tmp_path / "r.txt").write_text("u Q0 a 1 1 t\n")
    with pytest.raises(DataError, match="no relevant judgement"):
        evaluate_run_files(tmp_path / "r.txt", tmp_path / "q.txt")
