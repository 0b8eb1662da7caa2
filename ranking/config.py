"""The ranker's config (no TensorFlow import, so the CLI can build its flags cheaply)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """Architecture, head loss weights and training settings; every field is a CLI flag.

    Architecture defaults were measured on MovieLens-100k (bench/RESULTS.md, ranking); every
    data-dependent choice (the retrieval fusion weight β, the engagement calibration, the
    version's default blend) is made per training run on the validation carve
    (ranking.selection), never a dataset constant.
    """

    id_dim: int = 32                   # user_id / item_id embedding width
    feature_dim: int = 8               # width of each side-feature embedding
    history_length: int = 50           # most recent train items of the user as a feature (0 = off)
    hidden: tuple[int, ...] = (128, 64)  # shared-bottom ReLU layers
    head_hidden: int = 32              # one ReLU layer per head on top of the shared bottom (0 = none)
    dropout: float = 0.1               # after each shared-bottom layer
    crosses: tuple[str, ...] = ()      # wide crosses "user_col*item_col", e.g. occupation*genres; empty = auto
    wide_buckets: int = 200_003        # hash buckets shared by all crossed features
    engagement_weight: float = 1.0     # loss weight of the engagement head (BCE)
    quality_weight: float = 1.0        # loss weight of the quality head (masked MSE on normalised rating)
    # β: when serving, the engagement logit adds β · (the retrieval model's user·item score - 1)
    # (a frozen copy of the trained two-tower inside the ranker; not during training). 0 = off;
    # < 0 (default) = chosen per training run on the validation carve from retrieval_weight_grid.
    retrieval_weight: float = -1.0
    retrieval_weight_grid: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    calibrate: bool = True             # Platt-calibrate the served engagement on the validation carve
    select_blend: bool = True          # choose the version's default blend on validation (else --pipeline-*)
    quality_baseline: bool = True      # quality head = residual on the user+item bias baseline fit on train
    # The stacked engagement model (ranking.stacking): a logistic regression over the heads, the
    # retrieval score and graph features, fit on the validation carve's served candidates; served
    # instead of fusion + Platt when its out-of-fold validation ndcg@10 is at least the fused head's.
    stack: bool = True
    stack_l2: float = 1.0              # its ridge penalty (standardised weights, in examples)
    # Validation users whose served candidates the choices above (β, calibration, stacking, blend)
    # are made on: 0 = every validation user with an engagement; N = a seeded sample of N (each
    # costs --pipeline-num-candidates ranker calls; for user bases at scale).
    selection_max_users: int = 0
    l2: float = 1e-6                   # L2 penalty on embedding tables (per example)
    learning_rate: float = 2e-3        # Adam
    batch_size: int = 1024
    epochs: int = 4
    seed: int = 42
    progress: bool = True              # Keras progress bars

    def __post_init__(self) -> None:
        for name in ("id_dim", "feature_dim", "wide_buckets", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.history_length < 0 or self.selection_max_users < 0:
            raise ValueError(f"--history-length and --selection-max-users must be >= 0, got {self.history_length}, "
                             f"{self.selection_max_users}")
        if any(h <= 0 for h in self.hidden) or self.head_hidden < 0:
            raise ValueError(f"--hidden sizes must be positive and --head-hidden >= 0, got {self.hidden}, "
                             f"{self.head_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not np.isfinite(self.retrieval_weight):
            raise ValueError(f"--retrieval-weight must be finite (< 0 = chosen on validation), got {self.retrieval_weight}")
        if not self.retrieval_weight_grid or any(not np.isfinite(b) or b < 0 for b in self.retrieval_weight_grid):
            raise ValueError(f"--retrieval-weight-grid must list finite weights >= 0, got {self.retrieval_weight_grid}")
        for name in ("engagement_weight", "quality_weight", "l2", "stack_l2"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be finite and >= 0, got {getattr(self, name)}")
        if self.engagement_weight == 0 and self.quality_weight == 0:
            raise ValueError("--engagement-weight and --quality-weight are both 0; nothing would be trained")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        for cross in self.crosses:
            if cross.count("*") != 1 or not all(cross.split("*")):
                raise ValueError(f"--crosses entry {cross!r}: expected USER_COLUMN*ITEM_COLUMN, e.g. occupation*genres")
