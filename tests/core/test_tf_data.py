"""core.tf_data.indexed_batches: the same batches as the from_tensor_slices pipeline it replaces."""
import numpy as np
import pytest

from core.tf_data import indexed_batches
from core.tf_env import tf


def _columns(n: int, rng: np.random.Generator) -> tuple:
    users = np.array([f"u{i}" for i in rng.integers(0, 37, n)], dtype=object)
    history = np.array(["|".join(f"i{j}" for j in rng.integers(0, 50, rng.integers(0, 4))) for _ in range(n)],
                       dtype=object)
    return ({"user": {"user_id": users, "history": history}, "x": rng.normal(size=n).astype(np.float32)},
            {"y": rng.integers(0, 2, n).astype(np.float32)},
            {"n": np.arange(n, dtype=np.int64)})


def _as_lists(ds: tf.data.Dataset) -> list:
    return [tf.nest.map_structure(lambda t: t.numpy().tolist(), b) for b in ds]


@pytest.mark.parametrize("seed", [None, 7])
def test_batches_equal_the_element_wise_shuffle_with_the_same_seed_over_two_epochs(seed):
    cols = _columns(1000, np.random.default_rng(0))
    strings = tf.nest.map_structure(lambda v: v.astype(str) if v.dtype == object else v, cols)
    reference = tf.data.Dataset.from_tensor_slices(strings)
    if seed is not None:
        reference = reference.shuffle(1000, seed=seed, reshuffle_each_iteration=True)
    reference = reference.batch(64)
    ours = indexed_batches(cols, 64, seed=seed)
    ref_epochs = [_as_lists(reference), _as_lists(reference)]
    our_epochs = [_as_lists(ours), _as_lists(ours)]
    assert our_epochs == ref_epochs
    order = [row for b in our_epochs[0] for row in b[2]["n"]]
    if seed is None:
        assert order == list(range(1000))
    else:
        assert sorted(order) == list(range(1000)) and order != list(range(1000))
        assert our_epochs[0] != our_epochs[1]  # reshuffled each epoch


def test_strings_are_stored_once_per_distinct_value_and_lengths_are_checked():
    ds = indexed_batches({"a": np.array(["x", "y", "x", None], dtype=object)}, 4)
    assert [b["a"].numpy().tolist() for b in ds] == [[b"x", b"y", b"x", b"None"]]
    with pytest.raises(ValueError, match="different lengths"):
        indexed_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2)
