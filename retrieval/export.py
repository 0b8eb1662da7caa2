"""Exports the trained towers: the user tower as a SavedModel, the item embeddings as items.npz.

Layout inside a version directory (DESIGN.md §5):
  retrieval/user_tower/   SavedModel, signature "serving_default": the raw user feature dict
                          of `FeatureStore.user_features` ([b] each), plus "history" when the
                          tower reads recent history → {"embedding": [b, d]}
  retrieval/items.npz     item_ids [I] str, embeddings [I, d] float32 (the whole catalogue)
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from core import layout
from core.errors import ArtifactError, InvalidRequestError
from core.tf_env import tf
from features import FeatureStore
from retrieval.two_tower import HISTORY, Tower, TwoTowerModel, embed_in_batches, history_strings


def _signature_specs(features: FeatureStore, history: bool) -> dict[str, tf.TensorSpec]:
    """One [None] input per raw user feature: strings, float32 for numeric columns."""
    numeric = set(features.spec.user_numeric)
    keys = [*features.user_features([]).keys(), *((HISTORY,) if history else ())]
    return {k: tf.TensorSpec([None], tf.float32 if k in numeric else tf.string, name=k) for k in keys}


def export_user_tower(tower: Tower, features: FeatureStore, version_dir: str | os.PathLike) -> pathlib.Path:
    """Saves `tower` with an explicit serving signature over every raw user feature.

    The signature takes every key of `features.user_features(ids)` even when the tower
    ignores some, so any caller can pass that dict unchanged.
    """
    path = layout.user_tower_dir(version_dir)
    history_length = tower.history_length
    specs = _signature_specs(features, history_length > 0)

    @tf.function(input_signature=[specs])
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"embedding": tower({k: inputs[k] for k in tower.feature_names}, training=False)}

    # A signature function's inputs are keyword arguments; wrap so callers pass them by name.
    @tf.function(input_signature=list(specs.values()))
    def serving_default(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        return serve(dict(zip(specs, args)))

    module = tf.Module()
    module.tower = tower
    module.serve = serve
    module.history_length = tf.Variable(history_length, trainable=False, dtype=tf.int64)
    tf.saved_model.save(module, str(path), signatures={"serving_default": serving_default})
    return path


def export_items(item_tower: Tower, features: FeatureStore, version_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Embeds the whole catalogue and writes items.npz; returns (item_ids [I], embeddings [I, d])."""
    item_ids = np.asarray(features.catalogue).astype(str)
    embeddings = embed_in_batches(item_tower, features.item_features(item_ids))
    path = layout.items_file(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, item_ids=item_ids, embeddings=embeddings)
    return item_ids, embeddings


def load_items(version_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads items.npz: (item_ids [I] str, embeddings [I, d] float32)."""
    path = layout.items_file(version_dir)
    try:
        with np.load(path, allow_pickle=False) as z:
            item_ids, embeddings = z["item_ids"].astype(str), z["embeddings"].astype(np.float32)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path} not found: was the retrieval stage of this version trained?") from e
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); retrain this version") from e
    if embeddings.ndim != 2 or len(item_ids) != len(embeddings):
        raise ArtifactError(f"{path}: {len(item_ids)} ids for embeddings of shape {embeddings.shape}")
    return item_ids, embeddings


def export_model(model: TwoTowerModel, features: FeatureStore, version_dir: str | os.PathLike) -> dict:
    """Writes both exports; returns their sizes for the manifest."""
    from retrieval.warm import save_tower_weights

    export_user_tower(model.user_tower, features, version_dir)
    item_ids, embeddings = export_items(model.item_tower, features, version_dir)
    save_tower_weights(model, version_dir)  # what a later version's warm start reads
    return {"items": int(len(item_ids)), "dim": int(embeddings.shape[1]),
            "user_tower_inputs": sorted(_signature_specs(features, model.user_tower.history_length > 0))}


class UserTower:
    """The exported user tower: raw user features in, [b, d] embeddings out."""

    def __init__(self, loaded, path: pathlib.Path) -> None:
        self._fn = loaded.signatures["serving_default"]
        self.path = path
        self.input_specs: dict[str, tf.TensorSpec] = dict(self._fn.structured_input_signature[1])
        self.dim = int(self._fn.structured_outputs["embedding"].shape[-1])
        # How many recent items the "history" input holds (0: the tower takes no history).
        self.history_length = int(loaded.history_length.numpy()) if hasattr(loaded, "history_length") else 0

    @classmethod
    def load(cls, version_dir: str | os.PathLike) -> UserTower:
        """Loads `<version_dir>/retrieval/user_tower`; ArtifactError if missing or unreadable."""
        path = layout.user_tower_dir(version_dir)
        if not (path / "saved_model.pb").is_file():
            raise ArtifactError(f"user tower SavedModel not found at {path}: was the retrieval stage trained?")
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as e:  # TF raises many kinds (OSError, DataLossError, ValueError...) for bad files
            raise ArtifactError(f"cannot load the user tower SavedModel at {path}: "
                                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}") from e
        if "serving_default" not in loaded.signatures:
            raise ArtifactError(f"{path} has no 'serving_default' signature; re-export it")
        return cls(loaded, path)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.input_specs)

    def embed(self, user_features: dict[str, np.ndarray]) -> np.ndarray:
        """[b, d] float32 embeddings for the raw features of b users (`FeatureStore.user_features`)."""
        missing = [k for k in self.input_specs if k not in user_features]
        if missing:
            hint = " (build the inputs with UserTower.user_inputs)" if HISTORY in missing else ""
            raise InvalidRequestError(f"user features missing {missing}; the user tower takes "
                                      f"{list(self.input_specs)}{hint}")
        sizes = {k: len(user_features[k]) for k in self.input_specs}
        if len(set(sizes.values())) > 1:
            raise InvalidRequestError(f"user features must all have the same length, got {sizes}")
        args = {}
        for k, spec in self.input_specs.items():
            v = np.asarray(user_features[k])
            if spec.dtype == tf.string:
                args[k] = tf.constant(v.astype(str), dtype=tf.string)
            else:
                try:
                    args[k] = tf.constant(v.astype(np.float32))
                except ValueError as e:
                    raise InvalidRequestError(f"user feature {k!r} must be numeric: {e}") from e
        if not sizes or next(iter(sizes.values())) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._fn(**args)["embedding"].numpy()

    def user_inputs(self, features: FeatureStore, user_ids: Sequence[str],
                    recent: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """The complete raw input for `user_ids`: `features.user_features` plus, when the tower
        reads history, each user's last `history_length` engaged items (FeatureStore.history:
        train items, merged with `recent[i]`, user i's streamed engagements newest first, if given)."""
        inputs = features.user_features(list(user_ids))
        if self.history_length:
            inputs[HISTORY] = history_strings(features.history(list(user_ids), self.history_length, recent))
        return inputs

    def embed_ids(self, features: FeatureStore, user_ids: Sequence[str],
                  recent: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """[b, d] embeddings for raw user ids (unknown ids use the OOV bucket and default features;
        `recent` as in `user_inputs`)."""
        return self.embed(self.user_inputs(features, user_ids, recent))
