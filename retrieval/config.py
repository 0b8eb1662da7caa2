"""Retrieval-stage configs (no TensorFlow or FAISS import, so the CLI can build its flags cheaply)."""
from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    """Architecture and training settings; every field is a `recsys train` flag.

    The defaults are the best settings measured on MovieLens-100k (bench/RESULTS.md).
    """

    embedding_dim: int = 64          # output dimension d of both towers (= the FAISS index dim)
    id_dim: int = 64                 # user_id / item_id embedding width
    feature_dim: int = 16            # width of each side-feature embedding
    hidden: tuple[int, ...] = ()     # optional ReLU layers before each tower's projection
    user_features: bool = True       # use side features beyond user_id
    item_features: bool = True       # use side features beyond item_id
    history_length: int = 20         # user tower also reads the user's last N engaged item ids (0 = off)
    user_id_dropout: float = 0.0     # share of training pairs whose user id is the OOV bucket (cold start; 0 = off)
    normalize: bool = True           # L2-normalise outputs, so scores are cosines / temperature
    temperature: float = 0.1         # softmax temperature (logits = scores / temperature)
    logq: bool = True                # sampling-bias (logQ) correction from train item frequencies
    epochs: int = 30                 # maximum epochs; early stopping usually ends sooner
    patience: int = 3                # epochs without validation improvement before stopping
    monitor: Literal["recall_at_100", "ndcg_at_10"] = "recall_at_100"  # validation metric to select epochs
    refit: bool = True               # after selecting epochs on fit/validation, retrain on all of train
    batch_size: int = 1024
    # Users the validation/test metrics score against the whole catalogue (users × items work):
    # 0 = every held-out user; N = a seeded sample of N (for catalogues and user bases at scale).
    eval_max_users: int = 0
    learning_rate: float = 0.01      # Adam
    l2: float = 0.0                  # L2 penalty on embedding tables
    seed: int = 42
    progress: bool = True            # Keras progress bars

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "id_dim", "feature_dim", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.user_id_dropout < 1.0:
            raise ValueError(f"--user-id-dropout must be in [0, 1), got {self.user_id_dropout}")
        if self.patience < 0 or self.l2 < 0 or self.history_length < 0 or self.eval_max_users < 0:
            raise ValueError("--patience, --l2, --history-length and --eval-max-users must be >= 0")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """How to build and query the index.

    `factory` is any `faiss.index_factory` string: "Flat" (exact, the default: right for
    catalogues up to ~100k), "IVF4096,Flat" / "HNSW32" / "IVF4096,PQ32" / "IVF1024,SQ8" for
    large catalogues. `nprobe` applies to IVF indexes and `ef_search` to HNSW ones.

    The large-catalogue setting is `--index-factory IVF4096,Flat` with the default nprobe
    128: on a clustered 1M × 64 catalogue it keeps recall@100 ≥ 0.95 against exact search
    at ≥ 10× its throughput (bench/ann.py, bench/RESULTS.md). The defaults of nprobe and
    ef_search are the smallest values that reached recall@100 ≥ 0.95 there.
    """

    factory: str = "Flat"
    metric: Literal["ip", "l2"] = "ip"
    nprobe: int = 128             # IVF lists visited per query (of nlist; 128/4096 ≈ 3% of the items)
    ef_search: int = 512          # HNSW search beam width (must be >= the N searched for)
    train_size: int = 200_000     # at most this many vectors (sampled, seeded) train IVF/PQ quantisers
    recall_n: int = 100           # N of the recall@N vs exact search recorded at build
    recall_queries: int = 1000    # queries used to measure it
    threads: int = 0              # faiss OpenMP threads; 0 = faiss's default (all cores)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.factory.strip():
            raise ValueError("--factory must be a faiss.index_factory string such as 'Flat' or 'IVF1024,Flat'")
        if min(self.nprobe, self.ef_search, self.train_size, self.recall_n) <= 0 or self.recall_queries < 0:
            raise ValueError("--nprobe, --ef-search, --train-size and --recall-n must be positive")
