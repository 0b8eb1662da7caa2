"""Shared fixtures. TF_USE_LEGACY_KERAS is set before anything can import TensorFlow."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from features import Dataset, SyntheticConfig, generate_synthetic, load_movielens_100k  # noqa: E402


@pytest.fixture(scope="session")
def movielens() -> Dataset:
    """The real MovieLens-100k (downloaded once into ./data or $RECSYS_DATA_DIR)."""
    return load_movielens_100k()


@pytest.fixture(scope="session")
def small_synthetic() -> Dataset:
    return generate_synthetic(SyntheticConfig(num_users=200, num_items=100, num_interactions=8000, seed=3))
