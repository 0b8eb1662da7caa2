"""The training step that writes a version's drift reference profile (pipeline.profile, drift).

Simulated requests: REFERENCE_REQUESTS rows drawn (seeded, with replacement) from the
validation carve — the most recent activity before the held-out window, so users count
in proportion to how active they were, as they would in request traffic — or from train
when there is no validation carve. Each is answered by the freshly trained version with its
default blend (top REFERENCE_K), and the requests' inputs and the served items' predictions
are profiled (`<version>/monitoring/reference.json`). The server compares its live windows
with it (serving.monitor); `recsys monitor` compares datasets with the same math (drift).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from core import layout

log = logging.getLogger(__name__)

REFERENCE_REQUESTS = 2000
REFERENCE_SEED = 0


def train_profile(ctx: Any) -> None:
    """TrainContext step: profile the servable version, record it in manifest["monitoring"]."""
    from pipeline import RecommendPipeline
    from pipeline.profile import REFERENCE_K, reference_profile

    if not layout.is_servable(ctx.version_dir):
        log.info("drift reference skipped: this version is not servable (no retriever, index or ranker)")
        return
    rows = ctx.split.validation if len(ctx.split.validation) else ctx.split.train
    rng = np.random.default_rng(REFERENCE_SEED)
    users = rows["user_id"].astype(str).to_numpy()[rng.integers(0, len(rows), REFERENCE_REQUESTS)] if len(rows) else []
    model = RecommendPipeline.from_version_dir(ctx.version_dir, verify=False)
    profile = reference_profile(model, list(users), REFERENCE_K, seed=REFERENCE_SEED)
    profile.save(layout.reference_file(ctx.version_dir))
    ctx.manifest["monitoring"] = {
        "reference": layout.REFERENCE_FILE, **profile.meta, "seed": REFERENCE_SEED,
        "population": "validation-carve rows (train when empty), drawn with replacement",
        "quantities": {g: sorted(qs) for g, qs in profile.groups.items()}}
    log.info("drift reference: %d simulated requests, %d users, %s", profile.meta["known_requests"],
             profile.meta["users"], ", ".join(f"{g}: {len(qs)}" for g, qs in profile.groups.items()))
