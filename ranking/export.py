"""Export and load the ranker: a SavedModel whose signature takes raw (user, item) rows.

Layout of a ranking artifact directory (`<version>/ranking/`):
  model/        SavedModel; signature "serving_default": the ranker's inputs (each [n],
                names of model.input_specs) → {"engagement": [n], "quality": [n]} float32
  ranker.json   config, input names, heads, training info, the engagement calibration and
                the rating scale of the quality head
  context.npz   with context inputs: the served version's CandidateContext (ranking.context)

Loaders use only TensorFlow's SavedModel API, never the training code's classes.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.errors import ArtifactError, ArtifactMismatchError
from core.tf_env import tf
from features import FeatureStore
from ranking.calibration import PlattCalibration
from ranking.context import CONTEXT_FILE, CONTEXT_PREFIX, CandidateContext, neutral_context
from ranking.model import HEADS, RATING_MAX, RATING_MIN, WideDeepRanker, ranker_inputs, user_inputs

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


def export_ranker(model: WideDeepRanker, directory: str | pathlib.Path, info: Mapping[str, Any] | None = None,
                  context: CandidateContext | None = None, calibration: PlattCalibration | None = None,
                  rating_scale: tuple[float, float] = (RATING_MIN, RATING_MAX)) -> pathlib.Path:
    """Writes `directory/model` (SavedModel), `directory/ranker.json` (+ context.npz); returns `directory`.

    `context`: the serving CandidateContext (required when the model reads context inputs);
    `calibration`: the engagement head's Platt calibration, applied by Ranker.score.
    """
    if model.config.context and context is None:
        raise ValueError("this ranker reads candidate context: export it with the serving CandidateContext")
    d = pathlib.Path(directory)
    if (d / MODEL_DIR).exists():
        raise ArtifactError(f"{d / MODEL_DIR} already exists; artifacts are never overwritten")
    d.mkdir(parents=True, exist_ok=True)
    module = _Serving(model)
    signature = module.serve.get_concrete_function(**model.specs)
    tf.saved_model.save(module, str(d / MODEL_DIR), signatures={SIGNATURE: signature})
    meta = {
        "format": FORMAT_VERSION,
        "signature": SIGNATURE,
        "inputs": {k: s.dtype.name for k, s in model.specs.items()},
        "heads": list(HEADS),
        "config": dataclasses.asdict(model.config),
        "info": dict(info or {}),
        "calibration": (calibration or PlattCalibration()).to_dict(),
        "rating_scale": [float(rating_scale[0]), float(rating_scale[1])],
    }
    if model.config.context:
        context.save(d)
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
        self.calibration = PlattCalibration.from_dict(meta.get("calibration"))
        self.rating_scale: tuple[float, float] = tuple(meta.get("rating_scale", (RATING_MIN, RATING_MAX)))
        self.context: CandidateContext | None = None
        if self.config.get("context") and (directory / CONTEXT_FILE).exists():
            self.context = CandidateContext.load(directory)

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
        if ranker.config.get("context") and ranker.context is None:
            raise ArtifactMismatchError(f"{d}: the ranker reads candidate context but {CONTEXT_FILE} is missing")
        ranker._loaded = loaded  # keep the restored object (and its variables) alive
        return ranker

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def history_length(self) -> int:
        return int(self.config.get("history_length", 0))

    def user_features(self, features: FeatureStore, user_ids) -> dict[str, np.ndarray]:
        """The user dict `score` takes: FeatureStore.user_features plus the history this ranker reads."""
        return user_inputs(features, user_ids, self.history_length)

    @property
    def uses_context(self) -> bool:
        return bool(self.config.get("context"))

    def candidate_context(self, features: FeatureStore, user_ids: list[str], owner: np.ndarray,
                          item_ids: np.ndarray, scores: np.ndarray, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """The context inputs of n candidates (ranking.context.CandidateContext.features) as of this
        version: the users' train items (FeatureStore.seen) and this version's retriever and stats.

        Args:
          user_ids: b users; owner: [n] index into them; item_ids, scores, ranks: [n] each
          candidate, its retriever score and 0-based position in the user's retrieved list.
        """
        if self.context is None:
            return {}
        hists = features.history(user_ids, self.context.history_k)
        activity = np.array([len(s) for s in features.seen_items(user_ids)])
        return self.context.features(hists, activity, owner, item_ids, scores, ranks)

    def score(self, user_features: Mapping[str, np.ndarray], item_features: Mapping[str, np.ndarray],
              context: Mapping[str, np.ndarray] | None = None, batch_size: int = 8192,
              calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores n (user, item) pairs.

        Args:
          user_features: raw dict of FeatureStore.user_features for the n pairs' users, [n]
            each, plus "history" when the ranker reads it (see `user_features`).
          item_features: raw dict of FeatureStore.item_features for the n pairs' items, [n] each.
          context: the candidates' context inputs (`candidate_context`) when the ranker reads
            them; None = neutral (all zero), valid for the quality head only.
          batch_size: rows per signature call (bounds memory).
          calibrated: apply the version's engagement calibration (ranker.json "calibration").

        Returns:
          (engagement [n], quality [n]) float32 in [0, 1]: engagement = P(engaged | user,
          candidate) on the served candidate distribution; quality = the normalised rating
          (rating units: ranking.denormalize_quality(q, ranker.rating_scale)).
        """
        inputs = ranker_inputs(user_features, item_features)
        if self.uses_context:
            n = len(next(iter(inputs.values()))) if inputs else 0
            inputs.update(context if context else neutral_context(n))
        return self.score_inputs(inputs, batch_size, calibrated)

    def score_inputs(self, inputs: Mapping[str, np.ndarray], batch_size: int = 8192,
                     calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores the merged input dict of model.ranker_inputs (+ context; same result as `score`)."""
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
        engagement = np.concatenate(outs["engagement"])
        if calibrated:
            gap = inputs.get(CONTEXT_PREFIX + "retrieval_gap")
            engagement = self.calibration.apply(engagement, None if gap is None else np.asarray(gap))
        return engagement, np.concatenate(outs["quality"])


def _tensor(values: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    if dtype == tf.string:
        values = np.asarray(values)
        if values.dtype.kind not in "SU":
            values = values.astype(str)
        return tf.constant(values, dtype=tf.string)
    return tf.constant(np.asarray(values, dtype=dtype.as_numpy_dtype))
