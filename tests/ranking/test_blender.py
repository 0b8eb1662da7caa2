import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequestError
from ranking.blender import BlendWeights, blend_scores, rank_by_blend

E = np.array([0.9, 0.5, 0.2, 0.0, 1.0])
Q = np.array([0.1, 0.5, 0.8, 0.4, 0.0])


def test_blend_scores_additive_matches_hand_computed_values():
    w = BlendWeights(engagement=2.0, quality=0.5)
    # 2·e + 0.5·q
    expected = [1.85, 1.25, 0.8, 0.2, 2.0]
    np.testing.assert_allclose(blend_scores(E, Q, w), expected, rtol=0, atol=1e-12)


def test_blend_scores_additive_log_and_logit_match_hand_computed_values():
    e, q = np.array([0.5, 0.8]), np.array([0.25, 0.5])
    log_w = BlendWeights(1.0, 2.0, transform="log")
    np.testing.assert_allclose(blend_scores(e, q, log_w),
                               [math.log(0.5) + 2 * math.log(0.25), math.log(0.8) + 2 * math.log(0.5)], atol=1e-12)
    logit_w = BlendWeights(1.0, 1.0, transform="logit")
    np.testing.assert_allclose(blend_scores(e, q, logit_w), [0.0 + math.log(1 / 3), math.log(4) + 0.0], atol=1e-12)


def test_blend_scores_log_transform_stays_finite_at_zero_and_one():
    s = blend_scores(np.array([0.0, 1.0]), np.array([1.0, 0.0]), BlendWeights(1.0, 1.0, transform="logit"))
    assert np.isfinite(s).all()


def test_blend_scores_multiplicative_matches_hand_computed_values():
    w = BlendWeights(engagement=1.0, quality=2.0, mode="multiplicative")
    # e · q²
    expected = [0.9 * 0.01, 0.5 * 0.25, 0.2 * 0.64, 0.0, 0.0]
    np.testing.assert_allclose(blend_scores(E, Q, w), expected, rtol=0, atol=1e-12)
    # A zero exponent ignores its head, even where that head is 0 (0^0 = 1).
    only_e = BlendWeights(engagement=0.5, quality=0.0, mode="multiplicative")
    np.testing.assert_allclose(blend_scores(E, Q, only_e), np.sqrt(E), atol=1e-12)


def test_rank_by_blend_orders_best_first_and_breaks_ties_by_position():
    order, scores = rank_by_blend(np.array([0.2, 0.6, 0.2, 0.9]), np.array([0.5, 0.1, 0.5, 0.0]), BlendWeights(1, 1))
    np.testing.assert_allclose(scores, [0.7, 0.7, 0.7, 0.9])
    assert list(order) == [3, 0, 1, 2]


def test_blend_weights_trade_engagement_against_quality():
    w_engagement = BlendWeights(engagement=1.0, quality=0.0)
    w_quality = BlendWeights(engagement=0.0, quality=1.0)
    assert rank_by_blend(E, Q, w_engagement)[0][0] == 4  # highest engagement
    assert rank_by_blend(E, Q, w_quality)[0][0] == 2     # highest quality


@settings(max_examples=200, deadline=None)
@given(
    e=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    delta=st.floats(1e-3, 0.5),
    we=st.floats(1e-3, 10), wq=st.floats(0, 10),
    mode=st.sampled_from(["additive", "multiplicative"]),
    transform=st.sampled_from(["identity", "log", "logit"]),
)
def test_blend_scores_increase_with_each_head(e, delta, we, wq, mode, transform):
    if mode == "multiplicative":
        transform = "identity"
    w = BlendWeights(we, wq, mode=mode, transform=transform)
    e = np.array(e)
    q = np.full_like(e, 0.5)
    higher = np.minimum(e + delta, 1.0)
    if transform != "identity":  # clipped to [EPS, 1 - EPS]: strict only inside
        e, higher = np.clip(e, 0.01, 0.9), np.clip(higher, 0.01, 0.9)
    base, up = blend_scores(e, q, w), blend_scores(higher, q, w)
    assert (up >= base).all()
    # Strict where the step is above float64 resolution (1 - 1e-16 + delta rounds to 1.0).
    moved = higher > e + 1e-6
    assert (up[moved] > base[moved]).all()
    # Symmetric for quality when it has weight.
    if wq > 1e-3:
        q_up = np.full_like(e, 0.6)
        e_pos = np.maximum(e, 0.05)
        assert (blend_scores(e_pos, q_up, w) > blend_scores(e_pos, q, w)).all()


@pytest.mark.parametrize("kwargs", [
    {"engagement": -0.1}, {"quality": -1.0}, {"engagement": float("nan")}, {"quality": float("inf")},
    {"engagement": 0.0, "quality": 0.0}, {"engagement": "1"}, {"engagement": True},
    {"mode": "harmonic"}, {"transform": "sqrt"}, {"mode": "multiplicative", "transform": "log"},
])
def test_blend_weights_rejects_invalid_weights(kwargs):
    with pytest.raises(InvalidRequestError) as err:
        BlendWeights(**kwargs)
    assert isinstance(err.value, ValueError)
    name = next(iter(kwargs))
    assert name in str(err.value) or "both 0" in str(err.value)


def test_blend_weights_with_weights_validates_request_weights():
    base = BlendWeights(1.0, 1.0, mode="multiplicative")
    assert base.with_weights(2, 3) == BlendWeights(2.0, 3.0, mode="multiplicative")
    with pytest.raises(InvalidRequestError, match="quality"):
        base.with_weights(1.0, -2.0)


@pytest.mark.parametrize("e,q,match", [
    (np.array([0.5, 1.5]), np.array([0.5, 0.5]), "engagement"),
    (np.array([0.5, 0.5]), np.array([np.nan, 0.5]), "quality"),
    (np.array([0.5, 0.5]), np.array([0.5]), "match"),
    (np.array([[0.5]]), np.array([[0.5]]), "1-D"),
])
def test_blend_scores_rejects_bad_head_scores(e, q, match):
    with pytest.raises(ValueError, match=match):
        blend_scores(e, q, BlendWeights())


def test_blend_scores_is_pure():
    e, q = E.copy(), Q.copy()
    w = BlendWeights(1.0, 3.0)
    first = blend_scores(e, q, w)
    np.testing.assert_array_equal(blend_scores(e, q, w), first)
    np.testing.assert_array_equal(e, E)
    np.testing.assert_array_equal(q, Q)
    assert blend_scores(np.zeros(0), np.zeros(0), w).shape == (0,)


def test_blend_modes_are_the_documented_formulas_exactly():
    """The proto's formulas (recsys.v1.BlendWeights) on hand values, bit for bit."""
    e, q = np.array([0.25, 0.5, 1.0]), np.array([0.5, 0.125, 0.0])
    additive = blend_scores(e, q, BlendWeights(3.0, 0.5, "additive"))
    assert additive.tolist() == [3 * 0.25 + 0.5 * 0.5, 3 * 0.5 + 0.5 * 0.125, 3.0]
    multiplicative = blend_scores(e, q, BlendWeights(2.0, 3.0, "multiplicative"))
    assert multiplicative.tolist() == [0.25 ** 2 * 0.5 ** 3, 0.5 ** 2 * 0.125 ** 3, 0.0]
    # A zero exponent ignores its head, even where the head is 0 (0^0 = 1).
    assert blend_scores(e, q, BlendWeights(1.0, 0.0, "multiplicative")).tolist() == e.tolist()


def test_with_blend_takes_the_requested_mode_and_resolves_the_transform():
    multiplicative = BlendWeights(1.0, 1.0, "multiplicative")
    logit_additive = BlendWeights(0.5, 0.5, "additive", "logit")
    assert multiplicative.with_blend(2.0, 1.0) == BlendWeights(2.0, 1.0, "multiplicative", "identity")
    assert multiplicative.with_blend(2.0, 1.0, "additive") == BlendWeights(2.0, 1.0, "additive", "identity")
    assert logit_additive.with_blend(1.0, 2.0, "additive") == BlendWeights(1.0, 2.0, "additive", "logit")
    assert logit_additive.with_blend(1.0, 2.0) == BlendWeights(1.0, 2.0, "additive", "logit")
    assert logit_additive.with_blend(1.0, 2.0, "multiplicative") == BlendWeights(1.0, 2.0, "multiplicative")
    assert multiplicative.with_blend(1.0, 2.0, "additive", "log").transform == "log"
    with pytest.raises(InvalidRequestError, match="additive mode only"):
        multiplicative.with_blend(1.0, 2.0, None, "log")


# Heads spanning what the retrieval-fused engagement head produces (down to ~1e-12) and quality.
_E = np.array([1e-12, 3e-12, 1e-9, 2e-9, 1e-6, 1.2e-6, 1e-3, 0.3, 0.31, 0.9], dtype=np.float32)
_Q = np.array([0.30, 0.31, 0.40, 0.41, 0.45, 0.46, 0.50, 0.70, 0.71, 0.95], dtype=np.float32)


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_extreme_accepted_request_weights_keep_distinct_candidates_distinct(mode):
    """At every corner of the request range (serving.validation) the float32 scores sent on the wire stay
    distinct for distinct heads: none flattens to 0 or 1."""
    from serving.validation import WEIGHT_MAX, WEIGHT_MIN

    corners = [(a, b) for a in (0.0, WEIGHT_MIN, WEIGHT_MAX) for b in (0.0, WEIGHT_MIN, WEIGHT_MAX) if a or b]
    for we, wq in corners:
        wire = blend_scores(_E, _Q, BlendWeights(we, wq, mode)).astype(np.float32)
        assert len(set(wire.tolist())) == len(wire), f"({we}, {wq}) {mode}: {wire}"
        assert (wire > 0).all() and (wire != 1).all() if mode == "multiplicative" else np.isfinite(wire).all()


def test_weights_outside_the_request_range_flatten_the_wire_scores():
    """Why the range has bounds: the multiplicative exponents the API refused before flattened every score."""
    assert (blend_scores(_E[:6], _Q[:6], BlendWeights(10.0, 10.0, "multiplicative")).astype(np.float32) == 0).all()
    assert (blend_scores(_E[4:], _Q[4:], BlendWeights(1e-9, 1e-9, "multiplicative")).astype(np.float32) == 1).all()
