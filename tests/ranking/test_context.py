"""Candidate context features and calibration: hand-computed values, and the same features in training and serving."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import SplitConfig, SyntheticConfig, fit_feature_store, generate_synthetic, split_interactions
from ranking import (
    NegativeConfig,
    Ranker,
    RankerConfig,
    WindowRetriever,
    export_ranker,
    fit_candidate_context,
    predict,
    train_ranker,
    training_rows,
)
from ranking.calibration import PlattCalibration, fit_platt
from ranking.context import CONTEXT_FEATURES, CONTEXT_PREFIX, CandidateContext
from ranking.train import holdout_users, make_examples

TINY = RankerConfig(id_dim=8, feature_dim=4, hidden=(16,), head_hidden=8, epochs=2, batch_size=256, progress=False,
                    history_length=5, seed=3)


def test_candidate_context_features_match_hand_computed_values():
    emb = np.array([[1, 0], [0, 1], [1, 1], [3, 4]], dtype=np.float32)
    ctx = CandidateContext(np.array(["a", "b", "c", "d"]), emb / np.linalg.norm(emb, axis=1, keepdims=True),
                           popularity=np.array([1, 2, 3, 4], np.float32), recent=np.array([0, 1, 0, 2], np.float32),
                           trend=np.array([-1, 0, 1, 2], np.float32), num_candidates=5, history_k=2)
    out = ctx.features([("d", "a", "b"), ()], np.array([3, 0]), np.array([0, 0, 1]), ["c", "zz", "c"],
                       np.array([0.5, 0.2, -0.1]), np.array([0, 7, 1]))
    s2 = 1 / np.sqrt(2)
    # user 0 reads its last 2 items (a, b): c·a = c·b = 1/√2; the unknown item has similarity 0.
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "history_max_sim"], [s2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "history_mean_sim"], [s2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "retrieval_rank"], np.log1p([0, 5, 1]), rtol=1e-6)  # 7 ≥ N → N
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "item_popularity"], [3, 0, 3])
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "item_trend"], [1, 0, 1])
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "user_activity"], np.log1p([3, 3, 0]), rtol=1e-6)
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "retrieval_score"], [0.5, 0.2, -0.1], rtol=1e-6)
    # Within-list: user 0's only listed candidate is c (zz's rank 7 is outside N = 5).
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "retrieval_gap"], [0.0, -0.3, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[CONTEXT_PREFIX + "retrieval_z"], [0.0, 0.0, 0.0])
    z = ctx.features([()], np.array([0]), np.zeros(3, int), ["a", "b", "c"], np.array([3.0, 1.0, 2.0]),
                     np.array([0, 2, 1]))[CONTEXT_PREFIX + "retrieval_z"]
    np.testing.assert_allclose(z, [1.2247449, -1.2247449, 0.0], rtol=1e-6)
    assert set(out) == {CONTEXT_PREFIX + c for c in CONTEXT_FEATURES}


def test_fit_candidate_context_counts_recent_engagements():
    log = pd.DataFrame({"user_id": ["u"] * 10, "item_id": ["a"] * 8 + ["b", "b"], "timestamp": np.arange(10),
                        "rating": np.nan, "engaged": [1] * 10})
    ctx = fit_candidate_context(log, ["a", "b", "c"], np.eye(3), num_candidates=10, recent_share=0.2)
    np.testing.assert_allclose(ctx.popularity, np.log1p([8, 2, 0]), rtol=1e-6)
    np.testing.assert_allclose(ctx.recent, np.log1p([0, 2, 0]), rtol=1e-6)  # the last 2 rows are b's
    np.testing.assert_allclose(ctx.trend, np.log(np.array([1, 3, 1]) / np.array([2.6, 1.4, 1.0])), rtol=1e-5)


def test_platt_calibration_is_monotone_and_maps_into_unit_interval():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 5000)
    y = rng.uniform(0, 1, 5000) < p ** 2  # over-confident raw scores
    cal = fit_platt(p, y)
    grid = np.linspace(0, 1, 1001)
    out = cal.apply(grid)
    assert ((out >= 0) & (out <= 1)).all() and (np.diff(out) >= 0).all()
    assert (np.diff(cal.apply(np.linspace(0.01, 0.99, 99))) > 0).all()  # strictly: the order never changes
    assert abs(cal.apply(p).mean() - y.mean()) < 0.01  # the likelihood fit matches the base rate
    assert PlattCalibration.from_dict(cal.to_dict()) == cal
    np.testing.assert_allclose(PlattCalibration().apply(np.array([0.2, 0.7])), [0.2, 0.7], rtol=1e-6)
    with pytest.raises(ValueError, match="a > 0"):
        PlattCalibration(a=-1.0)
    # With the retrieval fusion: still increasing in p for a fixed gap, and the gap term is γ·gap on the logit.
    fused = PlattCalibration(1.0, 0.0, gap_weight=2.0)
    np.testing.assert_allclose(fused.apply(np.array([0.5]), np.array([-1.0])), [1 / (1 + np.exp(2.0))], rtol=1e-6)
    assert (np.diff(fused.apply(grid[1:-1], np.full(len(grid) - 2, -0.3))) >= 0).all()
    cal_g = fit_platt(p, y, gap=-rng.uniform(0, 1, len(p)), gap_weight=1.5)
    assert cal_g.gap_weight == 1.5 and PlattCalibration.from_dict(cal_g.to_dict()) == cal_g


def test_holdout_users_is_seeded_and_a_share():
    users = [f"u{i}" for i in range(100)]
    held = holdout_users(users, 0.2, seed=1)
    assert len(held) == 20 and held == holdout_users(list(reversed(users)), 0.2, seed=1)
    assert held != holdout_users(users, 0.2, seed=2)


@pytest.fixture(scope="module")
def window_world():
    """A split, a fixed-embedding 'retriever' that saw only split.fit, window rows and a ranker trained on them."""
    ds = generate_synthetic(SyntheticConfig(num_users=150, num_items=80, num_interactions=8000, seed=4))
    split = split_interactions(ds.interactions, SplitConfig())
    fit_store = fit_feature_store(ds, split.fit)  # the world as of the end of split.fit
    items = np.asarray(fit_store.catalogue)
    rng = np.random.default_rng(0)
    item_emb = rng.normal(size=(len(items), 4)).astype(np.float32)
    users = sorted(split.train["user_id"].unique())
    user_emb = {u: rng.normal(size=4).astype(np.float32) for u in users}
    n = 20

    def search(user_ids):
        ids = np.full((len(user_ids), n), "", dtype=object)
        scores = np.full((len(user_ids), n), -np.inf, dtype=np.float32)
        for r, u in enumerate(user_ids):
            s = item_emb @ user_emb[u]
            seen = fit_store.seen_items([u])[0]
            order = [j for j in np.argsort(-s, kind="stable") if items[j] not in seen][:n]
            ids[r, :len(order)] = items[order]
            scores[r, :len(order)] = s[order]
        return ids, scores

    def pair_scores(user_ids, item_ids):
        row = {i: r for r, i in enumerate(items)}
        return np.array([item_emb[row[i]] @ user_emb[u] for u, i in zip(user_ids, item_ids)], dtype=np.float32)

    ctx = fit_candidate_context(split.fit, items, item_emb, n)
    retriever = WindowRetriever(search, pair_scores, ctx)
    rows = training_rows(split, fit_store, NegativeConfig(source="window"), TINY.history_length, retriever)
    model, info = train_ranker(rows, fit_store, TINY)
    return split, fit_store, ctx, search, rows, model, info


def test_window_rows_are_the_retrievers_lists_labelled_by_the_window(window_world):
    split, _, _, search, rows, _, info = window_world
    cand = rows.loc[rows["retrieval_rank"].fillna(-2) >= 0]
    assert info["context"] and len(cand) and cand["engaged"].isin([0, 1]).all()
    window = split.validation.loc[split.validation["engaged"] == 1]
    pos = set(zip(window["user_id"], window["item_id"]))
    assert all(((u, i) in pos) == bool(e) for u, i, e in zip(cand["user_id"], cand["item_id"], cand["engaged"]))
    assert cand["holdout"].any() and (cand.loc[cand["holdout"], "w_engagement"] == 0).all()
    quality = rows.loc[rows["w_quality"] > 0]
    assert (quality["w_engagement"] == 0).all() and len(quality) == split.train["rating"].notna().sum()


def test_context_features_are_identical_in_training_and_serving(window_world, tmp_path):
    """The same (user, candidate), the same retriever and data as of the same time: the serving path
    (CandidateScorer → Ranker.candidate_context) builds exactly the training row's features and scores."""
    from pipeline import CandidateScorer

    split, fit_store, ctx, search, rows, model, info = window_world
    export_ranker(model, tmp_path / "ranking", info, context=ctx, calibration=PlattCalibration(1.3, -0.2))
    ranker = Ranker.load(tmp_path / "ranking")
    cand = rows.loc[rows["retrieval_rank"].fillna(-2) >= 0].reset_index(drop=True)
    users = list(dict.fromkeys(cand["user_id"]))[:25]
    ids, scores = search(users)
    valid = ids != ""
    owner = np.repeat(np.arange(len(users)), valid.sum(axis=1))
    ranks = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)[valid]
    served = ranker.candidate_context(fit_store, users, owner, ids[valid].astype(str), scores[valid], ranks)
    trained = cand.set_index(["user_id", "item_id"]).loc[list(zip(np.asarray(users)[owner], ids[valid]))]
    for k in served:
        np.testing.assert_allclose(served[k], trained[k].to_numpy(np.float32), rtol=1e-6, atol=1e-6, err_msg=k)
    # And the served engagement is the calibrated in-memory prediction of the training row.
    sets = CandidateScorer(fit_store, ranker, fit_store.catalogue, "v").score(users, ids, scores)
    ex = make_examples(trained.reset_index(), fit_store, TINY.history_length, True)
    e, q = predict(model, ex.inputs)
    np.testing.assert_allclose(np.concatenate([c.engagement for c in sets]), PlattCalibration(1.3, -0.2).apply(e),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([c.quality for c in sets]), q, rtol=1e-4, atol=1e-6)


def test_context_reaches_the_engagement_head_only(window_world):
    split, fit_store, _, _, rows, model, _ = window_world
    cand = rows.loc[rows["retrieval_rank"].fillna(-2) >= 0].head(200).reset_index(drop=True)
    base = make_examples(cand, fit_store, TINY.history_length, True)
    e0, q0 = predict(model, base.inputs)
    shifted = dict(base.inputs)
    shifted[CONTEXT_PREFIX + "retrieval_score"] = base.inputs[CONTEXT_PREFIX + "retrieval_score"] + 3.0
    e1, q1 = predict(model, shifted)
    np.testing.assert_array_equal(q0, q1)
    assert not np.allclose(e0, e1)


def test_export_refuses_a_context_ranker_without_its_context(window_world, tmp_path):
    *_, model, info = window_world
    with pytest.raises(ValueError, match="CandidateContext"):
        export_ranker(model, tmp_path / "ranking", info)
    assert dataclasses.asdict(model.config)["context"] is True
