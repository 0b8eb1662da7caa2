"""The default blend is chosen on validation by the written rule, blind to test."""
import numpy as np
import pandas as pd

from features import SplitConfig, SyntheticConfig, fit_feature_store, generate_synthetic, split_interactions
from ranking import BlendWeights, NegativeConfig, WindowRetriever, fit_candidate_context, training_rows
from ranking.selection import blend_candidates, blend_grid, select_blend


def _rows():
    # Two users, three candidates each. Engagement finds the engaged items; quality prefers the
    # better-rated one; user b's engaged item is only found by a blend.
    return pd.DataFrame({
        "user_id": ["a"] * 3 + ["b"] * 3, "item_id": ["x", "y", "z"] * 2,
        "engaged": [1, 1, 0, 0, 1, 0], "rating": [2.0, 5.0, np.nan, np.nan, 4.0, np.nan],
        "engagement": [0.9, 0.5, 0.1, 0.6, 0.5, 0.1], "quality": [0.2, 0.9, 0.5, 0.1, 0.8, 0.9]})


def test_blend_candidates_hand_computed_ndcg_and_hit_rating():
    m = blend_candidates(_rows(), BlendWeights(1.0, 0.0, "multiplicative"), k=2)
    # a: [x, y] both hits → 1.0; b: [x, y] hit at 2 → (1/log2 3) / 1
    assert np.isclose(m["ndcg@2"], (1.0 + 1 / np.log2(3)) / 2)
    assert np.isclose(m["mean_hit_rating@2"], (2 + 5 + 4) / 3)
    assert np.isclose(m["map@2"], (1.0 + 0.5) / 2)


def test_select_blend_takes_the_best_ndcg_not_worse_in_hit_rating_than_engagement_only():
    chosen, table = select_blend(_rows(), k=1)
    eng_only = table.iloc[0]
    assert eng_only["quality_weight"] == 0 and eng_only["eligible"]
    best = table.loc[table["chosen"]].iloc[0]
    assert best["eligible"] and best["mean_hit_rating@1"] >= eng_only["mean_hit_rating@1"]
    assert best["ndcg@1"] == table.loc[table["eligible"], "ndcg@1"].max()
    assert (chosen.engagement, chosen.quality, chosen.mode) == (best["engagement_weight"], best["quality_weight"],
                                                                best["mode"])
    assert len(table) == len(blend_grid())


def test_selection_is_blind_to_test_labels():
    """Poison every test label and rating: the window rows, the held-out users and the selected blend
    are unchanged (only split.fit and split.validation are read)."""
    ds = generate_synthetic(SyntheticConfig(num_users=120, num_items=60, num_interactions=5000, seed=7))
    split = split_interactions(ds.interactions, SplitConfig())
    poisoned_test = split.test.assign(engaged=1 - split.test["engaged"], rating=5.0,
                                      item_id=np.roll(split.test["item_id"].to_numpy(), 3))
    poisoned = type(split)(split.train, split.validation, poisoned_test, split.config)
    store = fit_feature_store(ds, split.train)
    items = np.asarray(store.catalogue)
    emb = np.random.default_rng(0).normal(size=(len(items), 3)).astype(np.float32)

    def search(users):
        s = np.tile(emb @ np.ones(3, np.float32), (len(users), 1))
        order = np.argsort(-s, axis=1)[:, :15]
        return items[order].astype(object), np.take_along_axis(s, order, axis=1)

    def retriever():
        return WindowRetriever(search, lambda u, i: np.zeros(len(u), np.float32),
                               fit_candidate_context(split.fit, items, emb, 15))

    neg = NegativeConfig(source="window")
    clean_rows = training_rows(split, store, neg, 5, retriever())
    poisoned_rows = training_rows(poisoned, store, neg, 5, retriever())
    pd.testing.assert_frame_equal(clean_rows, poisoned_rows)
    held = clean_rows.loc[clean_rows["holdout"].astype(bool)]
    heads = np.random.default_rng(1)
    frame = held[["user_id", "item_id", "engaged", "rating"]].assign(engagement=heads.uniform(size=len(held)),
                                                                     quality=heads.uniform(size=len(held)))
    assert select_blend(frame)[0] == select_blend(frame.copy())[0]


def test_select_fusion_picks_the_weight_that_orders_validation_lists_best():
    from ranking.selection import select_fusion

    rows = _rows()
    logit = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # the head alone prefers the non-engaged z / x
    gap = np.array([0.0, -0.1, -0.5, -0.5, 0.0, -0.3])  # the retriever prefers the engaged items
    gamma, table = select_fusion(rows, logit, gap, weights=(0.0, 1.0, 10.0), k=1)
    assert gamma == 10.0 and table.loc[table["chosen"], "fusion_weight"].item() == 10.0
    assert table["ndcg@1"].iloc[0] < table["ndcg@1"].iloc[2]
    gamma0, _ = select_fusion(rows, np.array([1.0, 0.5, 0.0, 0.0, 1.0, 0.0]), gap, weights=(0.0, 1.0), k=1)
    assert gamma0 == 0.0  # ties go to the smaller weight
