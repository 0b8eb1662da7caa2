"""The protocol's scores → ranking step: exclusions, tie-breaking, padding."""
import numpy as np
import pytest
import scipy.sparse as sp

from evaluation import top_k_excluding


def _reference(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """Row by row: finite, non-excluded columns sorted by (-score, column)."""
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    dense_ex = exclude.toarray() != 0
    for r in range(scores.shape[0]):
        cand = [c for c in range(scores.shape[1]) if np.isfinite(scores[r, c]) and not dense_ex[r, c]]
        cand.sort(key=lambda c: (-scores[r, c], c))
        out[r, :min(k, len(cand))] = cand[:k]
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 7, 12, 15])
def test_top_k_excluding_matches_reference_with_ties(seed, k):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(9, 12)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[0, :] = 1.0  # a row that is one big tie
    scores[1, 3] = np.nan
    dense_exclude = (rng.random((9, 12)) < 0.3).astype(np.float64)
    dense_exclude[2] = 1.0  # everything excluded: all padding
    exclude = sp.csr_matrix(dense_exclude)
    np.testing.assert_array_equal(top_k_excluding(scores, exclude, k), _reference(scores, exclude, k))


def test_top_k_excluding_breaks_ties_by_lower_column():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.5]])
    got = top_k_excluding(scores, sp.csr_matrix((1, 5)), 4)
    np.testing.assert_array_equal(got, [[1, 3, 0, 2]])


def test_top_k_excluding_pads_with_minus_one():
    scores = np.array([[3.0, 2.0, 1.0]])
    exclude = sp.csr_matrix(np.array([[0.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(top_k_excluding(scores, exclude, 5), [[0, 2, -1, -1, -1]])
    assert top_k_excluding(scores, exclude, 0).shape == (1, 0)


def test_top_k_excluding_does_not_modify_scores_and_checks_shapes():
    scores = np.array([[1.0, 2.0]])
    top_k_excluding(scores, sp.csr_matrix(np.array([[1.0, 1.0]])), 1)
    np.testing.assert_array_equal(scores, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="must match"):
        top_k_excluding(scores, sp.csr_matrix((2, 2)), 1)
