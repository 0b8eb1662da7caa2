"""retrieve → rank → blend → top-k on the session's tiny version (tests/conftest.py `tiny_version`, trained by
`recsys train` with all stages), and its evaluation."""
import json

import numpy as np
import pytest

from core.errors import ArtifactMismatchError, InvalidRequestError
from evaluation import build_eval_data
from evaluation.pipeline import PipelineEvalConfig, PipelineRecommender, parse_sweep, sweep_blend
from features import SplitConfig, fit_feature_store, split_interactions
from pipeline import PipelineConfig
from ranking import BlendWeights, rank_by_blend
from tests.conftest import TINY_SYNTHETIC

DATA = ["--source", "synthetic", *TINY_SYNTHETIC]
N = 50  # the tiny version's --pipeline-num-candidates


def recsys(*args) -> int:
    from recsys.cli import main
    return main(["--log-level", "WARNING", *args])


@pytest.fixture(scope="module")
def version(tiny_version):
    return tiny_version.parent, tiny_version


@pytest.fixture(scope="module")
def eval_data(tiny_eval_data):
    return tiny_eval_data


def test_train_writes_a_complete_version_with_the_ranker(version):
    _, d = version
    for part in ("features", "retrieval", "ranking/model/saved_model.pb", "ranking/ranker.json",
                 "ranking/pipeline.json", "manifest.json"):
        assert (d / part).exists(), part
    manifest = json.loads((d / "manifest.json").read_text())
    rk = manifest["ranking"]
    assert rk["negatives"]["resolved_source"] == "sampled"  # as asked; impressions: tests/ranking/test_ranker.py
    # Better than chance after the tiny version's one epoch; what the heads learn: tests/ranking/test_ranker.py.
    assert rk["test_diagnostics"]["engagement_auc"] > 0.5
    assert any(p.startswith("ranking/") for p in manifest["checksums"])
    assert json.loads((d / "ranking/pipeline.json").read_text())["num_candidates"] == N


def test_candidates_exclude_seen_items_and_carry_the_rankers_scores(pipeline):
    users = sorted(pipeline.features.seen)[:5]
    extra = [{pipeline.index.item_ids[0]}] * len(users)
    cands = pipeline.candidates(users, extra)
    assert len(cands) == len(users)
    for u, c, seen in zip(users, cands, pipeline.features.seen_items(users)):
        ids = list(c.item_ids)
        assert len(ids) == len(set(ids)) and 0 < len(ids) <= N
        assert not set(ids) & seen and pipeline.index.item_ids[0] not in ids
        assert np.all(np.diff(c.retrieval_scores) <= 1e-6)  # retrieval order
        assert c.model_version == "tiny"
        # The heads are the exported ranker's scores of exactly these pairs.
        e, q = pipeline.ranker.score(pipeline.ranker.user_features(pipeline.features, [u] * len(ids)),
                                     pipeline.features.item_features(ids))
        np.testing.assert_allclose(c.engagement, e, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(c.quality, q, rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidRequestError, match="exclude"):
        pipeline.candidates(users, [set()])


def test_blend_top_k_reweights_cached_candidates_without_the_ranker(pipeline, monkeypatch):
    cands = pipeline.candidates([sorted(pipeline.features.seen)[0]])[0]
    monkeypatch.setattr(pipeline.ranker, "score", None)  # any ranker call would now fail
    for w in (BlendWeights(1, 0), BlendWeights(0, 1), BlendWeights(1, 2, mode="multiplicative")):
        ids, scores, order = pipeline.blend_top_k(cands, w, 10)
        expected, all_scores = rank_by_blend(cands.engagement, cands.quality, w)
        assert list(order) == list(expected[:10])
        assert list(ids) == list(cands.item_ids[expected[:10]])
        np.testing.assert_array_equal(scores, all_scores[expected[:10]])
    top_e = pipeline.blend_top_k(cands, BlendWeights(1, 0), 10)[0]
    top_q = pipeline.blend_top_k(cands, BlendWeights(0, 1), 10)[0]
    assert list(top_e) != list(top_q)
    dropped = pipeline.blend_top_k(cands, BlendWeights(1, 0), 10, exclude={top_e[0]})[0]
    assert top_e[0] not in dropped and list(dropped[:9]) == list(top_e[1:10])
    with pytest.raises(InvalidRequestError, match="k must be"):
        pipeline.blend_top_k(cands, BlendWeights(), -1)


def test_unknown_users_get_candidates_and_popular_items(pipeline):
    assert not pipeline.is_known_user("nobody")
    (cands,) = pipeline.candidates(["nobody"])
    assert len(cands.item_ids) == N and np.isfinite(cands.engagement).all()
    # The fallback blends the catalogue's priors (popularity as a share of train users, a rating prior).
    from ranking import BlendWeights

    ids, scores = pipeline.popular_items(5)  # the version's default blend (chosen on validation; may be on logits)
    assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 0)
    ids2, _ = pipeline.popular_items(5, exclude={ids[0]})
    assert list(ids2[:4]) == list(ids[1:5])
    _, mixed = pipeline.popular_items(5, weights=BlendWeights(0.5, 0.5, "additive", "identity"))
    assert np.all(np.diff(mixed) <= 0) and 0 < mixed[-1] <= mixed[0] <= 1  # both priors on the [0, 1] scale

    by_popularity, shares = pipeline.popular_items(5, weights=BlendWeights(1.0, 0.0))
    users = len(pipeline.features.vocabularies["user_id"].tokens)
    top_users = sum(by_popularity[0] in items for items in pipeline.features.seen.values())
    assert shares[0] == pytest.approx(top_users / users, rel=1e-6) and np.all(np.diff(shares) <= 0)


def test_pipeline_config_is_validated():
    with pytest.raises(ValueError, match="--num-candidates"):
        PipelineConfig(num_candidates=0)
    with pytest.raises(InvalidRequestError, match="both 0"):
        PipelineConfig(engagement_weight=0, quality_weight=0)


def test_pipeline_recommender_matches_the_serving_pipeline(pipeline, eval_data):
    rec = PipelineRecommender(PipelineEvalConfig(diagnostics=False), pipeline)
    rec.fit(eval_data)
    rows = eval_data.test_users[:20]
    ranked = rec.recommend(rows, 10)
    served = pipeline.recommend(list(eval_data.user_ids[rows]), 10)
    for got, (ids, _) in zip(ranked, served):
        assert list(eval_data.item_ids[got[got >= 0]]) == list(ids)


def test_quality_heavy_blend_trades_engagement_for_quality(pipeline, eval_data):
    rec = PipelineRecommender(PipelineEvalConfig(diagnostics=False), pipeline)
    rec.fit(eval_data)
    sweep = sweep_blend(rec, eval_data, [0.0, 0.5, 1.0], mode="additive").set_index("quality_share")
    # Clickbait (engaging, poorly rated) leaves the top 10 as α grows; niche (rarely engaged, well rated) enters.
    assert sweep.loc[1.0, "mean_pred_quality@10"] > sweep.loc[0.0, "mean_pred_quality@10"]
    assert sweep.loc[0.0, "mean_pred_engagement@10"] > sweep.loc[1.0, "mean_pred_engagement@10"]
    assert sweep.loc[1.0, "mean_hit_rating@10"] > sweep.loc[0.0, "mean_hit_rating@10"]


def test_evaluating_a_version_on_another_split_is_refused(pipeline, eval_data):
    other = split_interactions(eval_data.dataset.interactions, SplitConfig(test_fraction=0.3))
    data = build_eval_data(eval_data.dataset, other, fit_feature_store(eval_data.dataset, other.train))
    with pytest.raises(ArtifactMismatchError, match="another data source or split"):
        PipelineRecommender(PipelineEvalConfig(diagnostics=False), pipeline).fit(data)


def test_evaluate_cli_tabulates_the_pipeline_and_sweeps_the_blend(version, tmp_path, capsys):
    root, _ = version
    out = tmp_path / "report"
    assert recsys("evaluate", *DATA, "--artifacts", str(root), "--version", "tiny", "--models", "popularity",
                  "two_tower", "pipeline", "--report-dir", str(out), "--sweep-blend", "0,0.5,1") == 0
    printed = capsys.readouterr().out
    assert "pipeline heads on test: engagement_auc" in printed and "blend sweep" in printed
    report = json.loads((out / "report.json").read_text())
    assert {"popularity", "two_tower", "pipeline"} <= set(report["metrics"])
    assert "ndcg_graded@10" in report["metrics"]["pipeline"]
    assert report["config"]["head_diagnostics"]["pipeline"]["engagement_auc"] > 0.5
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["quality_share"] for r in sweep["rows"]] == [0.0, 0.5, 1.0]
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "sweep.csv").exists()


def test_sweep_shares_are_validated():
    assert parse_sweep("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_sweep("0.2, 0.8") == [0.2, 0.8]
    for bad in ("", "a,b", "0:2:3", "-0.1"):
        with pytest.raises(InvalidRequestError, match="--sweep-blend"):
            parse_sweep(bad)
