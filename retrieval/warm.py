"""Warm start of the two-tower model from an earlier version: known ids keep their embeddings, new ids start fresh.

Every table of a tower is keyed by a vocabulary (features.Vocabulary: index 0 = OOV, index
i+1 = tokens[i], ordered by train frequency), and a retrained version fits its vocabularies on
new data, so the same id usually sits at ANOTHER row. A warm start therefore maps rows by
token, never by position:

  new row 0 (OOV)          ← old row 0
  new row of token t       ← old row of t, when the old vocabulary has t
  new row of a new token   keeps its fresh (seeded) initialisation

Tables by role (`tower_tables`): the id embedding of each tower (user_id / item_id), each
categorical / multi-valued / text column's table (its own vocabulary), the user tower's history
bag (item_id vocabulary). Dense layers (hidden, projection) are copied when their shapes match
(the same config and the same side-feature columns); a table or layer whose width changed keeps
its fresh initialisation and is reported. The weights travel in `retrieval/tower_weights.npz`
(core.layout.tower_weights_file), written by export_model beside the SavedModel; the old
vocabularies are the old version's feature store.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from core import layout
from core.errors import ArtifactError
from features import FeatureStore, Vocabulary
from retrieval.two_tower import HISTORY, Tower, TwoTowerModel, history_strings


def tower_tables(tower: Tower) -> dict[str, tuple[Any, str | None]]:
    """role → (variable, vocabulary name or None for a dense weight) of one tower."""
    k = tower.kind
    out: dict[str, tuple[Any, str | None]] = {f"{k}.id": (tower.id_embedding.embeddings, tower.id_name)}
    for c, layer in tower.categorical.items():
        out[f"{k}.categorical.{c}"] = (layer.layers[1].embeddings, c)
    for c, bag in tower.multi.items():
        out[f"{k}.multi.{c}"] = (bag.embedding.embeddings, c)
    for c, bag in tower.text.items():
        out[f"{k}.text.{c}"] = (bag.embedding.embeddings, c)
    if tower.history_bag is not None:
        out[f"{k}.history"] = (tower.history_bag.embedding.embeddings, "item_id")
    for i, layer in enumerate([*tower.hidden, tower.projection]):
        name = "projection" if layer is tower.projection else f"hidden{i}"
        out[f"{k}.{name}.kernel"] = (layer.kernel, None)
        out[f"{k}.{name}.bias"] = (layer.bias, None)
    return out


def model_tables(model: TwoTowerModel) -> dict[str, tuple[Any, str | None]]:
    return {**tower_tables(model.user_tower), **tower_tables(model.item_tower)}


def build(model: TwoTowerModel, features: FeatureStore) -> None:
    """Creates the model's variables (one forward pass of each tower on one row)."""
    from core.tf_env import tf

    for tower, raw in ((model.user_tower, features.user_features(features.vocabularies["user_id"].tokens[:1] or [""])),
                       (model.item_tower, features.item_features(features.catalogue[:1] or [""]))):
        if tower.history_bag is not None:
            raw[HISTORY] = history_strings([()])
        inputs = {k: tf.constant(v.astype(str) if v.dtype == object else v.astype(np.float32))
                  for k, v in raw.items() if k in tower.feature_names}
        tower(inputs, training=False)


def save_tower_weights(model: TwoTowerModel, version_dir: str | os.PathLike) -> None:
    """Writes retrieval/tower_weights.npz: every table and dense weight by role."""
    path = layout.tower_weights_file(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{role: var.numpy() for role, (var, _) in model_tables(model).items()})


class WarmStart:
    """An earlier version's tower weights and vocabularies, applied to freshly built models."""

    def __init__(self, version_dir: str | os.PathLike) -> None:
        path = layout.tower_weights_file(version_dir)
        if not path.is_file():
            raise ArtifactError(f"{path} not found: version {os.path.basename(os.fspath(version_dir))} was trained "
                                "before tower weights were saved; warm-start from a newer version or train from scratch")
        with np.load(path, allow_pickle=False) as z:
            self.weights = {k: z[k] for k in z.files}
        self.vocabularies: dict[str, Vocabulary] = FeatureStore.load(layout.features_dir(version_dir)).vocabularies
        self.version = os.path.basename(os.path.normpath(os.fspath(version_dir)))
        self.report: dict[str, Any] = {}

    def __call__(self, model: TwoTowerModel, features: FeatureStore) -> dict[str, Any]:
        """Initialises `model` (built here if needed) from the earlier weights; returns what was carried over."""
        build(model, features)
        report: dict[str, Any] = {"from_version": self.version, "tables": {}, "dense_copied": [], "fresh": []}
        for role, (var, vocab_name) in model_tables(model).items():
            old = self.weights.get(role)
            new = var.numpy()
            if old is None or old.ndim != new.ndim or (vocab_name is None and old.shape != new.shape) or \
                    (vocab_name is not None and old.shape[1:] != new.shape[1:]):
                report["fresh"].append(role)
                continue
            if vocab_name is None:
                var.assign(old)
                report["dense_copied"].append(role)
                continue
            rows, src = _row_map(features.vocabularies[vocab_name], self.vocabularies.get(vocab_name))
            new[rows] = old[src]
            var.assign(new)
            report["tables"][role] = {"rows": int(new.shape[0]), "carried": int(len(rows)),
                                      "fresh": int(new.shape[0] - len(rows))}
        self.report = report
        return report


def _row_map(new: Vocabulary, old: Vocabulary | None) -> tuple[np.ndarray, np.ndarray]:
    """(new rows, old rows) of the tokens both vocabularies hold, plus the OOV row 0 → 0."""
    if old is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    src = old.lookup(list(new.tokens))           # 0 = not in the old vocabulary
    known = np.flatnonzero(src > 0)
    return np.concatenate([[0], known + 1]).astype(np.int64), np.concatenate([[0], src[known]]).astype(np.int64)
