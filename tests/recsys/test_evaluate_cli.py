"""`recsys evaluate` end to end: baselines on MovieLens-100k, reproducibility, run files, errors."""
import json
import subprocess
import sys

import pytest


def recsys(*args):
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def baseline_report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    out = recsys("evaluate", "--models", "random", "popularity", "ease", "--no-ease-tune", "--report-dir", str(out_dir))
    assert out.returncode == 0, out.stderr
    return out, out_dir


def test_evaluate_prints_baselines_and_writes_report(baseline_report):
    out, out_dir = baseline_report
    for name in ("random", "popularity", "ease", "ndcg@10", "map@10", "recall@100"):
        assert name in out.stdout
    report = json.loads((out_dir / "report.json").read_text())
    m = report["metrics"]
    assert m["ease"]["ndcg@10"] > m["popularity"]["ndcg@10"] > m["random"]["ndcg@10"]
    assert m["popularity"]["users"] == 943
    assert report["config"]["data"]["split"]["strategy"] == "user_temporal"
    assert report["config"]["evaluate"]["models"] == ["random", "popularity", "ease"]
    assert (out_dir / "metrics.png").stat().st_size > 1000
    assert "DCG@k = Σ" in (out_dir / "report.md").read_text()


def test_evaluate_is_reproducible(baseline_report, tmp_path):
    _, first = baseline_report
    out = recsys("evaluate", "--models", "random", "popularity", "ease", "--no-ease-tune", "--report-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    a = json.loads((first / "report.json").read_text())["metrics"]
    b = json.loads((tmp_path / "report.json").read_text())["metrics"]
    for model in a:
        for metric, value in a[model].items():
            if not metric.endswith("_seconds"):
                assert b[model][metric] == value, (model, metric)


def test_evaluate_scores_external_run_files_on_the_same_protocol(tmp_path, movielens):
    from evaluation import PopularityRecommender, build_eval_data, rank_users, write_run
    from features import SplitConfig, fit_feature_store, split_interactions
    split = split_interactions(movielens.interactions, SplitConfig())
    data = build_eval_data(movielens, split, fit_feature_store(movielens, split.train))
    model = PopularityRecommender()
    model.fit(data)
    ranked = rank_users(model, data.test_users, 100, 1024)
    run = tmp_path / "pop.trec"
    write_run(run, ranked, data.user_ids[data.test_users], data.item_ids)
    out = recsys("evaluate", "--models", "popularity", "--run-files", str(run), "--report-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    for metric in ("ndcg@10", "map@10", "recall@100", "mrr"):
        assert m["run:pop"][metric] == pytest.approx(m["popularity"][metric], abs=1e-12)


def test_evaluate_against_qrels_only(tmp_path):
    (tmp_path / "q.txt").write_text("u1 0 a 1\nu1 0 b 1\nu2 0 c 2\n")
    (tmp_path / "run.csv").write_text("user_id,item_id,rank\nu1,a,1\nu1,x,2\nu2,c,1\n")
    out = recsys("evaluate", "--qrels", str(tmp_path / "q.txt"), "--run-files", str(tmp_path / "run.csv"),
                 "--ks", "1", "2", "--report-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["run"]
    assert m["precision@1"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.parametrize("argv,message", [
    (["--models", "nope"], "unknown model(s) ['nope']"),
    (["--ks", "0"], "--ks must be positive"),
    (["--qrels", "/no/such/qrels"], "--qrels needs --run-files"),
    (["--models", "--run-files", "/no/such.trec"], "/no/such.trec"),
])
def test_evaluate_user_mistakes_exit_2_with_a_message(argv, message, tmp_path):
    out = recsys("evaluate", *argv, "--report-dir", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
