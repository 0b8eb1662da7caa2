"""The ranker's serving-time choices (β, calibration, stacking, default blend) are made on validation only:
poisoning every test label leaves each selected setting unchanged; the version serves what was chosen."""
import json

import numpy as np
import pytest

from core import registry
from core.config import parse_config
from tests.conftest import TINY_RANKING, TINY_TRAIN


def _strip(args: tuple[str, ...]) -> list[str]:
    return [a for a in args if a != "--no-promote"]


def test_every_selected_setting_is_blind_to_test_labels(tiny_version):
    from features import fit_feature_store
    from workflows.data import load_split
    from workflows.train import TrainConfig, TrainContext, _select_on_validation

    config = parse_config(TrainConfig, _strip(TINY_TRAIN) + list(TINY_RANKING))
    dataset, split = load_split(config.data)
    rng = np.random.default_rng(7)
    test = split.test.copy()
    test["engaged"] = 1 - test["engaged"]                      # every label flipped
    test["item_id"] = rng.permutation(test["item_id"].to_numpy())  # and scattered over other items
    test["rating"] = rng.uniform(1, 5, len(test))
    poisoned = type(split)(split.train, split.validation, test, split.config)
    manifest = registry.read_manifest(tiny_version)
    ctx = TrainContext(config, dataset, poisoned, fit_feature_store(dataset, poisoned.train), tiny_version,
                       {"retrieval": manifest["retrieval"]})
    got = _select_on_validation(ctx, "sampled")
    chosen = manifest["ranking"]["selection"]
    assert got["retrieval_weight"] == chosen["retrieval_weight"]
    assert got["quality_residual_scale"] == chosen["quality_residual_scale"]
    offset = manifest["ranking"]["quality_baseline"]  # the quality offset's shrinkage, chosen on validation too
    assert tuple(ctx.state["rating_baselines"]["regs"]) == (offset["user_reg"], offset["item_reg"])
    assert got["blend"].__dict__ == chosen["blend"]
    assert got["calibration"]["a"] == pytest.approx(chosen["calibration"]["a"], rel=1e-4)
    assert got["calibration"]["b"] == pytest.approx(chosen["calibration"]["b"], rel=1e-4)
    assert (got["stacking"] is None) == (chosen["stacking"] is None)
    if got["stacking"] is not None:
        assert got["stacking"].to_dict()["weights"] == pytest.approx(chosen["stacking"]["weights"], rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(got["stacking_table"]["ndcg@10"], [r["ndcg@10"] for r in chosen["stacking_table"]],
                               rtol=1e-6)
    np.testing.assert_allclose(got["fusion_table"]["ndcg@10"], [r["ndcg@10"] for r in chosen["fusion_table"]],
                               rtol=1e-6)


def test_the_version_serves_what_validation_chose(tiny_version):
    manifest = registry.read_manifest(tiny_version)
    sel, serving = manifest["ranking"]["selection"], manifest["ranking"]["serving"]
    fusion = {r["retrieval_weight"]: r["ndcg@10"] for r in sel["fusion_table"]}
    assert 0.0 in fusion  # the ranker alone is always measured
    assert sel["retrieval_weight"] == max(fusion, key=lambda b: (fusion[b], -b))
    assert serving["retrieval_weight"] == pytest.approx(sel["retrieval_weight"])
    # The stacked engagement model is served iff its out-of-fold validation ndcg@10 >= the fused head's;
    # it replaces the Platt map (the logistic fit is calibrated on the validation candidates itself).
    table = {r["engagement"].split(",")[0].split(" ")[0]: r for r in sel["stacking_table"]}
    assert (sel["stacking"] is not None) == (table["stacked"]["ndcg@10"] >= table["fused"]["ndcg@10"])
    assert serving["stacked"] == (sel["stacking"] is not None)
    meta = json.loads((tiny_version / "ranking" / "ranker.json").read_text())
    if serving["stacked"]:
        assert (serving["calibration_a"], serving["calibration_b"]) == (1.0, 0.0)
        assert meta["calibration"]["method"] == "stacked"
        assert meta["calibration"]["weights"] == pytest.approx(sel["stacking"]["weights"], rel=1e-6)
    else:
        assert serving["calibration_a"] == pytest.approx(sel["calibration"]["a"], rel=1e-6)
        assert serving["calibration_b"] == pytest.approx(sel["calibration"]["b"], rel=1e-6)
        assert meta["calibration"]["method"] == "platt"
    rmse = {r["quality_residual_scale"]: r["validation_rmse"] for r in sel["quality_table"]}
    assert 0.0 in rmse and sel["quality_residual_scale"] == min(rmse, key=lambda g: (rmse[g], g))
    assert serving["quality_residual_scale"] == pytest.approx(sel["quality_residual_scale"])
    # The quality offset's (user reg, item reg): the validation pair iff it won by more than one standard error.
    offset = manifest["ranking"]["quality_baseline"]
    shrink = offset["shrinkage_selection"]
    assert shrink["adopted"] == (shrink["mse_gain"] > max(shrink["mse_gain_se"], 1e-9))
    best = min(shrink["table"], key=lambda r: r["rmse"])
    assert (offset["user_reg"], offset["item_reg"]) == ((best["user_reg"], best["item_reg"]) if shrink["adopted"]
                                                        else (offset["reg"], offset["reg"]))
    # The chosen blend is the version's default, and it obeys the rule on its own table.
    pipeline = json.loads((tiny_version / "ranking" / "pipeline.json").read_text())
    blend = sel["blend"]
    assert (pipeline["engagement_weight"], pipeline["quality_weight"], pipeline["blend_mode"],
            pipeline["blend_transform"]) == (blend["engagement"], blend["quality"], blend["mode"], blend["transform"])
    table = sel["blend_table"]
    floor = next(r["mean_hit_rating@10"] for r in table if r["quality_weight"] == 0)
    eligible = [r for r in table if r["quality_weight"] == 0 or (r["mean_hit_rating@10"] or -1) >= floor]
    best = max(eligible, key=lambda r: r["ndcg@10"])
    assert [r for r in table if r["chosen"]][0]["ndcg@10"] == best["ndcg@10"]
    assert meta["calibration"]["method"] == ("stacked" if serving["stacked"] else "platt")
    assert meta["retrieval_weight"] == serving["retrieval_weight"]


def test_selection_max_users_makes_the_choices_on_a_seeded_sample_of_validation_users(tiny_version):
    from features import fit_feature_store
    from workflows.data import load_split
    from workflows.train import TrainConfig, TrainContext, _select_on_validation

    config = parse_config(TrainConfig, _strip(TINY_TRAIN) + list(TINY_RANKING) + ["--ranking-selection-max-users", "20"])
    assert config.ranking.selection_max_users == 20
    dataset, split = load_split(config.data)
    manifest = registry.read_manifest(tiny_version)
    assert manifest["ranking"]["selection"]["users"] > 20  # the default scores every validation user
    ctx = TrainContext(config, dataset, split, fit_feature_store(dataset, split.train), tiny_version,
                       {"retrieval": manifest["retrieval"]})
    got = _select_on_validation(ctx, "sampled")
    assert got["users"] == 20 and got["validation_users"] == manifest["ranking"]["selection"]["users"]
    assert 0 < got["candidates"] <= 20 * config.pipeline.num_candidates
    assert set(got["fusion_table"]["retrieval_weight"]) == set(config.ranking.retrieval_weight_grid)
    with pytest.raises(ValueError, match="selection-max-users"):
        parse_config(TrainConfig, _strip(TINY_TRAIN) + ["--ranking-selection-max-users", "-1"])
