"""The new-user scorer's statistics (features.cooccurrence): P(j | i) top-K, the decayed profile, the mixture."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from core.errors import ArtifactError
from features.cooccurrence import (
    ItemCooccurrence,
    NewUserConfig,
    conditional_neighbors,
    engagement_matrix,
    mixed_engagement,
    profile,
)

ITEMS = ["a", "b", "c", "d"]
HISTORIES = {"u1": ["a", "b"], "u2": ["a", "b", "c"], "u3": ["a", "c"], "u4": ["d"], "u5": ["b", "zzz"]}


def test_conditional_probabilities_by_hand():
    x = engagement_matrix(HISTORIES, sorted(HISTORIES), ITEMS)
    assert x.shape == (5, 4) and x.sum() == 9  # "zzz" is not in the catalogue
    p = conditional_neighbors(x, neighbors=10).toarray()
    # a: 3 users (u1, u2, u3); with b: u1, u2; with c: u2, u3
    np.testing.assert_allclose(p[0], [0, 2 / 3, 2 / 3, 0])
    # b: 3 users (u1, u2, u5); with a: 2, with c: 1
    np.testing.assert_allclose(p[1], [2 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(p[3], [0, 0, 0, 0])  # d co-occurs with nothing
    assert np.all(np.diag(p) == 0)


def test_only_the_top_neighbours_are_kept_ties_by_lower_column():
    x = engagement_matrix(HISTORIES, sorted(HISTORIES), ITEMS)
    p = conditional_neighbors(x, neighbors=1).toarray()
    np.testing.assert_allclose(p[0], [0, 2 / 3, 0, 0])  # b and c tie at 2/3: the lower column stays
    np.testing.assert_allclose(p[1], [2 / 3, 0, 0, 0])
    assert (p > 0).sum(axis=1).max() == 1


def test_too_many_pairs_is_a_clear_error():
    x = engagement_matrix(HISTORIES, sorted(HISTORIES), ITEMS)
    with pytest.raises(ValueError, match="--newuser-max-pairs"):
        conditional_neighbors(x, neighbors=10, max_pairs=5)


def test_profile_weights_the_newest_event_most():
    cond = sp.csr_matrix(np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    got = profile(cond, [1, 0], decay=0.5)  # newest: b (→ c), then a (→ b)
    np.testing.assert_allclose(got, [0, 0.5 / 1.5, 1 / 1.5, 0])
    np.testing.assert_allclose(profile(cond, [-1, 1], decay=0.5), [0, 0, 1, 0])  # unknown items are skipped
    np.testing.assert_allclose(profile(cond, [-1], decay=0.5), [0, 0, 0, 0])


def test_mixture_zero_is_the_popularity_prior_and_one_the_conditional():
    reach = np.array([0.5, 0.3, 0.2, 0.1])
    prof = np.array([0.0, 0.1, 0.9, 0.0])
    np.testing.assert_array_equal(mixed_engagement(reach, prof, 0.0), reach)
    np.testing.assert_array_equal(mixed_engagement(reach, prof, 1.0), prof)
    np.testing.assert_allclose(mixed_engagement(reach, prof, 0.25), 0.75 * reach + 0.25 * prof)


def test_save_load_round_trip_and_corrupt_file(tmp_path):
    x = engagement_matrix(HISTORIES, sorted(HISTORIES), ITEMS)
    scorer = ItemCooccurrence(np.array(ITEMS, dtype=object), conditional_neighbors(x, 10), 0.4, 0.7)
    back = ItemCooccurrence.load(scorer.save(tmp_path / "s.npz"))
    assert list(back.item_ids) == ITEMS and (back.weight, back.decay) == (0.4, 0.7)
    np.testing.assert_allclose(back.cond.toarray(), scorer.cond.toarray(), rtol=1e-6)
    reach = np.array([0.6, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(back.engagement(reach, ["c", "nope", "a"]), scorer.engagement(reach, ["c", "a"]),
                               rtol=1e-6)
    assert back.knows_any(["nope", "d"]) and not back.knows_any(["nope"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="new-user scorer"):
        ItemCooccurrence.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("field, value, flag", [("neighbors", 0, "--newuser-neighbors"),
                                                ("simulated_share", 1.0, "--newuser-simulated-share"),
                                                ("first_events", 0, "--newuser-first-events"),
                                                ("weight_grid", (0.5, 1.5), "--newuser-weight-grid"),
                                                ("decay_grid", (0.0,), "--newuser-decay-grid")])
def test_bad_config_names_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        NewUserConfig(**{field: value})
