import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from features import SplitConfig, fit_feature_store, split_interactions


def _keys(df):
    return set(zip(df["user_id"], df["item_id"], df["timestamp"], df.index))


def test_user_temporal_split_never_leaks_test_into_train(movielens):
    split = split_interactions(movielens.interactions, SplitConfig(test_fraction=0.2, val_fraction=0.1))
    assert len(split.train) + len(split.test) == 100_000
    assert not set(split.train.index) & set(split.test.index)
    assert set(split.validation.index) <= set(split.train.index)
    assert not set(split.fit.index) & set(split.validation.index)
    # Per user, every train row is no later than every test row (temporal, not random).
    last_train = split.train.groupby("user_id")["timestamp"].max()
    first_test = split.test.groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()
    last_fit = split.fit.groupby("user_id")["timestamp"].max()
    first_val = split.validation.groupby("user_id")["timestamp"].min()
    assert (last_fit.reindex(first_val.index) <= first_val).all()
    # Each user holds out ceil(20%) of their history.
    n = movielens.interactions.groupby("user_id").size()
    held = split.test.groupby("user_id").size().reindex(n.index, fill_value=0)
    assert (held == np.ceil(0.2 * n).astype(int)).all()


def test_user_temporal_split_is_deterministic_with_timestamp_ties():
    df = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("vwxyz"), "timestamp": [1, 1, 1, 1, 1]})
    split = split_interactions(df, SplitConfig(test_fraction=0.4, val_fraction=0.0))
    assert list(split.test["item_id"]) == ["y", "z"]  # ties broken by source order
    again = split_interactions(df, SplitConfig(test_fraction=0.4, val_fraction=0.0))
    assert list(again.test["item_id"]) == ["y", "z"]


def test_short_histories_stay_in_train():
    df = pd.DataFrame({"user_id": ["a", "a", "b", "b", "b"], "item_id": list("xyxyz"), "timestamp": [1, 2, 1, 2, 3]})
    split = split_interactions(df, SplitConfig(test_fraction=0.3, val_fraction=0.0, min_user_interactions=3))
    assert set(split.test["user_id"]) == {"b"}
    assert list(split.test["item_id"]) == ["z"]


def test_global_time_split_uses_one_cutoff(movielens):
    cfg = SplitConfig(strategy="global_time", test_fraction=0.1, val_fraction=0.1)
    split = split_interactions(movielens.interactions, cfg)
    assert split.train["timestamp"].max() < split.test["timestamp"].min()
    assert split.fit["timestamp"].max() < split.validation["timestamp"].min()
    assert 0.08 < len(split.test) / 100_000 < 0.12
    fixed = split_interactions(movielens.interactions, SplitConfig(strategy="global_time", cutoff_timestamp=890_000_000))
    assert fixed.train["timestamp"].max() < 890_000_000 <= fixed.test["timestamp"].min()
    with pytest.raises(DataError, match="cutoff"):
        split_interactions(movielens.interactions, SplitConfig(strategy="global_time", cutoff_timestamp=1))


def test_user_random_split_is_stratified_and_seeded(movielens):
    cfg = SplitConfig(strategy="user_random", test_fraction=0.25, val_fraction=0.0, seed=42)
    a, b = split_interactions(movielens.interactions, cfg), split_interactions(movielens.interactions, cfg)
    assert a.test.index.equals(b.test.index)
    n = movielens.interactions.groupby("user_id").size()
    held = a.test.groupby("user_id").size().reindex(n.index)
    assert (held == np.ceil(0.25 * n).astype(int)).all()
    c = split_interactions(movielens.interactions, SplitConfig(strategy="user_random", test_fraction=0.25, seed=1))
    assert not a.test.index.equals(c.test.index)


@pytest.mark.parametrize("field,value", [("test_fraction", 0.0), ("test_fraction", 1.0), ("val_fraction", -0.1)])
def test_split_rejects_bad_fractions(movielens, field, value):
    with pytest.raises(DataError, match=field.replace("_", "-")):
        split_interactions(movielens.interactions, SplitConfig(**{field: value}))


def test_feature_store_is_fit_on_train_only(movielens):
    split = split_interactions(movielens.interactions, SplitConfig())
    store = fit_feature_store(movielens, split.train)
    test_only = set(split.test["item_id"]) - set(split.train["item_id"])
    assert test_only, "the temporal split should leave some items only in test"
    vocab = store.vocabularies["item_id"]
    assert all(vocab.lookup([i])[0] == 0 for i in test_only)  # OOV, never learned from test
    assert sum(store.item_counts.values()) == int(split.train["engaged"].sum())
    counts = split.train["item_id"].value_counts()
    assert store.popularity(["50", "nope"]).tolist() == [int(counts["50"]), 0]
    # Unknown users get defaults instead of errors.
    feats = store.user_features(["1", "no-such-user"])
    assert feats["occupation"].tolist() == ["technician", ""]
    assert feats["age"][1] == pytest.approx(store.numeric_stats["age"][0])


def test_feature_store_round_trips(tmp_path, movielens):
    split = split_interactions(movielens.interactions, SplitConfig())
    store = fit_feature_store(movielens, split.train)
    store.save(tmp_path)
    from features import FeatureStore
    loaded = FeatureStore.load(tmp_path)
    assert loaded.vocabularies == store.vocabularies
    assert loaded.item_counts == store.item_counts
    ids = ["1", "2", "x"]
    for k, v in store.item_features(ids).items():
        assert list(loaded.item_features(ids)[k]) == list(v)
