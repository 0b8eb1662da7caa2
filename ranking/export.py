"""Export and load the ranker: a SavedModel whose signature takes raw (user, item) rows.

Layout of a ranking artifact directory (`<version>/ranking/`):
  model/        SavedModel; signature "serving_default": the ranker's inputs (each [n],
                names of model.input_specs) → {"engagement": [n], "quality": [n]} float32
  ranker.json   config, input names, heads, training info, and the engagement head's
                serving transform: "retrieval_weight" (β) and "calibration" ({"method":
                "platt", "a", "b"}, or {"method": "stacked", "features", "weights", "intercept"}:
                the stacked engagement model of ranking.stacking, which replaces β and Platt — either
                way the served engagement is a calibrated probability; null: a ranking score) —
                applied inside the SavedModel (ranking.model)

Loaders use only TensorFlow's SavedModel API, never the training code's classes.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import ArtifactError, ArtifactMismatchError
from core.tf_env import tf
from features import FeatureStore
from ranking.model import HEADS, WideDeepRanker, ranker_inputs, user_inputs

MODEL_DIR = "model"
META_FILE = "ranker.json"
SIGNATURE = "serving_default"
FORMAT_VERSION = 1


class _Serving(tf.Module):
    """What serving needs and nothing else: the model's variables, its lookup tables and one
    traced function. The Keras model itself is held in a closure, not as a tracked attribute,
    so the SavedModel carries no Keras object graph (every layer's traced call functions):
    on the MovieLens ranker that cuts loading from ~7 s to ~2 s and the time the loading
    thread holds the GIL (stalling a serving process's other threads during a hot swap)
    from ~1.6 s to ~0.3 s (bench/RESULTS.md, reliability)."""

    def __init__(self, model: WideDeepRanker) -> None:
        super().__init__()
        # No public API lists a model's resources (its StringLookup tables); these are TF's own.
        from tensorflow.python.checkpoint import graph_view, util
        from tensorflow.python.trackable.resource import CapturableResource

        reachable = util.list_objects(graph_view.ObjectGraphView(model))
        self.model_variables = list(model.variables)
        self.model_resources = [o for o in reachable if isinstance(o, CapturableResource)]

        @tf.function
        def serve(**inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            out = model(inputs, training=False)
            return {h: tf.reshape(out[h], [-1]) for h in HEADS}
        self.serve = serve


def export_ranker(model: WideDeepRanker, directory: str | pathlib.Path, info: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes `directory/model` (SavedModel) and `directory/ranker.json`; returns `directory`."""
    d = pathlib.Path(directory)
    if (d / MODEL_DIR).exists():
        raise ArtifactError(f"{d / MODEL_DIR} already exists; artifacts are never overwritten")
    d.mkdir(parents=True, exist_ok=True)
    module = _Serving(model)
    signature = module.serve.get_concrete_function(**model.specs)
    tf.saved_model.save(module, str(d / MODEL_DIR), signatures={SIGNATURE: signature})
    serving = model.serving_values()
    stacked = model.stacking()
    meta = {
        "format": FORMAT_VERSION,
        "signature": SIGNATURE,
        "inputs": {k: s.dtype.name for k, s in model.specs.items()},
        "heads": list(HEADS),
        "config": dataclasses.asdict(model.config),
        "info": dict(info or {}),
        "retrieval_weight": serving["retrieval_weight"],
        "calibration": (stacked.to_dict() if stacked is not None else
                        {"method": "platt", "a": serving["calibration_a"], "b": serving["calibration_b"]}
                        if (serving["calibration_a"], serving["calibration_b"]) != (1.0, 0.0) else None),
    }
    (d / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
    return d


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class Ranker:
    """A loaded ranker: scores (user, item) pairs through the exported signature.

    Thread-safe for concurrent `score` calls (a SavedModel signature is a stateless
    concrete function).
    """

    def __init__(self, signature, meta: dict, directory: pathlib.Path) -> None:
        self._fn = signature
        self.meta = meta
        self.directory = directory
        self.input_names: tuple[str, ...] = tuple(meta["inputs"])
        self._dtypes = {k: tf.as_dtype(v) for k, v in meta["inputs"].items()}

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> Ranker:
        """Loads `directory` (the `ranking/` folder written by export_ranker)."""
        d = pathlib.Path(directory)
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read ranker metadata {d / META_FILE}: {e}") from e
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactMismatchError(f"{d / META_FILE} has format {meta.get('format')}, expected {FORMAT_VERSION}")
        try:
            loaded = tf.saved_model.load(str(d / MODEL_DIR))
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise ArtifactError(f"cannot load the ranker SavedModel {d / MODEL_DIR}: {e}") from e
        signature = loaded.signatures.get(meta["signature"])
        if signature is None:
            raise ArtifactMismatchError(f"{d / MODEL_DIR} has no signature {meta['signature']!r}")
        expected = set(signature.structured_input_signature[1])
        if expected != set(meta["inputs"]):
            raise ArtifactMismatchError(f"{d}: SavedModel inputs {sorted(expected)} differ from {META_FILE} "
                                        f"{sorted(meta['inputs'])}")
        ranker = cls(signature, meta, d)
        ranker._loaded = loaded  # keep the restored object (and its variables) alive
        return ranker

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def history_length(self) -> int:
        return int(self.config.get("history_length", 0))

    def user_features(self, features: FeatureStore, user_ids,
                      recent: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """The user dict `score` takes: FeatureStore.user_features plus the history this ranker reads
        (train items merged with `recent[i]`, user i's streamed engagements newest first, if given)."""
        return user_inputs(features, user_ids, self.history_length, recent=recent)

    def score(self, user_features: Mapping[str, np.ndarray], item_features: Mapping[str, np.ndarray],
              batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Scores n (user, item) pairs.

        Args:
          user_features: raw dict of FeatureStore.user_features for the n pairs' users, [n]
            each, plus "history" when the ranker reads it (see `user_features`).
          item_features: raw dict of FeatureStore.item_features for the n pairs' items, [n] each.
          batch_size: rows per signature call (bounds memory).

        Returns:
          (engagement [n], quality [n]) float32 in [0, 1].
        """
        return self.score_inputs(ranker_inputs(user_features, item_features), batch_size)

    def score_inputs(self, inputs: Mapping[str, np.ndarray], batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Scores the merged input dict of model.ranker_inputs (same result as `score`)."""
        missing = [k for k in self.input_names if k not in inputs]
        if missing:
            raise ArtifactMismatchError(f"ranker input(s) {missing} are missing; the feature store does not match the "
                                        f"ranker in {self.directory}")
        n = len(inputs[self.input_names[0]])
        for k in self.input_names:
            if len(inputs[k]) != n:
                raise ValueError(f"ranker input {k!r} has {len(inputs[k])} rows, {self.input_names[0]!r} has {n}")
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        outs: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
        for lo in range(0, n, batch_size):
            batch = {k: _tensor(inputs[k][lo:lo + batch_size], self._dtypes[k]) for k in self.input_names}
            res = self._fn(**batch)
            for h in HEADS:
                outs[h].append(res[h].numpy())
        return np.concatenate(outs["engagement"]), np.concatenate(outs["quality"])


def _tensor(values: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    if dtype == tf.string:
        values = np.asarray(values)
        if values.dtype.kind not in "SU":
            values = values.astype(str)
        return tf.constant(values, dtype=tf.string)
    return tf.constant(np.asarray(values, dtype=dtype.as_numpy_dtype))
