"""The stacked engagement model (ranking.stacking): its graph features against hand computations, the
served value against the numpy fit, the ridge logistic fit, the out-of-fold protocol and the selection rule."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import SplitConfig, SyntheticConfig, fit_feature_store, generate_synthetic, split_interactions
from ranking import Ranker, RankerConfig, build_ranker, export_ranker, predict, predict_logits
from ranking.stacking import (
    EXTRA_FEATURES,
    STACK_FEATURES,
    StackedEngagement,
    activity_stats,
    crossfit_logits,
    feature_matrix,
    fit_stacker,
    user_folds,
)
from ranking.train import make_examples
from tests.ranking.fakes import fake_user_tower

TINY = RankerConfig(id_dim=8, feature_dim=4, hidden=(16,), head_hidden=8, epochs=1, batch_size=256, progress=False,
                    dropout=0.0, history_length=30, retrieval_weight=-1.0, seed=1)


def _log(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating", "engaged"])


def test_activity_stats_hand_values():
    log = _log([("a", "x", 1, 4.0, 1), ("a", "y", 2, np.nan, 1), ("b", "x", 3, 5.0, 1), ("b", "y", 4, np.nan, 0),
                ("c", "x", 5, 3.0, 1), ("c", "z", 10, 2.0, 1), ("c", "y", 9, 2.0, 0)])
    stats = activity_stats(log, recent_fraction=0.2)  # 5 engaged rows: the cut is the 0.8 quantile (t = 5.8): z only
    items = dict(zip(stats.item_ids, stats.item_values))
    np.testing.assert_allclose(items["x"], [np.log(4), np.log(1), np.log(1 / (0.2 * 3 + 1))], rtol=1e-6)
    np.testing.assert_allclose(items["y"], [np.log(2), np.log(1), np.log(1 / (0.2 * 1 + 1))], rtol=1e-6)
    np.testing.assert_allclose(items["z"], [np.log(2), np.log(2), np.log(2 / 1.2)], rtol=1e-6)
    users = dict(zip(stats.user_ids, stats.user_values))
    np.testing.assert_allclose([users["a"], users["b"], users["c"]], np.log([3, 2, 3]), rtol=1e-6)


def test_fit_stacker_recovers_planted_weights():
    """Lists drawn from a planted logistic model with a per-user activity effect: the listwise order
    recovers the within-user weights, the calibration step the user weight and the intercept."""
    rng = np.random.default_rng(0)
    n, width, f = 2500, 60, len(STACK_FEATURES)
    user = STACK_FEATURES.index("log_user_count")
    x = rng.normal(size=(n, width, f)) * rng.uniform(0.5, 2, f) + rng.normal(size=f)
    x[..., user] = rng.uniform(0, 3, n)[:, None]  # constant within a user's list
    w = rng.normal(size=f) * 0.4
    w[user] = 0.6
    valid = rng.random((n, width)) < 0.95
    y = (rng.random((n, width)) < 1 / (1 + np.exp(-(x @ w - 5.0)))) & valid
    got = fit_stacker(x, y, valid, l2=1e-3)
    np.testing.assert_allclose(got.weights, w, atol=0.08)
    assert got.intercept == pytest.approx(-5.0, abs=0.3)
    # Calibrated on the data it was fit on: mean prediction = base rate (the logistic MLE's score equation).
    assert got.apply(x[valid]).mean() == pytest.approx(y[valid].mean(), rel=1e-3)
    with pytest.raises(ValueError, match="both labels"):
        fit_stacker(x, np.zeros_like(y), valid)
    with pytest.raises(ValueError, match="features"):
        fit_stacker(x[..., :3], y, valid)


def test_crossfit_logits_never_use_the_users_own_labels():
    rng = np.random.default_rng(1)
    n, width, f = 60, 30, len(STACK_FEATURES)
    x = rng.normal(size=(n, width, f))
    valid = rng.random((n, width)) < 0.9
    y = (rng.random((n, width)) < 1 / (1 + np.exp(-x[..., 0] + 2))) & valid
    folds = user_folds(n, 2, seed=3)
    assert sorted(np.bincount(folds)) == [30, 30]
    base = crossfit_logits(x, y, valid, folds)
    flipped = y.copy()
    flipped[folds == 0] = ~flipped[folds == 0] & valid[folds == 0]  # poison fold 0's labels
    again = crossfit_logits(x, flipped, valid, folds)
    np.testing.assert_allclose(again[folds == 0], base[folds == 0])  # fold 0 is scored by fold 1's model only
    assert not np.allclose(again[folds == 1], base[folds == 1])
    assert (base[~valid] == 0).all()


@pytest.fixture(scope="module")
def stacked_setup():
    ds = generate_synthetic(SyntheticConfig(num_users=120, num_items=60, num_interactions=4000, seed=2))
    split = split_interactions(ds.interactions, SplitConfig())
    store = fit_feature_store(ds, split.train)
    item_ids = np.asarray(store.catalogue)[:-5]  # the last 5 items are unknown to the retriever
    emb = np.random.default_rng(0).normal(size=(len(item_ids), 2)).astype(np.float32)
    stats = activity_stats(split.train)
    model = build_ranker(store, TINY, (fake_user_tower(), item_ids, emb), stack_stats=stats)
    rows = split.test.iloc[:400]
    ex = make_examples(rows, store, TINY.history_length)
    return store, item_ids, emb, stats, model, ex


def test_stack_inputs_match_hand_computed_features(stacked_setup):
    store, item_ids, emb, stats, model, ex = stacked_setup
    got = predict_logits(model, ex.inputs)["stack_extra"]
    assert got.shape == (len(ex), len(EXTRA_FEATURES))
    unit = {i: v / np.linalg.norm(v) for i, v in zip(item_ids, emb.astype(np.float64))}
    zero = np.zeros(emb.shape[1])
    item_stats = dict(zip(stats.item_ids, stats.item_values))
    user_stats = dict(zip(stats.user_ids, stats.user_values))
    want = []
    for user, item, hist in zip(ex.inputs["u__user_id"], ex.inputs["i__item_id"], ex.inputs["u__history"]):
        h = [t for t in hist.split("|") if t][-20:]
        v = unit.get(item, zero)
        vecs = [unit.get(t, zero) for t in h]
        last = float(vecs[-1] @ v) if h else 0.0
        s5 = np.sum(vecs[-5:], axis=0) if h else zero
        rec = float(s5 @ v / np.linalg.norm(s5)) if np.linalg.norm(s5) > 0 else 0.0
        mx = max(float(x @ v) for x in vecs) if h else 0.0
        want.append([last, rec, mx, *item_stats.get(item, [0, 0, 0]), user_stats.get(user, 0.0)])
    want = np.asarray(want)
    assert (np.array([len(h.split("|")) for h in ex.inputs["u__history"]]) > 5).any()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_served_engagement_is_the_stacked_logistic_model(stacked_setup, tmp_path):
    store, item_ids, emb, stats, model, ex = stacked_setup
    before = predict(model, ex.inputs)[0]
    weights = tuple(np.linspace(-0.5, 0.7, len(STACK_FEATURES)))
    stacked = StackedEngagement(weights, -1.25)
    model.set_stacking(stacked)
    try:
        assert model.stacking() == pytest.approx(stacked) or model.stacking().weights == pytest.approx(weights)
        parts = predict_logits(model, ex.inputs)
        x = feature_matrix(parts["engagement"], parts["affinity"], parts["quality"], parts["stack_extra"])
        served, quality = predict(model, ex.inputs)
        np.testing.assert_allclose(served, stacked.apply(x), rtol=1e-4, atol=1e-6)
        assert not np.allclose(served, before)
        export_ranker(model, tmp_path / "ranking")
        ranker = Ranker.load(tmp_path / "ranking")
        e, q = ranker.score_inputs(ex.inputs)
        np.testing.assert_allclose(e, served, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(q, quality, rtol=1e-5, atol=1e-7)
        assert ranker.meta["calibration"]["method"] == "stacked"
        assert ranker.meta["calibration"]["weights"] == pytest.approx(dict(zip(STACK_FEATURES, weights)), rel=1e-6)
    finally:
        model.set_stacking(None)
    np.testing.assert_allclose(predict(model, ex.inputs)[0], before)


def test_stacking_needs_the_graph_features(stacked_setup):
    store, *_ = stacked_setup
    plain = build_ranker(store, dataclasses.replace(TINY, retrieval_weight=0.0))
    with pytest.raises(ValueError, match="stacked engagement model needs"):
        plain.set_stacking(StackedEngagement(tuple([0.0] * len(STACK_FEATURES)), 0.0))
    with pytest.raises(ValueError, match="finite weights"):
        StackedEngagement((1.0,), 0.0)


def test_select_stacking_serves_the_stacker_only_when_it_wins_out_of_fold():
    from evaluation.selection import ValidationCandidates, select_stacking

    rng = np.random.default_rng(4)
    n, width = 200, 40
    signal = rng.normal(size=(n, width))
    engaged = rng.random((n, width)) < 1 / (1 + np.exp(-(3 * signal - 4)))
    engaged[:, 0] |= ~engaged.any(axis=1)
    valid = np.ones((n, width), dtype=bool)

    def cands(stack_signal, logit):
        x = np.zeros((n, width, len(STACK_FEATURES)))
        x[..., 3] = stack_signal
        x[..., 0] = rng.normal(size=(n, width))
        return ValidationCandidates(user_ids=np.arange(n).astype(str).astype(object), valid=valid, logit=logit,
                                    affinity=np.ones((n, width)), quality=np.full((n, width), 0.5), engaged=engaged,
                                    rating=np.full((n, width), np.nan), num_relevant=engaged.sum(axis=1), stack=x)

    # The stacker sees the signal, the fused head does not: the stacker is served.
    model, oof, table = select_stacking(cands(signal, rng.normal(size=(n, width))), beta=0.0)
    assert model is not None and table["chosen"].tolist() == [False, True]
    assert model.weights[3] > 1.0
    # The fused head sees the signal, the stacker only noise: the fused head stays.
    model, _, table = select_stacking(cands(rng.normal(size=(n, width)), signal), beta=0.0)
    assert model is None and table["chosen"].tolist() == [True, False]
    assert table["ndcg@10"].iloc[0] > table["ndcg@10"].iloc[1]
