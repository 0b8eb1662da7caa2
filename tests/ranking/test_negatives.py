import numpy as np
import pandas as pd
import pytest

from features import fit_feature_store
from ranking import NegativeConfig, sample_negatives, training_rows
from ranking.negatives import uses_impressions


def _log(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "timestamp": np.arange(len(pairs)), "rating": 4.0, "engaged": 1})


CATALOGUE = [f"i{k}" for k in range(20)]
POSITIVES = _log([("a", "i0"), ("a", "i1"), ("b", "i2"), ("b", "i0"), ("b", "i3")])


def test_sample_negatives_never_returns_a_users_positive_or_excluded_item():
    counts = {"i0": 100, "i1": 50}  # the positives are the most popular: collisions are likely
    extra = _log([("a", "i5")])
    neg = sample_negatives(POSITIVES, CATALOGUE, counts, NegativeConfig(per_positive=8, seed=3), exclude=extra)
    banned = set(zip(POSITIVES["user_id"], POSITIVES["item_id"])) | {("a", "i5")}
    assert not banned & set(zip(neg["user_id"], neg["item_id"]))
    assert (neg["engaged"] == 0).all() and neg["rating"].isna().all()
    assert len(neg) == 8 * len(POSITIVES)


def test_sample_negatives_draws_the_hard_share_from_the_candidate_generator():
    seen_batches = []

    def candidates(users):
        seen_batches.append(list(users))
        return [["i1", "i7", "i8"] if u == "a" else ["i9", "i0"] for u in users]  # a's i1 / b's i0 are positives

    cfg = NegativeConfig(per_positive=4, hard_fraction=0.5, popularity_power=0.0, seed=0)
    neg = sample_negatives(POSITIVES, CATALOGUE, {}, cfg, candidates=candidates)
    assert seen_batches == [["a", "b"]]
    hard = neg.loc[neg["item_id"].isin(["i7", "i8", "i9"])]
    # 2 of 4 per positive from the generator: a has 2 positives, b has 3.
    assert (hard["user_id"] == "a").sum() >= 4 and (hard["user_id"] == "b").sum() >= 6
    assert set(neg.loc[neg["user_id"] == "b", "item_id"]) >= {"i9"}
    assert len(neg) == 4 * len(POSITIVES)


def test_sample_negatives_is_seeded_and_falls_back_to_popularity():
    counts = {i: (1000 if i == "i19" else 1) for i in CATALOGUE}
    cfg = NegativeConfig(per_positive=50, hard_fraction=1.0, seed=7)
    first = sample_negatives(POSITIVES, CATALOGUE, counts, cfg, candidates=None)
    again = sample_negatives(POSITIVES, CATALOGUE, counts, cfg, candidates=None)
    pd.testing.assert_frame_equal(first, again)
    share = (first["item_id"] == "i19").mean()
    assert share > 0.5  # (1001^0.75) outweighs 19 × 2^0.75 ≈ 32


def test_generator_returning_nothing_leaves_the_user_to_popularity_negatives():
    cfg = NegativeConfig(per_positive=2, hard_fraction=1.0, seed=0)
    neg = sample_negatives(POSITIVES, CATALOGUE, {}, cfg, candidates=lambda users: [[] for _ in users])
    assert len(neg) == 0  # all negatives were meant to be hard; the generator had none
    with pytest.raises(ValueError, match="2 users"):
        sample_negatives(POSITIVES, CATALOGUE, {}, cfg, candidates=lambda users: [[]])


def test_training_rows_use_impressions_when_logged_else_sample(small_synthetic, movielens):
    store = fit_feature_store(small_synthetic, small_synthetic.interactions)
    rows = training_rows(small_synthetic.interactions, store, NegativeConfig())
    assert len(rows) == len(small_synthetic.interactions)  # impressions are the negatives
    assert uses_impressions(small_synthetic.interactions, NegativeConfig())
    assert not uses_impressions(small_synthetic.interactions, NegativeConfig(source="sampled"))
    with pytest.raises(ValueError, match="no engaged=0 rows"):
        uses_impressions(movielens.interactions, NegativeConfig(source="impressions"))
    sub = movielens.interactions.iloc[:2000]
    ml_store = fit_feature_store(movielens, sub)
    rows = training_rows(sub, ml_store, NegativeConfig(per_positive=3))
    assert (rows["engaged"] == 0).sum() == 3 * len(sub)
    assert (rows["engaged"] == 1).sum() == len(sub)


def _split(fit_pairs, window_pairs):
    from features import Split, SplitConfig
    fit, window = _log(fit_pairs), _log(window_pairs)
    window["timestamp"] += 100
    train = pd.concat([fit, window], ignore_index=True)
    return Split(train=train, validation=train.iloc[len(fit):], test=train.iloc[:0], config=SplitConfig())


def test_window_rows_label_generated_candidates_by_the_window(small_synthetic):
    import numpy as np

    from ranking import WindowRetriever, fit_candidate_context
    from ranking.train import resolve_negative_source
    split = _split([("a", "i0"), ("a", "i1"), ("b", "i2")], [("a", "i3"), ("b", "i4"), ("b", "i9")])
    store = fit_feature_store(small_synthetic, split.train)
    calls = []

    def search(users):  # a's i1 was engaged in fit: never a candidate row
        calls.append(list(users))
        lists = [["i3", "i1", "i5"] if u == "a" else ["i6", "i4", ""] for u in users]
        return np.array(lists, dtype=object), np.array([[0.9, 0.8, 0.7]] * len(users), dtype=np.float32)

    items = store.catalogue
    retriever = WindowRetriever(search, lambda u, i: np.zeros(len(u), np.float32),
                                fit_candidate_context(split.fit, items, np.eye(len(items))[:, :8], 3))
    rows = training_rows(split, store, NegativeConfig(source="window"), history_length=5, candidates=retriever)
    eng = rows.loc[rows["w_quality"] == 0]
    got = {(u, i): e for u, i, e in zip(eng["user_id"], eng["item_id"], eng["engaged"])}
    assert got == {("a", "i3"): 1, ("a", "i5"): 0, ("b", "i6"): 0, ("b", "i4"): 1}  # b's i9 was not retrieved
    assert dict(zip(zip(eng["user_id"], eng["item_id"]), eng["retrieval_rank"])) == {
        ("a", "i3"): 0, ("a", "i5"): 2, ("b", "i6"): 0, ("b", "i4"): 1}  # ranks in the retriever's list
    assert eng["holdout"].sum() == len(eng.loc[eng["user_id"] == eng.loc[eng["holdout"], "user_id"].iloc[0]])
    assert (eng.loc[eng["holdout"], "w_engagement"] == 0).all() and (eng.loc[~eng["holdout"], "w_engagement"] == 1).all()
    assert calls == [["a", "b"]]
    assert set(eng.loc[eng["user_id"] == "a", "history"]) == {"i0|i1"}  # fit items only, never the window's
    quality = rows.loc[rows["w_quality"] == 1]
    assert len(quality) == len(split.train) and (quality["w_engagement"] == 0).all()
    # auto picks window only when there is a retriever to replay; else sampled (no impressions here).
    assert resolve_negative_source(split, NegativeConfig()) == "sampled"
    assert resolve_negative_source(split, NegativeConfig(), have_retriever=True) == "window"
    with pytest.raises(ValueError, match="--val-fraction"):
        training_rows(split.train, store, NegativeConfig(source="window"))  # a bare log has no window


def test_training_rows_history_only_holds_earlier_engagements(small_synthetic):
    split = _split([("a", "i0"), ("a", "i1"), ("a", "i2")], [])
    store = fit_feature_store(small_synthetic, split.train)
    rows = training_rows(split.train, store, NegativeConfig(source="sampled", per_positive=1), history_length=5)
    pos = rows.loc[rows["engaged"] == 1].set_index("item_id")["history"]
    assert pos["i0"] == "" and pos["i1"] == "i0" and pos["i2"] == "i0|i1"
