"""Validation-time choices (evaluation.selection, ranking.calibration) against hand-computed values."""
import numpy as np
import pytest

from evaluation.selection import (
    ValidationCandidates,
    blend_grid,
    list_metrics,
    select_blend,
    select_fusion,
)
from ranking import BlendWeights
from ranking.calibration import PlattCalibration, fit_platt, sigmoid


def _cands(**kw) -> ValidationCandidates:
    """Two users, three candidate slots (the second user's last slot padded)."""
    base = dict(
        user_ids=np.array(["u1", "u2"], dtype=object),
        valid=np.array([[True, True, True], [True, True, False]]),
        logit=np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 9.0]]),
        affinity=np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]]),
        quality=np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5]]),
        engaged=np.array([[True, False, False], [False, True, False]]),
        rating=np.array([[5.0, np.nan, np.nan], [np.nan, 2.0, np.nan]]),
        num_relevant=np.array([2, 1]),
    )
    base.update(kw)
    return ValidationCandidates(**base)


def test_list_metrics_by_hand():
    c = _cands(flags={"clickbait": np.array([[False, True, True], [True, False, True]])})
    # Order by logit: u1 → slots 2, 1, 0 (hit at rank 3); u2 → 0, 1 (the padded slot never ranks): hit at rank 2.
    m = list_metrics(c, c.logit, k=3)
    dcg1, idcg1 = 1 / np.log2(4), 1 + 1 / np.log2(3)  # u1 has 2 validation engagements, one retrieved
    dcg2, idcg2 = 1 / np.log2(3), 1.0
    assert m["ndcg@3"] == pytest.approx((dcg1 / idcg1 + dcg2 / idcg2) / 2)
    assert m["map@3"] == pytest.approx(((1 / 3) / 2 + (1 / 2) / 1) / 2)
    assert m["mean_hit_rating@3"] == pytest.approx((5.0 + 2.0) / 2)
    assert m["clickbait_share@3"] == pytest.approx(3 / 5)  # u1: 2 of 3 shown, u2: 1 of 2 shown
    assert list_metrics(c, -c.logit, k=1)["ndcg@1"] == pytest.approx(1.0)  # reversed: both users hit first


def test_select_fusion_picks_the_best_beta_and_records_ranker_alone():
    c = _cands()
    beta, table = select_fusion(c, [5.0, 0.0, 1.0])
    # β = 0: the ranker alone ranks both hits last-ish; a large β follows the affinity, which puts both first.
    assert list(table["retrieval_weight"]) == [0.0, 1.0, 5.0]
    assert beta == 5.0 and table["chosen"].sum() == 1 and bool(table.loc[table["retrieval_weight"] == 5.0, "chosen"].iloc[0])
    assert table.loc[0, "ndcg@10"] == pytest.approx(list_metrics(c, c.logit)["ndcg@10"])
    np.testing.assert_allclose(c.fused_logit(5.0), c.logit + 5.0 * (c.affinity - 1.0))


def test_select_blend_rule_best_ndcg_among_blends_at_least_as_good_in_rating():
    # u1: engagement prefers slot 0 (rated 1), quality slot 1 (rated 5); u2 likewise.
    c = _cands(engaged=np.array([[True, True, False], [True, True, False]]),
               rating=np.array([[1.0, 5.0, np.nan], [1.0, 5.0, np.nan]]), num_relevant=np.array([2, 2]))
    e = np.array([[0.9, 0.1, 0.05], [0.9, 0.1, 0.0]])
    q = np.array([[0.1, 0.9, 0.5], [0.1, 0.9, 0.0]])
    c.quality = q
    grid = [BlendWeights(1.0, 0.0, "multiplicative"), BlendWeights(0.5, 0.5, "multiplicative"),
            BlendWeights(0.0, 1.0, "multiplicative")]
    chosen, table = select_blend(c, e, grid, k=1)
    # ndcg@1 is 1 for every blend (a hit either way); the engagement-only top-1 hits are rated 1, quality's 5:
    # all eligible, ties go to the first grid entry.
    assert chosen == grid[0] and list(table["eligible"]) == [True, True, True]
    # Quality-only has the best ndcg@1 (both users' top-1 are hits) but its hits are rated 2 and 3, below
    # engagement-only's 4: not eligible; the 50/50 blend hits nothing (no rating): not eligible either.
    c2 = _cands(valid=np.ones((2, 3), bool), engaged=np.array([[True, False, True], [False, False, True]]),
                rating=np.array([[4.0, np.nan, 2.0], [np.nan, np.nan, 3.0]]), num_relevant=np.array([2, 1]),
                quality=np.array([[0.1, 0.2, 0.9], [0.1, 0.2, 0.9]]))
    e2 = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    chosen2, table2 = select_blend(c2, e2, grid, k=1)
    np.testing.assert_allclose(table2["ndcg@1"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(table2["mean_hit_rating@1"], [4.0, np.nan, 2.5])
    assert list(table2["eligible"]) == [True, False, False] and chosen2 == grid[0]
    assert len(blend_grid()) == 22 and blend_grid()[0] == BlendWeights(1.0, 0.0, "multiplicative")


def test_fit_platt_recovers_known_parameters_and_keeps_the_order():
    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 2.0, 200_000)
    y = rng.uniform(size=len(z)) < sigmoid(0.5 * z - 1.0)
    cal = fit_platt(z, y)
    assert cal.a == pytest.approx(0.5, abs=0.02) and cal.b == pytest.approx(-1.0, abs=0.05)
    p = cal.apply(np.sort(z))
    assert np.all(np.diff(p) >= 0)  # monotone: the ranking is unchanged
    with pytest.raises(ValueError, match="both labels"):
        fit_platt(z[:10], np.zeros(10))
    with pytest.raises(ValueError, match="a > 0"):
        PlattCalibration(a=0.0)


def test_fit_platt_from_logits_far_below_zero():
    """A retrieval-fused head's logits sit around -40: the identity map says p ≈ 0 everywhere."""
    rng = np.random.default_rng(1)
    z = rng.normal(-40.0, 8.0, 100_000)
    y = rng.uniform(size=len(z)) < sigmoid(0.2 * z + 5.0)
    cal = fit_platt(z, y)
    assert cal.a == pytest.approx(0.2, abs=0.01) and cal.b == pytest.approx(5.0, abs=0.3)
    assert cal.apply(z).mean() == pytest.approx(y.mean(), abs=1e-3)


# -- the new-user scorer's mixture ----------------------------------------------------------------
def _two_taste_histories(n_users: int = 200, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    """Half the users engage with items a0..a9 only, the other half with b0..b9 only, everyone with two of
    p0..p4 (the most popular): a new user's first events say which half they are in, popularity cannot."""
    rng = np.random.default_rng(seed)
    a = [f"a{i}" for i in range(10)]
    b = [f"b{i}" for i in range(10)]
    pop = [f"p{i}" for i in range(5)]  # everyone's
    histories = {}
    for u in range(n_users):
        own = a if u % 2 else b
        items = list(rng.permutation(own)[:8]) + list(rng.permutation(pop)[:2])
        histories[f"u{u:03d}"] = [str(i) for i in rng.permutation(items)]
    return histories, a + b + pop


def test_new_user_mixture_is_chosen_when_the_events_are_informative():
    from evaluation.selection import select_new_user_mixture
    from features.cooccurrence import NewUserConfig
    from ranking import BlendWeights

    histories, items = _two_taste_histories()
    quality = np.full(len(items), 0.5)
    got = select_new_user_mixture(histories, items, quality, BlendWeights(1.0, 1.0, "multiplicative", "identity"),
                                  NewUserConfig(first_events=3))
    assert got["simulated_users"] == 20 and got["fit_users"] == 180
    assert got["weight"] > 0
    assert got["ndcg@10"] > got["fallback_ndcg@10"]
    assert sum(r["chosen"] for r in got["table"]) == 1
    assert {r["weight"] for r in got["table"]} >= {0.0, 1.0}


def test_new_user_mixture_simulates_at_most_max_simulated_users():
    from evaluation.selection import select_new_user_mixture
    from features.cooccurrence import NewUserConfig
    from ranking import BlendWeights

    histories, items = _two_taste_histories(n_users=400)
    got = select_new_user_mixture(histories, items, np.full(len(items), 0.5),
                                  BlendWeights(1.0, 1.0, "multiplicative", "identity"),
                                  NewUserConfig(first_events=3, simulated_share=0.5, max_simulated=25))
    assert got["simulated_users"] == 25 and got["fit_users"] == 375  # not 200: the cap binds
    assert got["weight"] > 0
    with pytest.raises(ValueError, match="--newuser-max-simulated"):
        NewUserConfig(min_simulated=20, max_simulated=10)


def test_new_user_mixture_falls_back_to_popularity_without_enough_users():
    from evaluation.selection import select_new_user_mixture
    from features.cooccurrence import NewUserConfig
    from ranking import BlendWeights

    histories, items = _two_taste_histories(n_users=30)
    got = select_new_user_mixture(histories, items, np.full(len(items), 0.5),
                                  BlendWeights(1.0, 0.0, "additive", "identity"), NewUserConfig(min_simulated=20))
    assert got["weight"] == 0.0 and got["table"] == [] and "skipped" in got


def test_new_user_mixture_ranks_like_a_full_stable_argsort_ties_included(monkeypatch):
    """The top-k of each simulated user's scores (a partition, in blocks of users) is exactly the
    first k of a stable argsort of the whole catalogue, ties by lower column: the table is the same."""
    import evaluation.selection as selection
    from features.cooccurrence import NewUserConfig
    from ranking import BlendWeights

    histories, items = _two_taste_histories(n_users=700, seed=3)
    quality = np.full(len(items), 0.5)  # constant quality, 25 items: many equal scores
    weights = BlendWeights(1.0, 1.0, "multiplicative", "identity")
    config = NewUserConfig(first_events=3, simulated_share=0.45, max_simulated=300)  # > one 256-user block
    got = selection.select_new_user_mixture(histories, items, quality, weights, config)

    def full_argsort(scores, exclude, k):
        scores = np.array(scores, dtype=np.float64, copy=True)
        scores[exclude.nonzero()] = -np.inf
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    monkeypatch.setattr(selection, "top_k_excluding", full_argsort)
    reference = selection.select_new_user_mixture(histories, items, quality, weights, config)
    assert got["simulated_users"] == 300
    assert [r["ndcg@10"] for r in got["table"]] == [r["ndcg@10"] for r in reference["table"]]
    assert (got["weight"], got["decay"]) == (reference["weight"], reference["decay"])
