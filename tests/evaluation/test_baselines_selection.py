"""Baseline hyper-parameters chosen on the validation carve: recency EASE, grid extension,
item-kNN selection, the bias rating baseline, and blindness to test."""
import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest

from evaluation import (
    BiasConfig,
    BiasRecommender,
    EASEConfig,
    EASERecencyConfig,
    EASERecencyRecommender,
    EASERecommender,
    ItemKNNConfig,
    ItemKNNRecommender,
    build_eval_data,
    evaluate_rankings,
    fit_biases,
    grid_search,
    rank_users,
    recency_history,
    select_ease,
    select_ease_recency,
    select_item_knn,
)
from evaluation.baselines import fit_bias_baseline, select_bias_reg, select_bias_shrinkage
from features import Dataset, Split, SplitConfig, fit_feature_store, split_interactions


@pytest.fixture(scope="module")
def data(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    return build_eval_data(small_synthetic, split, fit_feature_store(small_synthetic, split.train))


def _eval_data(rows: list[tuple], validation: set[int] = frozenset(), test: set[int] = frozenset()):
    """EvalData from (user, item, timestamp[, rating[, engaged]]) rows; `validation`/`test`
    are row positions, the rest is fit."""
    df = pd.DataFrame([(*r, *(None,) * (5 - len(r))) for r in rows],
                      columns=["user_id", "item_id", "timestamp", "rating", "engaged"])
    df["rating"] = df["rating"].astype(float)
    df["engaged"] = df["engaged"].fillna(1).astype("int8")
    ds = Dataset("planted", df, None, None)
    inter = ds.interactions.reset_index(drop=True)
    in_test = inter.index.isin(list(test))
    split = Split(train=inter.loc[~in_test], validation=inter.loc[list(validation)], test=inter.loc[in_test],
                  config=SplitConfig())
    return build_eval_data(ds, split, fit_feature_store(ds, split.train))


# -- recency-weighted EASE -----------------------------------------------------------------
def test_ease_recency_with_decay_one_equals_ease_exactly(data):
    ease = EASERecommender(EASEConfig(l2=37.0, tune=False))
    rec = EASERecencyRecommender(EASERecencyConfig(l2=37.0, decay=1.0, tune=False))
    ease.fit(data)
    rec.fit(data)
    users = data.test_users
    np.testing.assert_array_equal(rec.score(users), ease.score(users))
    np.testing.assert_array_equal(rank_users(rec, users, 50), rank_users(ease, users, 50))
    # and a decay below 1 does change the rankings (the weighting is not a no-op)
    low = EASERecencyRecommender(EASERecencyConfig(l2=37.0, decay=0.3, tune=False))
    low.fit(data)
    assert not np.array_equal(rank_users(low, users, 50), rank_users(ease, users, 50))


def test_recency_history_weights_by_position_from_the_end_hand_computed():
    rows = [("a", "x", 1), ("a", "y", 3), ("a", "z", 2), ("a", "x", 4),   # x re-engaged last: x, y, z
            ("a", "w", 9, None, 0),                                         # not engaged: no weight, no position
            ("b", "p", 5), ("b", "q", 5), ("b", "r", 1),                  # p, q tie at t=5: source order, q last
            ("a", "y", 20), ("b", "z", 30)]                                 # test rows: never read
    data = _eval_data(rows, test={8, 9})
    d = 0.5
    h = recency_history(data, d).toarray()
    col = {i: j for j, i in enumerate(data.item_ids)}
    row = {u: r for r, u in enumerate(data.user_ids)}
    want = np.zeros_like(h)
    for u, item, w in [("a", "x", 1), ("a", "y", d), ("a", "z", d ** 2),
                       ("b", "q", 1), ("b", "p", d), ("b", "r", d ** 2)]:
        want[row[u], col[item]] = w
    np.testing.assert_array_equal(h, want)
    # scores are that row times EASE's B
    rec = EASERecencyRecommender(EASERecencyConfig(l2=2.0, decay=d, tune=False))
    rec.fit(data)
    np.testing.assert_allclose(rec.score(np.array([row["a"]])), want[[row["a"]]] @ rec.weights, rtol=1e-12)
    with pytest.raises(ValueError, match="decay"):
        recency_history(data, 0.0)


def test_ease_recency_selection_fits_on_fit_and_refits_on_train(data):
    model = EASERecencyRecommender(EASERecencyConfig(lambda_grid=(10.0, 100.0, 1000.0), decay_grid=(1.0, 0.5),
                                                     max_extensions=0))
    model.fit(data)
    sel = model.selection
    assert (model.l2, model.decay) == (sel.chosen["l2"], sel.chosen["decay"])
    assert [(r["l2"], r["decay"]) for r in sel.table] == [(10.0, 1.0), (10.0, 0.5), (100.0, 1.0), (100.0, 0.5),
                                                         (1000.0, 1.0), (1000.0, 0.5)]
    best = max(sel.table, key=lambda r: r["ndcg@10"])
    assert (best["l2"], best["decay"]) == (model.l2, model.decay)
    # decay 1 rows are exactly EASE's validation numbers at the same λ
    ease = select_ease(data, (10.0, 100.0, 1000.0), max_extensions=0)
    assert [r["ndcg@10"] for r in sel.table if r["decay"] == 1.0] == [r["ndcg@10"] for r in ease.table]


# -- grid extension ------------------------------------------------------------------------
def test_grid_search_extends_past_the_upper_edge_until_interior(caplog):
    # validation optimum at λ = 10^4.2: the grid (10, 100, 1000) tops out at its upper edge
    score = lambda p: -(np.log10(p["l2"]) - 4.2) ** 2  # noqa: E731
    with caplog.at_level(logging.INFO, logger="evaluation.baselines"):
        sel = grid_search("ease", {"l2": (10.0, 100.0, 1000.0)}, score, "ndcg@10", extend="l2", max_extensions=4)
    assert [r["l2"] for r in sel.table] == [10.0, 100.0, 1000.0, 10000.0, 100000.0]
    assert sel.chosen == {"l2": 10000.0} and sel.edges == []
    assert len(sel.extensions) == 2 and "upper edge" in sel.extensions[0]
    assert "extending the grid with 10000" in caplog.text


def test_grid_search_extends_down_and_stops_at_the_cap(caplog):
    score = lambda p: -abs(np.log10(p["l2"]) + 3)  # noqa: E731  optimum 10^-3, far below the grid
    with caplog.at_level(logging.INFO, logger="evaluation.baselines"):
        sel = grid_search("ease", {"l2": (1.0, 3.0, 9.0)}, score, "ndcg@10", extend="l2", max_extensions=2)
    assert [r["l2"] for r in sel.table] == pytest.approx([1.0, 3.0, 9.0, 1 / 3, 1 / 9])
    assert sel.chosen["l2"] == pytest.approx(1 / 9) and sel.edges == ["l2"]
    assert len(sel.extensions) == 2 and all("lower edge" in m for m in sel.extensions)
    assert "still on the lower edge" in caplog.text
    # without extensions the edge is reported, not silently accepted
    assert grid_search("ease", {"l2": (1.0, 3.0)}, score, "x", extend="l2").edges == ["l2"]


def test_grid_search_lower_is_better_and_ties_go_to_the_earlier_point():
    sel = grid_search("bias", {"reg": (1.0, 2.0, 3.0)}, lambda p: {1.0: 0.5, 2.0: 0.4, 3.0: 0.4}[p["reg"]], "rmse",
                      lower_is_better=True)
    assert sel.chosen == {"reg": 2.0}


def test_ease_selection_extends_its_lambda_grid_when_the_best_is_on_an_edge(data):
    # On this data validation NDCG@10 peaks near λ = 1000 (0.1614 at 100, 0.1618 at 1000, 0.1548 at
    # 1e4, 0.1544 at 1e5): a grid of too-large penalties must walk down to it and stop inside.
    sel = select_ease(data, grid=(1e4, 1e5), max_extensions=4)
    assert [r["l2"] for r in sel.table] == pytest.approx([1e4, 1e5, 1e3, 1e2])
    assert sel.chosen == {"l2": pytest.approx(1e3)} and sel.edges == []
    assert len(sel.extensions) == 2 and all("lower edge" in m for m in sel.extensions)
    model = EASERecommender(EASEConfig(lambda_grid=(1e4, 1e5)))
    model.fit(data)
    assert model.l2 == sel.chosen["l2"] and model.selection.extensions == sel.extensions
    # with the cap at 0 the edge choice stands, and is flagged
    assert select_ease(data, grid=(1e4, 1e5), max_extensions=0).edges == ["l2"]


# -- item kNN ------------------------------------------------------------------------------
def _planted_knn_rows(groups: int = 4) -> tuple[list[tuple], set[int]]:
    """Per group g, anchor A co-occurs with: partner P (5 users; P also alone in 25 users, so
    A is P's only neighbour), rare R (1 user), D (3 users; D's closest item is F), E (8
    users; E's closest is G). Validation users hold A in fit and P in validation.

    Cosines with A (x ‖A‖): R 1, D 1.13, E 1.51, P 0.91; counts: E 8 > P 5 > D 3 > R 1.
    shrink 0 ranks by cosine (P 4th with 3 neighbours, 2nd behind R with 1); shrink 20
    ranks by roughly the count (E beats P when E's neighbourhood reaches A, i.e. with 3
    neighbours, not with 1). So the unique best is (neighbors 1, shrink 20): P first.
    """
    rows, val, t = [], set(), 0

    def user(name, items):
        nonlocal t
        for it in items:
            rows.append((name, it, t))
            t += 1

    for g in range(groups):
        a, p, r, d, f, e, gg = (f"{c}{g}" for c in "APRDFEG")
        for i in range(5):
            user(f"ap{g}_{i}", [a, p])
        for i in range(25):
            user(f"p{g}_{i}", [p])
        user(f"ar{g}", [a, r])
        for i in range(3):
            user(f"ad{g}_{i}", [a, d])
        for i in range(4):
            user(f"df{g}_{i}", [d, f])
        for i in range(8):
            user(f"ae{g}_{i}", [a, e])
        for i in range(20):
            user(f"eg{g}_{i}", [e, gg])
        for i in range(3):
            user(f"v{g}_{i}", [a])
            user(f"v{g}_{i}", [p])
            val.add(len(rows) - 1)
    return rows, val


def test_item_knn_selection_picks_the_planted_best():
    rows, val = _planted_knn_rows()
    data = _eval_data(rows + [("v0_0", "R0", 10_000)], validation=val, test={len(rows)})
    sel = select_item_knn(data, neighbors_grid=(1, 3), shrink_grid=(0.0, 20.0), max_extensions=0)
    assert sel.chosen == {"shrink": 20.0, "neighbors": 1}
    scores = {(r["shrink"], r["neighbors"]): r["ndcg@10"] for r in sel.table}
    assert scores[(20.0, 1.0)] == pytest.approx(1.0)                 # P ranked first for every validation user
    assert scores[(20.0, 1.0)] > max(v for k, v in scores.items() if k != (20.0, 1.0))
    model = ItemKNNRecommender(ItemKNNConfig(neighbors_grid=(1, 3), shrink_grid=(0.0, 20.0)))
    model.fit(data)
    assert (model.neighbors, model.shrink) == (1, 20.0)
    assert model.selection.extensions == [] and model.selection.edges == ["shrink", "neighbors"]  # 1 is the bound


def test_grid_search_extends_integer_axes_by_integers_within_bounds():
    sel = grid_search("itemknn", {"neighbors": (10, 25)}, lambda p: p["neighbors"], "ndcg@10", extend="neighbors",
                      max_extensions=5, bounds=(1, 100), integer=True)
    assert [r["neighbors"] for r in sel.table] == [10, 25, 62, 100]  # 25²/10 = 62.5 → 62; 155 → clipped to 100
    assert sel.chosen == {"neighbors": 100} and len(sel.extensions) == 2


# -- bias rating baseline ------------------------------------------------------------------
def test_fit_biases_hand_computed():
    # one user rates x 5 and y 3: μ = 4; minimising (1 - b_u - b_x)² + (-1 - b_u - b_y)² + b_u² + b_x² + b_y²
    # gives 3b_u + b_x + b_y = 0, b_u + 2b_x = 1, b_u + 2b_y = -1, so b_u = 0, b_x = 0.5, b_y = -0.5.
    df = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["x", "y"], "rating": [5.0, 3.0]})
    b = fit_biases(df, reg=1.0)
    assert b.mu == 4.0
    assert b.user_bias["u"] == pytest.approx(0.0, abs=1e-12)
    assert b.item_bias.to_dict() == pytest.approx({"x": 0.5, "y": -0.5})
    np.testing.assert_allclose(b.predict(["u", "u", "new"], ["x", "new", "y"]), [4.5, 4.0, 3.5])
    with pytest.raises(ValueError, match="reg"):
        fit_biases(df, reg=0.0)


@pytest.mark.parametrize("shape,item_reg", [((7, 4), None), ((4, 9), None), ((7, 4), 40.0), ((4, 9), 0.1)])
def test_fit_biases_match_a_dense_least_squares_solve(shape, item_reg):
    rng = np.random.default_rng(sum(shape))
    n, (nu, ni), reg = 40, shape, 2.5
    df = pd.DataFrame({"user_id": rng.integers(0, nu, n), "item_id": rng.integers(0, ni, n),
                       "rating": rng.integers(1, 6, n).astype(float)})
    b = fit_biases(df, reg, item_reg)
    users, items = np.unique(df["user_id"]), np.unique(df["item_id"])
    a = np.zeros((n, len(users) + len(items)))
    a[np.arange(n), np.searchsorted(users, df["user_id"])] = 1
    a[np.arange(n), len(users) + np.searchsorted(items, df["item_id"])] = 1
    # ridge as least squares on the augmented system [A; √reg·I] b ≈ [r - μ; 0] (items: √item_reg)
    pen = np.concatenate([np.full(len(users), reg), np.full(len(items), reg if item_reg is None else item_reg)])
    x = np.linalg.lstsq(np.vstack([a, np.diag(np.sqrt(pen))]),
                        np.concatenate([df["rating"] - df["rating"].mean(), np.zeros(a.shape[1])]), rcond=None)[0]
    np.testing.assert_allclose(np.concatenate([b.user_bias[users], b.item_bias[items]]), x, atol=1e-10)


def _rating_split(user_effect: float, seed: int = 0, nu: int = 300, ni: int = 60, item_effect: float = 0.8) -> Split:
    """Ratings = item_effect · item offset + user_effect · user offset + noise; rows 4000-5000 are validation."""
    rng = np.random.default_rng(seed)
    n = 6000
    u, i = rng.integers(0, nu, n), rng.integers(0, ni, n)
    r = 3.0 + item_effect * rng.normal(0, 1, ni)[i] + user_effect * rng.normal(0, 1, nu)[u] + rng.normal(0, 1.0, n)
    df = pd.DataFrame({"user_id": u.astype(str), "item_id": i.astype(str), "timestamp": np.arange(n),
                       "rating": np.clip(r, 1, 5), "engaged": 1})
    return Split(train=df.iloc[:5000], validation=df.iloc[4000:5000], test=df.iloc[5000:], config=SplitConfig())


def test_select_bias_shrinkage_separates_user_and_item_penalties_only_beyond_noise():
    # No user effect: the users' biases only fit noise → a much larger user penalty, adopted.
    regs, sel, gain = select_bias_shrinkage(_rating_split(0.0), reg=1.0, grid=(0.3, 1.0, 3.0, 10.0, 30.0, 100.0))
    assert gain["adopted"] and gain["mse_gain"] > gain["mse_gain_se"] > 0
    assert regs == (sel.chosen["user_reg"], sel.chosen["item_reg"]) and regs[0] >= 30.0 > regs[1]
    # Users and items alike (same effect size and counts): the shared reg chosen on validation is as good
    # as any pair up to noise → it stays.
    split = _rating_split(0.4, nu=400, ni=400, item_effect=0.4)
    shared = select_bias_reg(split).chosen["reg"]
    regs, sel, gain = select_bias_shrinkage(split, reg=shared, grid=(0.3, 1.0, 3.0, 10.0, 30.0, 100.0))
    assert not gain["adopted"] and gain["mse_gain"] <= gain["mse_gain_se"] and regs == (shared, shared)
    assert {"user_reg", "item_reg", "rmse"} <= set(sel.table[0])
    with pytest.raises(ValueError, match="validation carve"):
        split = _rating_split(0.0)
        select_bias_shrinkage(Split(split.train, split.validation.iloc[:0], split.test, split.config), reg=1.0)


def test_bias_recommender_reports_test_errors_and_selects_reg_on_validation(data):
    model = BiasRecommender(BiasConfig(reg_grid=(1.0, 10.0, 100.0)))
    model.fit(data)
    assert model.selection.metric == "rmse" and model.selection.chosen["reg"] in {r["reg"] for r in
                                                                                 model.selection.table}
    d = model.diagnostics
    test = data.split.test
    rated = test.loc[(test["engaged"] == 1) & test["rating"].notna()]
    err = model.biases.predict(rated["user_id"], rated["item_id"]) - rated["rating"].to_numpy()
    assert d["bias_baseline_rated"] == len(rated) > 0
    assert d["bias_baseline_rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert d["bias_baseline_mae"] == pytest.approx(np.mean(np.abs(err)))
    # better than predicting the global mean
    assert d["bias_baseline_rmse"] < np.sqrt(np.mean((rated["rating"] - model.biases.mu) ** 2))


# -- selection never reads test ------------------------------------------------------------
def _poisoned(data):
    """The same split with every test label scrambled: other items, flipped engagement, other ratings."""
    test = data.split.test.copy()
    rng = np.random.default_rng(0)
    test["item_id"] = rng.permutation(np.asarray(data.item_ids))[rng.integers(0, data.num_items, len(test))]
    test["engaged"] = (1 - test["engaged"]).astype("int8")
    test["rating"] = np.where(test["engaged"] == 1, 6.0 - test["rating"].fillna(3.0), np.nan)
    test.loc[test.index[::2], "engaged"] = 1
    test.loc[test.index[::2], "rating"] = 1.0
    split = dataclasses.replace(data.split, test=test)
    return build_eval_data(data.dataset, split, data.features)


def test_every_selection_is_blind_to_test_labels(data):
    poisoned = _poisoned(data)
    sels = []
    for d in (data, poisoned):
        out = {"ease": select_ease(d, (10.0, 100.0, 1000.0)),
               "ease_recency": select_ease_recency(d, (10.0, 100.0), (1.0, 0.7, 0.3)),
               "itemknn": select_item_knn(d, (10, 50), (0.0, 50.0)),
               "bias": fit_bias_baseline(d.split, BiasConfig(reg_grid=(1.0, 10.0, 100.0)))[1]}
        sels.append({k: v.as_dict() for k, v in out.items()})
    assert sels[0] == sels[1]
    # the poisoning is real: the same model scores differently on the two test sets
    model = EASERecommender(EASEConfig(l2=100.0, tune=False))
    model.fit(data)
    ranked = rank_users(model, data.test_users, 10)
    poisoned_model = EASERecommender(EASEConfig(l2=100.0, tune=False))
    poisoned_model.fit(poisoned)
    assert evaluate_rankings(ranked, data, ks=(10,))["ndcg@10"] != pytest.approx(
        evaluate_rankings(rank_users(poisoned_model, poisoned.test_users, 10), poisoned, ks=(10,))["ndcg@10"])
    b = BiasRecommender(BiasConfig(reg_grid=(1.0, 10.0)))
    b.fit(data)
    pb = BiasRecommender(BiasConfig(reg_grid=(1.0, 10.0)))
    pb.fit(poisoned)
    assert b.selection.as_dict() == pb.selection.as_dict()
    assert b.diagnostics["bias_baseline_rmse"] != pytest.approx(pb.diagnostics["bias_baseline_rmse"])


def test_fit_biases_by_conjugate_gradients_above_dense_max_match_the_dense_solve():
    # Above dense_max users and items the system is solved by CG on the sparse normal equations
    # (the dense Schur complement would be min(U, I)^2 floats: 20 GB at 50k items).
    rng = np.random.default_rng(5)
    n = 3000
    df = pd.DataFrame({"user_id": [f"u{k}" for k in rng.integers(0, 300, n)],
                       "item_id": [f"i{k}" for k in rng.integers(0, 200, n)],
                       "rating": rng.integers(1, 6, n).astype(float)})
    dense, iterative = fit_biases(df, 3.0), fit_biases(df, 3.0, dense_max=50)
    assert dense.mu == iterative.mu
    np.testing.assert_allclose(iterative.user_bias.to_numpy(), dense.user_bias.to_numpy(), atol=1e-8)
    np.testing.assert_allclose(iterative.item_bias.to_numpy(), dense.item_bias.to_numpy(), atol=1e-8)
    assert list(iterative.user_bias.index) == list(dense.user_bias.index)
