"""Drift profiles of what the pipeline serves: each request's inputs and the served items' predictions.

The reference profile written at training time (`reference_profile`) and the server's live
windows (serving.monitor) compute their quantities with the same two functions, so a window
is always compared like with like:

  input       per request of a known user: each user categorical feature (frequencies), each
              user numeric feature (quantiles), history_length (the user's train-engaged items)
  prediction  per served item of a model answer (not the fallback): engagement, quality,
              score (the blended score the request's weights produced) and item_popularity
              (the item's train engagement count: the popularity distribution of what is served)

`score` depends on the blend weights: the reference uses the version's defaults, so traffic that
asks for other weights shows up as score drift (engagement and quality do not move with weights).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from core import layout
from drift import Profile, fit_profile
from features import FeatureStore

INPUT, PREDICTION = "input", "prediction"
HISTORY_LENGTH = "history_length"
PREDICTIONS = ("engagement", "quality", "score", "item_popularity")
REFERENCE_K = 10  # served items per reference request (the server's usual num_results)


def input_quantities(features: FeatureStore, user_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (values, kind)} of the model inputs of requests by `user_ids` (one value per request)."""
    columns = features.user_features(user_ids)
    out: dict[str, tuple[np.ndarray, str]] = {c: (columns[c], "categorical") for c in features.spec.user_categorical}
    out.update({c: (np.asarray(columns[c], dtype=np.float64), "numeric") for c in features.spec.user_numeric})
    seen = features.seen
    out[HISTORY_LENGTH] = (np.fromiter((len(seen.get(str(u), ())) for u in user_ids), dtype=np.float64,
                                       count=len(user_ids)), "numeric")
    return out


def prediction_quantities(features: FeatureStore, item_ids: Sequence[str], engagement: np.ndarray,
                          quality: np.ndarray, score: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (values, kind)} of served items (one value per served item, all requests concatenated)."""
    return {"engagement": (np.asarray(engagement, dtype=np.float64), "numeric"),
            "quality": (np.asarray(quality, dtype=np.float64), "numeric"),
            "score": (np.asarray(score, dtype=np.float64), "numeric"),
            "item_popularity": (features.popularity(item_ids).astype(np.float64), "numeric")}


def reference_profile(model: Any, request_users: Sequence[str], k: int = REFERENCE_K, seed: int = 0) -> Profile:
    """The drift reference of a loaded RecommendPipeline over simulated requests.

    Args:
      model: a RecommendPipeline.
      request_users: one user id per simulated request (repeats allowed: a user requesting
        twice counts twice); unknown users are dropped (they get the fallback, not the model).
      k: served items per request, blended with the version's default weights.
      seed: for the KS reference samples.
    """
    known = [str(u) for u in request_users if model.is_known_user(str(u))]
    unique = list(dict.fromkeys(known))
    served: dict[str, tuple[np.ndarray, ...]] = {}
    for user, cands in zip(unique, model.candidates(unique) if unique else []):
        ids, scores, order = model.blend_top_k(cands, model.default_weights, k)
        served[user] = (np.asarray(ids, dtype=object), cands.engagement[order], cands.quality[order], scores)
    parts = [served[u] for u in known]
    ids, e, q, s = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(4))
    w = model.default_weights
    meta = {"model_version": str(model.model_version), "requests": len(request_users), "known_requests": len(known),
            "users": len(unique), "k": k, "weights": {"engagement": w.engagement, "quality": w.quality,
                                                      "mode": w.mode, "transform": w.transform}}
    return fit_profile({INPUT: input_quantities(model.features, known),
                        PREDICTION: prediction_quantities(model.features, ids, e, q, s)}, meta, seed=seed)


def load_reference(version_dir: str | os.PathLike) -> Profile | None:
    """The version's reference profile, or None for a version trained before profiles existed."""
    path = layout.reference_file(version_dir)
    return Profile.load(path) if path.is_file() else None
