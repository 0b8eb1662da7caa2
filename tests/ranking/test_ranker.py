"""Behavioural tests of the wide & deep ranker on synthetic data with planted, disagreeing signals."""
import json

import numpy as np
import pandas as pd
import pytest

from core.errors import ArtifactError, ArtifactMismatchError
from features import SplitConfig, SyntheticConfig, fit_feature_store, generate_synthetic, split_interactions
from ranking import (
    NegativeConfig,
    Ranker,
    RankerConfig,
    build_ranker,
    diagnose,
    export_ranker,
    head_metrics,
    predict,
    train_ranker,
    training_rows,
)
from ranking.model import default_crosses, ranker_inputs, user_inputs
from ranking.train import make_examples
from tests.ranking.fakes import fake_user_tower

TINY = RankerConfig(id_dim=8, feature_dim=4, hidden=(32,), head_hidden=8, epochs=3, batch_size=256, progress=False,
                    seed=1)
H = TINY.history_length


@pytest.fixture(scope="module")
def trained():
    ds = generate_synthetic(SyntheticConfig(num_users=300, num_items=150, num_interactions=20_000, seed=1))
    split = split_interactions(ds.interactions, SplitConfig())
    store = fit_feature_store(ds, split.train)
    rows = training_rows(split, store, NegativeConfig())
    model, info = train_ranker(rows, store, TINY)
    return ds, split, store, model, info


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    *_, model, info = trained
    directory = tmp_path_factory.mktemp("export") / "ranking"
    export_ranker(model, directory, info)
    return directory


def test_ranker_trains_on_logged_impressions_as_negatives(trained):
    ds, split, store, model, info = trained
    assert info["examples"] == len(split.train)
    assert 0 < info["engaged"] < info["examples"]
    assert info["rated"] == info["engaged"]  # only engaged rows carry a rating
    assert info["history"]["loss"][-1] < info["history"]["loss"][0]


def test_heads_learn_planted_signals_that_disagree(trained):
    """Clickbait engages but disappoints, niche the opposite: the heads must rank them oppositely."""
    ds, split, store, model, _ = trained
    items = ds.items
    users = np.array(sorted(split.train["user_id"].unique()))[:100]
    by_type = {}
    for item_type in ("regular", "clickbait", "niche"):
        ids = items.index[items["item_type"] == item_type].to_numpy()
        uu, ii = np.repeat(users, len(ids)), np.tile(ids, len(users))
        e, q = predict(model, make_examples(pd.DataFrame({"user_id": uu, "item_id": ii, "timestamp": 0,
                                                          "rating": np.nan, "engaged": 1}), store, H).inputs)
        by_type[item_type] = (e.mean(), q.mean())
    assert by_type["clickbait"][0] > by_type["regular"][0] > by_type["niche"][0]
    assert by_type["niche"][1] > by_type["regular"][1] > by_type["clickbait"][1]
    # The quality head tracks each item's planted quality, not its engagement.
    ids = items.index.to_numpy()
    e, q = predict(model, make_examples(pd.DataFrame({"user_id": users[0], "item_id": ids, "timestamp": 0,
                                                      "rating": np.nan, "engaged": 1}), store, H).inputs)
    truth = items["true_quality"].to_numpy()
    assert np.corrcoef(q, truth)[0, 1] > 0.7
    assert np.corrcoef(q, truth)[0, 1] > np.corrcoef(e, truth)[0, 1] + 0.5


def test_heads_generalise_to_held_out_interactions(trained):
    ds, split, store, model, _ = trained
    m = diagnose(model, split.test, store)
    assert m["engagement_auc"] > 0.7
    base = head_metrics(np.zeros(len(split.test)), split.test["engaged"], np.full(len(split.test), 0.5),
                        split.test["rating"])  # quality 0.5 = rating 3, the scale's middle
    assert m["quality_rmse"] < 0.8 * base["quality_rmse"]
    assert m["quality_mae"] < m["quality_rmse"]


def test_quality_label_is_masked_where_no_rating_was_observed(trained):
    _, split, store, _, _ = trained
    ex = make_examples(split.train, store, H)
    observed = split.train["rating"].notna().to_numpy() & (split.train["engaged"].to_numpy() == 1)
    np.testing.assert_array_equal(ex.quality_mask, observed.astype(np.float32))
    np.testing.assert_allclose(ex.quality[observed], (split.train["rating"].to_numpy()[observed] - 1) / 4, atol=1e-6)
    assert (ex.quality[~observed] == 0).all()


def test_export_then_load_gives_identical_scores(trained, exported):
    ds, split, store, model, info = trained
    ranker = Ranker.load(exported)
    rows = split.test.iloc[:500]
    users, items = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    e_mem, q_mem = predict(model, ranker_inputs(user_inputs(store, users, H), store.item_features(items)))
    e_raw, q_raw = ranker.score(ranker.user_features(store, users), store.item_features(items))
    np.testing.assert_array_equal(e_raw, e_mem)
    np.testing.assert_array_equal(q_raw, q_mem)
    ex = make_examples(rows, store, H)
    np.testing.assert_array_equal(ranker.score_inputs(ex.inputs)[1], predict(model, ex.inputs)[1])
    # Another batch size changes how the kernels block the sums: equal to float32 rounding only.
    e_small, _ = ranker.score(ranker.user_features(store, users), store.item_features(items), batch_size=64)
    np.testing.assert_allclose(e_small, e_mem, rtol=1e-6, atol=1e-7)
    assert e_raw.dtype == np.float32 and e_raw.shape == (500,)
    meta = json.loads((exported / "ranker.json").read_text())
    assert meta["config"]["epochs"] == TINY.epochs and set(meta["heads"]) == {"engagement", "quality"}
    with pytest.raises(ArtifactError, match="never overwritten"):
        export_ranker(model, exported)


def test_retrieval_fusion_adds_the_retrievers_score_to_the_engagement_logit(trained, tmp_path):
    """Served engagement = σ(ranker logit + β·(s - 1)), s = user tower · item embedding on the tower's
    own (shorter) history; training (and a ranker without a retriever) sees the ranker alone."""
    import dataclasses

    from core.tf_env import tf

    _, split, store, _, _ = trained
    beta = 4.0
    config = dataclasses.replace(TINY, dropout=0.0, retrieval_weight=beta)
    item_ids = np.asarray(store.catalogue)
    emb = np.random.default_rng(0).normal(size=(len(item_ids), 2)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    model = build_ranker(store, config, (fake_user_tower(), item_ids, emb))
    assert build_ranker(store, config).affinity is None  # no retriever given: the ranker alone
    ex = make_examples(split.test.iloc[:300], store, config.history_length)
    batch = {k: tf.constant(v.astype(str)) if v.dtype == object else tf.constant(v) for k, v in ex.inputs.items()}
    fused = model(batch, training=False)["engagement"].numpy().ravel().astype(np.float64)
    plain = model(batch, training=True)["engagement"].numpy().ravel().astype(np.float64)  # no dropout: deterministic
    n = np.array([min(len([t for t in h.split("|") if t]), 3) for h in ex.inputs["u__history"]], dtype=np.float64)
    assert n.max() == 3 and (np.array([len(h.split("|")) for h in ex.inputs["u__history"]]) > 3).any()
    u = np.stack([n, np.ones_like(n)], axis=1) / np.sqrt(n ** 2 + 1)[:, None]
    rows = {item: r for r, item in enumerate(item_ids)}
    s = (u * emb[[rows[i] for i in ex.inputs["i__item_id"]]]).sum(axis=1)
    want = 1 / (1 + np.exp(-(np.log(plain) - np.log1p(-plain) + beta * (s - 1))))
    np.testing.assert_allclose(fused, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(fused, plain)
    # The exported SavedModel serves the fused head too.
    export_ranker(model, tmp_path / "ranking")
    e, _ = Ranker.load(tmp_path / "ranking").score_inputs(ex.inputs)
    np.testing.assert_allclose(e, predict(model, ex.inputs)[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(e, fused, rtol=1e-4, atol=1e-6)


def test_exported_ranker_scores_unknown_users_and_items(trained, exported):
    _, _, store, model, _ = trained
    ranker = Ranker.load(exported)
    e, q = ranker.score(ranker.user_features(store, ["nobody", "u1"]), store.item_features(["i1", "no-such-item"]))
    assert np.isfinite(e).all() and np.isfinite(q).all()
    assert ((0 <= e) & (e <= 1)).all() and ((0 <= q) & (q <= 1)).all()
    assert ranker.score(ranker.user_features(store, []), store.item_features([]))[0].shape == (0,)
    with pytest.raises(ArtifactMismatchError, match="history"):
        ranker.score(store.user_features(["u1"]), store.item_features(["i1"]))  # the history is required


def test_ranker_load_reports_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="ranker.json"):
        Ranker.load(tmp_path / "nothing")


def test_ranker_config_rejects_bad_values(small_synthetic):
    with pytest.raises(ValueError, match="--crosses"):
        RankerConfig(crosses=("occupation",))
    with pytest.raises(ValueError, match="--dropout"):
        RankerConfig(dropout=1.5)
    with pytest.raises(ValueError, match="both 0"):
        RankerConfig(engagement_weight=0, quality_weight=0)
    store = fit_feature_store(small_synthetic, small_synthetic.interactions)
    with pytest.raises(ValueError, match="'occupation' is not a user"):
        build_ranker(store, RankerConfig(crosses=("occupation*category",)))
    assert "segment*item_type" in default_crosses(store.spec) and "user_id*category" in default_crosses(store.spec)


def test_training_refuses_rows_with_a_single_engagement_label(small_synthetic):
    store = fit_feature_store(small_synthetic, small_synthetic.interactions)
    only_positive = small_synthetic.interactions.loc[small_synthetic.interactions["engaged"] == 1]
    with pytest.raises(ValueError, match="negative sampling"):
        train_ranker(only_positive, store, TINY)
