"""The ranker's config (no TensorFlow import, so the CLI can build its flags cheaply)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """Architecture, head loss weights and training settings; every field is a CLI flag.

    The defaults are the settings measured on MovieLens-100k in bench/RESULTS.md (ranking).
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
    # The engagement head reads the candidate context (retriever score and rank, similarity to the
    # user's recent items, popularity recency/trend, user activity; ranking.context).
    context: bool = True
    calibration_users: float = 0.2     # share of validation-window users held out to calibrate and select the blend
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
        if self.history_length < 0:
            raise ValueError(f"--history-length must be >= 0, got {self.history_length}")
        if any(h <= 0 for h in self.hidden) or self.head_hidden < 0:
            raise ValueError(f"--hidden sizes must be positive and --head-hidden >= 0, got {self.hidden}, "
                             f"{self.head_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("engagement_weight", "quality_weight", "l2"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be finite and >= 0, got {getattr(self, name)}")
        if self.engagement_weight == 0 and self.quality_weight == 0:
            raise ValueError("--engagement-weight and --quality-weight are both 0; nothing would be trained")
        if not 0.0 < self.calibration_users < 1.0:
            raise ValueError(f"--calibration-users must be in (0, 1), got {self.calibration_users}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        for cross in self.crosses:
            if cross.count("*") != 1 or not all(cross.split("*")):
                raise ValueError(f"--crosses entry {cross!r}: expected USER_COLUMN*ITEM_COLUMN, e.g. occupation*genres")
