"""The per-item rating prior (a Bayesian average fit on train), saved with the feature store."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features import FeatureStore, RatingPrior, fit_feature_store


def test_rating_prior_is_the_bayesian_average_on_hand_values():
    train = pd.DataFrame({"item_id": ["a", "a", "b", "c"], "rating": [5.0, 4.0, 1.0, np.nan]})
    prior = RatingPrior.fit(train, strength=2.0)
    mean = (5 + 4 + 1) / 3
    assert prior.global_mean == pytest.approx(mean)
    assert prior.items == pytest.approx({"a": (9 + 2 * mean) / 4, "b": (1 + 2 * mean) / 3})
    np.testing.assert_allclose(prior.of(["a", "c", "zzz"]), [(9 + 2 * mean) / 4, mean, mean])  # unrated: the mean
    assert RatingPrior.fit(train.assign(rating=np.nan)) is None


def test_feature_store_saves_the_prior_and_loads_stores_without_it(small_synthetic, tmp_path):
    from features import SplitConfig, split_interactions

    split = split_interactions(small_synthetic.interactions, SplitConfig())
    store = fit_feature_store(small_synthetic, split.train)
    assert store.rating_prior is not None and store.rating_prior.strength == 10.0
    store.save(tmp_path / "new")
    assert FeatureStore.load(tmp_path / "new").rating_prior == store.rating_prior
    meta = json.loads((tmp_path / "new" / "features.json").read_text())
    del meta["rating_prior"]
    (tmp_path / "new" / "features.json").write_text(json.dumps(meta))
    assert FeatureStore.load(tmp_path / "new").rating_prior is None
