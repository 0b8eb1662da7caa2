"""The runner (all baselines on MovieLens, twice), the model registry and the report."""
import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from core.config import add_config_args, config_from_args, config_to_dict
from evaluation import (
    MODEL_FACTORIES,
    EASEConfig,
    EASERecommender,
    ItemKNNConfig,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    build_eval_data,
    build_model,
    data_summary,
    evaluate_models,
    format_table,
    model_config_class,
    write_report,
)
from features import SplitConfig, fit_feature_store, split_interactions

TIMING = ["fit_seconds", "score_seconds"]


@pytest.fixture(scope="module")
def ml_data(movielens):
    split = split_interactions(movielens.interactions, SplitConfig())
    return build_eval_data(movielens, split, fit_feature_store(movielens, split.train))


def _models():
    # λ fixed at the value validation selects (select_lambda is tested on synthetic data) to keep this fast.
    return [RandomRecommender(), PopularityRecommender(), EASERecommender(EASEConfig(l2=100.0, tune=False)),
            ItemKNNRecommender(ItemKNNConfig(tune=False))]


def test_baselines_on_movielens_are_ordered_and_identical_across_runs(ml_data):
    first = evaluate_models(ml_data, _models(), ks=(10, 100), batch_size=300)
    second = evaluate_models(ml_data, _models(), ks=(10, 100), batch_size=1024)
    pd.testing.assert_frame_equal(first.drop(columns=TIMING), second.drop(columns=TIMING))
    assert list(first.index) == ["random", "popularity", "ease", "itemknn"]
    assert (first["users"] == 943).all()
    ndcg = first["ndcg@10"]
    assert ndcg["random"] < 0.03 < ndcg["popularity"] < ndcg["itemknn"] < ndcg["ease"]
    # Loose bands around the known numbers (per-user temporal 80/20 split), to catch regressions.
    assert 0.09 < ndcg["popularity"] < 0.16 and 0.17 < ndcg["ease"] < 0.26
    assert first.loc["random", "coverage@10"] > 0.95 > 0.1 > first.loc["popularity", "coverage@10"]
    assert (first[["ndcg@10", "map@10", "recall@100", "mrr"]].to_numpy() <= 1.0).all()


def test_evaluate_models_rejects_duplicate_names(ml_data):
    with pytest.raises(ValueError, match="unique"):
        evaluate_models(ml_data, [RandomRecommender(), RandomRecommender()])
    with pytest.raises(ValueError, match="no models"):
        evaluate_models(ml_data, [])


def test_registry_builds_every_model_and_its_config_round_trips_through_flags():
    assert {"random", "popularity", "ease", "itemknn"} <= set(MODEL_FACTORIES)
    for name in MODEL_FACTORIES:
        cls = model_config_class(name)
        parser = argparse.ArgumentParser()
        add_config_args(parser, cls, prefix=f"{name}_")
        config = config_from_args(cls, parser.parse_args([]), prefix=f"{name}_")
        assert config == cls()
        model = build_model(name, config)
        assert model.name == name and model.config == config
        json.dumps(config_to_dict(config))
    parser = argparse.ArgumentParser()
    add_config_args(parser, EASEConfig, prefix="ease_")
    cfg = config_from_args(EASEConfig, parser.parse_args(["--ease-l2", "250", "--no-ease-tune",
                                                          "--ease-lambda-grid", "10", "20"]), prefix="ease_")
    assert cfg == EASEConfig(l2=250.0, tune=False, lambda_grid=(10.0, 20.0))
    with pytest.raises(ValueError, match="unknown model 'nope'; choose from bias, ease, ease_recency, itemknn"):
        build_model("nope")


def _frame():
    return pd.DataFrame({"ndcg@10": [0.1, 0.25], "map@10": [0.05, float("nan")], "recall@100": [0.3, 0.5],
                         "users": [10, 10], "fit_seconds": [0.01, 1.5]},
                        index=pd.Index(["popularity", "ease"], name="model"))


def test_write_report_writes_markdown_strict_json_and_png(tmp_path, ml_data):
    import matplotlib
    backend = matplotlib.get_backend()
    paths = write_report(tmp_path / "rep", _frame(), data_summary(ml_data), {"split": SplitConfig(), "ks": (10, 100)})
    assert matplotlib.get_backend() == backend  # no global backend switch
    md = paths.markdown.read_text()
    assert "| ease | 0.2500 | nan | 0.5000 | 10 | 1.50 |" in md
    assert "AP@k = Σ_{i≤k} P@i · rel_i / min(k, |relevant|)" in md and "![metrics](metrics.png)" in md
    report = json.loads(paths.json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert report["metrics"]["ease"]["map@10"] is None
    assert report["metrics"]["popularity"]["ndcg@10"] == 0.1
    assert report["split"]["evaluated_users"] == 943 and report["split"]["catalogue_items"] == 1682
    assert report["config"]["split"]["strategy"] == "user_temporal"
    assert paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_selections_on_validation_are_recorded_in_the_report(tmp_path, small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    data = build_eval_data(small_synthetic, split, fit_feature_store(small_synthetic, split.train))
    models = [PopularityRecommender(), EASERecommender(EASEConfig(lambda_grid=(10.0, 100.0, 1000.0))),
              build_model("ease_recency", model_config_class("ease_recency")(lambda_grid=(100.0, 1000.0),
                                                                              decay_grid=(1.0, 0.5))),
              ItemKNNRecommender(ItemKNNConfig(neighbors_grid=(10, 20), shrink_grid=(0.0,))), build_model("bias")]
    results = evaluate_models(data, models, ks=(10,))
    paths = write_report(tmp_path, results, data_summary(data))
    report = json.loads(paths.json.read_text())
    sel = report["selection"]
    assert set(sel) == {"ease", "ease_recency", "itemknn", "bias"}
    assert sel["ease"]["chosen"] == {"l2": models[1].l2} and sel["ease"]["metric"] == "ndcg@10"
    assert [row["l2"] for row in sel["ease"]["table"]][:3] == [10.0, 100.0, 1000.0]
    assert set(sel["ease_recency"]["chosen"]) == {"l2", "decay"} and set(sel["itemknn"]["chosen"]) == {
        "shrink", "neighbors"}
    assert sel["bias"]["metric"] == "rmse"
    md = paths.markdown.read_text()
    assert "## Hyper-parameter selection" in md and f"### ease: l2={models[1].l2:g}" in md


def test_format_table_aligns_columns():
    lines = format_table(_frame()).splitlines()
    assert lines[0].split() == ["model", "ndcg@10", "map@10", "recall@100", "users", "fit_seconds"]
    assert lines[3].split() == ["ease", "0.2500", "nan", "0.5000", "10", "1.50"]
    assert len({len(line) for line in lines}) == 1
    assert not math.isnan(float(lines[2].split()[1]))
    assert np.isclose(float(lines[2].split()[1]), 0.1)
