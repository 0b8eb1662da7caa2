"""The training step that fits a version's new-user scorer (features.cooccurrence) and chooses its mixture.

Runs after the ranker (it needs the version's default blend and rating scale): P(j | i) top-K
is fit on every train user's history, and (w, d) is chosen on simulated new users — train
users held out of a second fit (evaluation.selection.select_new_user_mixture) — so nothing
is read from test. Serving, Beam and evaluation load it through RecommendPipeline, which
scores unknown users with logged events by it (source EVENTS).
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import numpy as np

from core import layout
from core.config import config_to_dict
from features import FeatureStore
from features.cooccurrence import ItemCooccurrence, NewUserConfig, conditional_neighbors, engagement_matrix

log = logging.getLogger(__name__)


def fit_new_users(version_dir: pathlib.Path, features: FeatureStore, config: NewUserConfig) -> dict[str, Any]:
    """Fits and saves `<version>/ranking/new_users.npz` for a servable version; returns its manifest record."""
    from evaluation.selection import select_new_user_mixture
    from pipeline import RecommendPipeline

    started = time.perf_counter()
    model = RecommendPipeline.from_version_dir(version_dir, verify=False)
    fallback = model.fallback_candidates
    ids = np.asarray(fallback.item_ids).astype(str)
    order = np.argsort(ids, kind="stable")  # any fixed order; the scorer's rows are the catalogue sorted by id
    ids, quality = ids[order], np.asarray(fallback.quality, dtype=np.float64)[order]
    histories = {str(u): [str(i) for i in items] for u, items in features.seen.items()}
    selection = select_new_user_mixture(histories, ids, quality, model.fallback_weights(), config)
    users = sorted(histories)
    cond = conditional_neighbors(engagement_matrix(histories, users, ids), config.neighbors, config.max_pairs)
    scorer = ItemCooccurrence(ids.astype(object), cond, float(selection["weight"]), float(selection["decay"]))
    path = scorer.save(layout.new_users_file(version_dir))
    k = config.k
    record = {"file": layout.NEW_USERS_FILE, "weight": scorer.weight, "decay": scorer.decay,
              "neighbors": config.neighbors, "nonzeros": int(cond.nnz), "bytes": path.stat().st_size,
              "blend": str(model.fallback_weights()), **{key: v for key, v in selection.items() if key not in
                                                         ("weight", "decay")},
              "seconds": round(time.perf_counter() - started, 1)}
    log.info("new-user scorer: w = %g, d = %g (simulated new users: NDCG@%d %.4f vs the fallback's %.4f), "
             "%d non-zeros", scorer.weight, scorer.decay, k, selection.get(f"ndcg@{k}", float("nan")),
             selection.get(f"fallback_ndcg@{k}", float("nan")), cond.nnz)
    return record


def train_new_users(ctx: Any) -> None:
    """TrainContext step: fit the new-user scorer of a servable version, record it in manifest["new_users"]."""
    config: NewUserConfig = ctx.config.newuser
    if not config.enabled:
        ctx.manifest["new_users"] = {"skipped": "--no-newuser-enabled"}
        return
    if not layout.is_servable(ctx.version_dir):
        log.info("new-user scorer skipped: this version is not servable (no retriever, index or ranker)")
        ctx.manifest["new_users"] = {"skipped": "the version is not servable"}
        return
    ctx.manifest["new_users"] = {"config": config_to_dict(config),
                                 **fit_new_users(ctx.version_dir, ctx.features, config)}
