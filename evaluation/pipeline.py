"""The full pipeline (retrieve → rank → blend → top-k) as an offline `Recommender`, head diagnostics, blend sweep.

Everything goes through pipeline.RecommendPipeline — the code that serves — so
the offline numbers are the online answers. The sweep computes each test user's
candidate set (both heads) once and re-blends it per weight: the trade-off frontier of
one trained ranker, no retraining, no re-scoring.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from core.errors import ArtifactError, ArtifactMismatchError, InvalidRequestError
from evaluation.baselines import bias_baseline_metrics
from evaluation.calibration import DEFAULT_BINS, expected_calibration_error, reliability_bins
from evaluation.metrics import evaluate_rankings
from evaluation.protocol import EvalData
from pipeline import CandidateSet, PipelineConfig, RecommendPipeline  # TensorFlow loads only with a version
from ranking import BlendWeights, NegativeConfig

log = logging.getLogger(__name__)

Order = Literal["blend", "retrieval", "engagement", "quality"]


@dataclasses.dataclass(frozen=True)
class PipelineEvalConfig:
    """Which trained version to evaluate and how (flags --pipeline-<field>).

    version_dir: the version directory; `recsys evaluate` fills it from --artifacts/--version.
    num_candidates: N retrieved per user (0 = the version's setting).
    engagement_weight / quality_weight: blend weights (< 0 = the version's default).
    blend_mode: "" = the version's default, else additive or multiplicative.
    order: "blend" is the pipeline; "retrieval" ranks the same candidates by the two-tower
      score alone (retrieval-only), "engagement"/"quality" by one head alone.
    diagnostics: also measure the heads on test (engagement AUC, quality RMSE/MAE).
    events: an event table (`recsys events export`'s Parquet directory, see
      features.read_engagements): each test user's engagements in it are merged into their
      history (features.merge_history) and excluded from their candidates, as the server
      does with its live event list ("" = batch history only). The head diagnostics
      (AUC, RMSE) still score batch-history inputs.
    events_before: only events with timestamp < this (seconds) are used; 0 = each user's
      events before their own first test interaction (never the test period itself).
    """

    version_dir: str = ""
    num_candidates: int = 0
    engagement_weight: float = -1.0
    quality_weight: float = -1.0
    blend_mode: Literal["", "additive", "multiplicative"] = ""
    order: Order = "blend"
    diagnostics: bool = True
    verify: bool = True
    events: str = ""
    events_before: int = 0

    def __post_init__(self) -> None:
        if self.events_before < 0:
            raise ValueError(f"--pipeline-events-before must be >= 0 (0 = each user's first test interaction), "
                             f"got {self.events_before}")


class PipelineRecommender:
    """`Recommender` over a trained version's RecommendPipeline (fit loads, never trains)."""

    config_cls = PipelineEvalConfig

    def __init__(self, config: PipelineEvalConfig = PipelineEvalConfig(),
                 pipeline: RecommendPipeline | None = None,
                 recent: dict[str, tuple[str, ...]] | None = None) -> None:
        """`recent`: user → streamed engagements (newest first) to merge into each user's history instead
        of reading `config.events` — how an older version that serves while new data streams in is scored
        on a later window (workflows.retrain); the version's train items plus these must then be the
        evaluation's train items (check_same_split)."""
        if config.order not in ("blend", "retrieval", "engagement", "quality"):
            raise ValueError(f"--pipeline-order must be blend, retrieval, engagement or quality; got {config.order!r}")
        self.config = config
        self.name = "pipeline" if config.order == "blend" else f"pipeline[{config.order}]"
        self.pipeline = pipeline
        self._data: EvalData | None = None
        self._columns: pd.Index | None = None
        self.diagnostics: dict[str, float] = {}  # head_diagnostics on test, filled by fit
        self.recent: dict[str, tuple[str, ...]] = {}  # user → streamed engagements, newest first (config.events)
        self._given_recent = recent

    @property
    def weights(self) -> BlendWeights:
        base = self.pipeline.default_weights
        if self.config.blend_mode and self.config.blend_mode != base.mode:
            base = BlendWeights(base.engagement, base.quality, mode=self.config.blend_mode)
        e, q = self.config.engagement_weight, self.config.quality_weight
        if e >= 0 or q >= 0:
            base = base.with_weights(e if e >= 0 else base.engagement, q if q >= 0 else base.quality)
        return base

    def fit(self, data: EvalData) -> None:
        """Loads the version (unless a pipeline was given) and checks it was trained on `data`'s split."""
        if self.pipeline is None:
            if not self.config.version_dir:
                raise ArtifactError("pipeline needs a trained version: run `recsys train` first, or pass "
                                    "--artifacts/--version")
            self.pipeline = RecommendPipeline.from_version_dir(self.config.version_dir, verify=self.config.verify)
            log.info("pipeline: evaluating version %s", self.config.version_dir)
        if self.config.num_candidates:
            self.pipeline.config = dataclasses.replace(self.pipeline.config, num_candidates=self.config.num_candidates)
        self.recent = events_history(self.config, data) if self._given_recent is None else dict(self._given_recent)
        check_same_split(self.pipeline, data, self.recent if self._given_recent is not None else None)
        self._data = data
        self._columns = pd.Index(np.asarray(data.item_ids).astype(str))
        self.diagnostics = head_diagnostics(self, data) if self.config.diagnostics else {}
        if self.diagnostics and self.config.version_dir:
            from core import registry

            manifest = registry.read_manifest(pathlib.Path(self.config.version_dir))
            selection = manifest.get("ranking", {}).get("selection")
            if selection:
                self.diagnostics["validation_selection"] = selection
        if self.diagnostics:
            log.info("pipeline heads on test: %s", ", ".join(f"{k} {v:.4f}" for k, v in self.diagnostics.items()
                                                             if isinstance(v, float)))

    def candidate_sets(self, user_rows: np.ndarray) -> list[CandidateSet]:
        """Both-head candidate sets of the given EvalData user rows (train items excluded)."""
        if self._data is None:
            raise RuntimeError("PipelineRecommender.candidate_sets called before fit")
        users = list(self._data.user_ids[np.asarray(user_rows, dtype=np.int64)])
        recent = [self.recent.get(str(u), ()) for u in users] if self.recent else None
        return self.pipeline.candidates(users, recent=recent)

    def rank(self, cands: Sequence[CandidateSet], k: int, weights: BlendWeights | None = None,
             order: Order | None = None) -> np.ndarray:
        """[len(cands), k] catalogue columns of each candidate set's top k, -1 padded."""
        order = order or self.config.order
        weights = weights or self.weights
        out = np.full((len(cands), k), -1, dtype=np.int64)
        for r, c in enumerate(cands):
            if order == "blend":
                ids = self.pipeline.blend_top_k(c, weights, k)[0]
            else:
                key = {"retrieval": c.retrieval_scores, "engagement": c.engagement, "quality": c.quality}[order]
                ids = c.item_ids[np.argsort(-np.asarray(key, dtype=np.float64), kind="stable")[:k]]
            cols = self._columns.get_indexer(ids)
            out[r, :len(cols)] = cols
        return out

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        return self.rank(self.candidate_sets(user_rows), k)


def events_history(config: PipelineEvalConfig, data: EvalData) -> dict[str, tuple[str, ...]]:
    """Each user's engagements of `config.events` up to the cut-off, newest first ({} without events).

    Cut-off: timestamp < config.events_before, or (0) < the user's first test interaction.
    """
    if not config.events:
        return {}
    from features import read_engagements, recent_by_user

    events = read_engagements(config.events, config.events_before, flag="--pipeline-events")
    before = None
    if not config.events_before:
        test = data.split.test
        before = test.groupby(test["user_id"].astype(str))["timestamp"].min().astype("int64").to_dict()
    recent = recent_by_user(events, before)
    log.info("pipeline: %d events of %d users merged into their history from %s",
             sum(map(len, recent.values())), len(recent), config.events)
    return recent


def check_same_split(pipeline: RecommendPipeline, data: EvalData,
                     recent: dict[str, tuple[str, ...]] | None = None) -> None:
    """ArtifactMismatchError unless the version's train-seen items (plus each user's `recent` streamed
    engagements, when given) are exactly `data.train`'s.

    The evaluation excludes data.train's items and the pipeline excludes the version's seen
    items (and the recent ones); they must agree, or the version was trained on another source or split.
    """
    seen = pipeline.features.seen
    if recent:
        seen = {u: tuple(dict.fromkeys((*seen.get(u, ()), *recent.get(u, ()))))
                for u in set(seen) | set(recent)}
    train = data.train.tocsr()
    n_pairs = int(train.nnz)
    n_seen = sum(len(v) for v in seen.values())
    users_ok = n_pairs == n_seen
    if users_ok:
        for r in np.linspace(0, len(data.user_ids) - 1, num=min(50, len(data.user_ids)), dtype=np.int64):
            cols = train.indices[train.indptr[r]:train.indptr[r + 1]]
            if set(data.item_ids[cols]) != set(seen.get(str(data.user_ids[r]), ())):
                users_ok = False
                break
    if not users_ok:
        raise ArtifactMismatchError(
            f"the model version was trained on another data source or split ({n_seen} train pairs, this evaluation "
            f"has {n_pairs}); evaluate with the same --source and split flags as `recsys train`, or retrain")


def head_diagnostics(rec: PipelineRecommender, data: EvalData, neg: NegativeConfig = NegativeConfig(),
                     max_users: int = 0) -> dict[str, float]:
    """Engagement AUC and quality RMSE/MAE of the ranker on the test split.

    AUC: test engagements against the test log's non-engaged impressions where it has
    them, else against negatives sampled like the training ones (half from the user's
    retrieved candidates, half by popularity; never an item the user engaged with in train
    or test), so it is measured on the distribution the ranker serves. RMSE/MAE: the
    quality head in rating units against every rated test engagement. See
    ranking.head_metrics for the exact definitions. bias_baseline_rmse/_mae: the bias-only
    rating baseline μ + b_u + b_i (evaluation.baselines.bias_baseline_metrics, fit on
    train, reg chosen on validation) on the same rated rows, the bar the quality head must clear.
    """
    from ranking import diagnose, evaluation_rows

    pipeline = rec.pipeline
    test = data.split.test
    if max_users:
        keep = np.asarray(sorted(test["user_id"].unique()))[:max_users]
        test = test.loc[test["user_id"].isin(keep)]

    def generator(users: Sequence[str]) -> list[np.ndarray]:
        return [c.item_ids for c in pipeline.candidates(users)]

    rows = evaluation_rows(test, pipeline.features, neg, data.split.train, candidates=generator)
    return {**diagnose(pipeline.ranker, rows, pipeline.features), **bias_baseline_metrics(data.split, rows),
            **served_calibration(pipeline, test)}


def served_calibration(pipeline: RecommendPipeline, test: pd.DataFrame, bins: int = DEFAULT_BINS,
                       recent: dict[str, tuple[str, ...]] | None = None) -> dict:
    """The engagement head on the candidates the server scores: every test user with a test
    engagement, each of their served top-N candidates (train items excluded), label = the
    candidate is among the user's test engagements. Pooled over all those pairs:

      candidate_engagement_auc / candidate_retrieval_auc — ROC AUC of the served engagement
        and of the retriever's score (ranking.head_metrics' definition) on the same pairs;
      engagement_ece — expected calibration error over `bins` equal-mass bins
        (evaluation.calibration), reliability_bins its table;
      mean_engagement / engaged_rate — mean served engagement and the observed rate;
      candidate_pairs / candidate_positives — how many pairs and engaged ones.
    `recent`: user → streamed engagements merged into the history (PipelineRecommender.recent).
    """
    from ranking import head_metrics

    engaged = test.loc[test["engaged"] == 1]
    users = sorted(engaged["user_id"].astype(str).unique())
    pos = set(zip(engaged["user_id"].astype(str), engaged["item_id"].astype(str)))
    e, r, y = [], [], []
    for lo in range(0, len(users), 256):
        batch = users[lo:lo + 256]
        batch_recent = [recent.get(u, ()) for u in batch] if recent else None
        for u, c in zip(batch, pipeline.candidates(batch, recent=batch_recent)):
            e.append(np.asarray(c.engagement, dtype=np.float64))
            r.append(np.asarray(c.retrieval_scores, dtype=np.float64))
            y.append(np.fromiter(((u, str(i)) in pos for i in c.item_ids), dtype=bool, count=len(c.item_ids)))
    if not e or not sum(len(x) for x in e):
        return {}
    e, r, y = np.concatenate(e), np.concatenate(r), np.concatenate(y)
    nan = np.full(len(e), np.nan)
    return {
        "candidate_engagement_auc": head_metrics(e, y, e, nan)["engagement_auc"],
        "candidate_retrieval_auc": head_metrics(r, y, e, nan)["engagement_auc"],
        "engagement_ece": expected_calibration_error(e, y, bins),
        "mean_engagement": float(e.mean()), "engaged_rate": float(y.mean()),
        "candidate_pairs": int(len(e)), "candidate_positives": int(y.sum()),
        "engagement_calibrated": bool(pipeline.engagement_calibrated),
        "reliability_bins": reliability_bins(e, y, bins),
    }


def parse_sweep(text: str) -> list[float]:
    """"0,0.25,0.5" or "0:1:5" (start:stop:count) → quality shares α in [0, 1]."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            values = list(np.linspace(float(start), float(stop), int(count)))
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise InvalidRequestError(f"--sweep-blend {text!r}: expected comma-separated shares like 0,0.5,1 or "
                                  f"start:stop:count like 0:1:11") from e
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise InvalidRequestError(f"--sweep-blend {text!r}: quality shares must be in [0, 1]")
    return [round(v, 6) for v in values]


def _hit_ratings(ranked: np.ndarray, data: EvalData, k: int) -> tuple[float, float]:
    """(mean rating of the top-k hits over all hits, share of hits rated >= 4)."""
    gain = data.test_gain[data.test_users].tocsr()
    ratings = []
    for r, row in enumerate(ranked[:, :k]):
        cols = row[row >= 0]
        lo, hi = gain.indptr[r], gain.indptr[r + 1]
        got = dict(zip(gain.indices[lo:hi], gain.data[lo:hi]))
        ratings.extend(got[c] for c in cols if c in got)
    if not ratings:
        return float("nan"), float("nan")
    arr = np.asarray(ratings)
    return float(arr.mean()), float((arr >= 4).mean())


def sweep_blend(rec: PipelineRecommender, data: EvalData, shares: Sequence[float],
                mode: Literal["additive", "multiplicative"] | None = None, k: int = 10,
                transform: Literal["identity", "log", "logit"] | None = None) -> pd.DataFrame:
    """Metrics of the pipeline for each quality share α, from one set of candidates.

    Weights per α: engagement = 1 - α, quality = α, in `mode` (default: the version's),
    i.e. additive (1-α)·f(e) + α·f(q) or multiplicative e^(1-α) · q^α. α = 0 ranks by
    engagement alone, α = 1 by quality alone.

    Returns:
      One row per α: the engagement metrics (binary ndcg@k, map@k, recall@k), the quality
      metrics (ndcg_graded@k: rating as gain; mean_hit_rating@k: mean test rating of the
      top-k items that were hits; hit_rating_4plus@k: the share of those rated 4 or 5) and
      mean_pred_quality@k / mean_pred_engagement@k (the heads' own view of the top k);
      clickbait_share@k where the items carry an item_type column (synthetic data): the
      share of top-k slots holding an item_type == "clickbait" item.
    """
    base = rec.weights
    mode = mode or base.mode
    transform = transform or (base.transform if mode == "additive" else "identity")
    started = time.perf_counter()
    cands = rec.candidate_sets(data.test_users)
    items = rec.pipeline.features.items
    # Synthetic data plants "clickbait" items (engaging, low quality): report their share of each top k.
    clickbait = (frozenset(items.index[items["item_type"].astype(str) == "clickbait"].astype(str))
                 if "item_type" in items.columns else None)
    log.info("sweep: candidate sets for %d users in %.1fs", len(cands), time.perf_counter() - started)
    rows = []
    for alpha in shares:
        w = BlendWeights(engagement=1.0 - alpha, quality=alpha, mode=mode, transform=transform) if 0 < alpha < 1 else \
            BlendWeights(engagement=float(alpha == 0), quality=float(alpha == 1), mode=mode, transform=transform)
        ranked = rec.rank(cands, k, weights=w, order="blend")
        m = evaluate_rankings(ranked, data, ks=(k,))
        mean_rating, share_4 = _hit_ratings(ranked, data, k)
        pred_e, pred_q, flagged = [], [], []
        for c in cands:
            order = rec.pipeline.blend_top_k(c, w, k)[2]
            pred_e.extend(c.engagement[order])
            pred_q.extend(c.quality[order])
            if clickbait is not None:
                flagged.extend(c.item_ids[j] in clickbait for j in order)
        rows.append({"quality_share": alpha, "engagement_weight": w.engagement, "quality_weight": w.quality,
                     "mode": mode, f"ndcg@{k}": m[f"ndcg@{k}"], f"map@{k}": m[f"map@{k}"],
                     f"recall@{k}": m[f"recall@{k}"], f"ndcg_graded@{k}": m[f"ndcg_graded@{k}"],
                     f"mean_hit_rating@{k}": mean_rating, f"hit_rating_4plus@{k}": share_4,
                     f"mean_pred_engagement@{k}": float(np.mean(pred_e)) if pred_e else float("nan"),
                     f"mean_pred_quality@{k}": float(1 + 4 * np.mean(pred_q)) if pred_q else float("nan"),
                     **({f"clickbait_share@{k}": float(np.mean(flagged)) if flagged else float("nan")}
                        if clickbait is not None else {})})
    return pd.DataFrame(rows)


def plot_sweep(sweep: pd.DataFrame, path: str | pathlib.Path, k: int = 10, title: str = "") -> pathlib.Path:
    """Engagement metric (binary NDCG@k) against two quality metrics, one point per α."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    x = sweep[f"ndcg@{k}"]
    for ax, col, label in ((axes[0], f"ndcg_graded@{k}", f"graded NDCG@{k} (rating as gain)"),
                           (axes[1], f"mean_hit_rating@{k}", f"mean test rating of top-{k} hits")):
        ax.plot(x, sweep[col], "o-", color="tab:blue")
        for xv, yv, a in zip(x, sweep[col], sweep["quality_share"]):
            ax.annotate(f"α={a:g}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"engagement: binary NDCG@{k}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"Blend sweep ({sweep['mode'].iloc[0]}): engagement share 1-α, quality share α")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_sweep(data: EvalData, config: PipelineEvalConfig, shares: Sequence[float], out_dir: str | pathlib.Path,
              mode: Literal["additive", "multiplicative"] | None = None, k: int = 10,
              pipeline: RecommendPipeline | None = None, diagnostics: dict | None = None) -> pd.DataFrame:
    """Loads the version, sweeps the blend and writes sweep.csv, sweep.json and sweep.png into `out_dir`.

    This is what `recsys evaluate --sweep-blend SHARES` runs. `pipeline` reuses a loaded
    version; `diagnostics` (head_diagnostics already measured) skips measuring them again.
    """
    rec = PipelineRecommender(dataclasses.replace(config, diagnostics=config.diagnostics and diagnostics is None),
                              pipeline)
    rec.fit(data)
    diagnostics = diagnostics if diagnostics is not None else rec.diagnostics
    mode = mode or (config.blend_mode or None)
    sweep = sweep_blend(rec, data, shares, mode=mode, k=k)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out / "sweep.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({"config": dataclasses.asdict(config),
                                                "pipeline": dataclasses.asdict(rec.pipeline.config),
                                                "model_version": rec.pipeline.model_version, "k": k,
                                                "head_diagnostics": diagnostics,
                                                "rows": sweep.to_dict(orient="records")}, indent=2))
    plot_sweep(sweep, out / "sweep.png", k)
    log.info("blend sweep written to %s", out)
    return sweep


__all__ = ["PipelineEvalConfig", "PipelineRecommender", "PipelineConfig", "check_same_split", "events_history",
           "head_diagnostics", "parse_sweep", "served_calibration", "sweep_blend", "plot_sweep", "run_sweep"]


GATE_METRICS = ("ndcg@10", "mean_hit_rating@10", "engagement_ece")


def gate_metrics(rec: PipelineRecommender, data: EvalData, k: int = 10, batch_size: int = 1024) -> dict[str, float]:
    """The headline numbers of one version on `data`'s test window, by `recsys evaluate`'s code:
    ndcg@k (and every metric of evaluate_rankings) from rank_users → evaluate_rankings, mean_hit_rating@k
    (the mean test rating of the top-k hits, as in the blend sweep), and engagement_ece / candidate AUC
    of the served candidates (served_calibration, as in the head diagnostics). Fits `rec` on `data`."""
    from evaluation.baselines import rank_users

    started = time.perf_counter()
    rec.fit(data)
    ranked = rank_users(rec, data.test_users, k, batch_size)
    out = dict(evaluate_rankings(ranked, data, (k,)))
    out[f"mean_hit_rating@{k}"], out[f"hit_rating_4plus@{k}"] = _hit_ratings(ranked, data, k)
    calibration = served_calibration(rec.pipeline, data.split.test, recent=rec.recent)
    out.update({key: v for key, v in calibration.items() if key != "reliability_bins"})
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out
