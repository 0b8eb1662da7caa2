"""Loads a version's retrieval artifacts together, refusing ones that do not belong together."""
from __future__ import annotations

import os
import pathlib

from core import layout
from core.errors import ArtifactError, ArtifactMismatchError
from core.registry import verify_version
from features import FeatureStore
from retrieval.export import UserTower
from retrieval.index import ItemIndex


def load_retriever(version_dir: str | os.PathLike, verify: bool = True) -> tuple[FeatureStore, UserTower, ItemIndex]:
    """(FeatureStore, UserTower, ItemIndex) of one version directory.

    Verifies the manifest checksums first (ArtifactMismatchError for changed or missing
    files, ArtifactError for a missing manifest) and checks the index's dimension equals
    the user tower's (ArtifactMismatchError otherwise).
    """
    d = pathlib.Path(version_dir)
    if not d.is_dir():
        raise ArtifactError(f"version directory {d} does not exist")
    if verify:
        verify_version(d)
    features = FeatureStore.load(layout.features_dir(d))
    tower = UserTower.load(d)
    index = ItemIndex.load(layout.index_dir(d))
    if index.dim != tower.dim:
        raise ArtifactMismatchError(f"{d}: the FAISS index has dimension {index.dim} but the user tower outputs "
                                    f"{tower.dim}; rebuild the index from this version's items.npz")
    return features, tower, index
