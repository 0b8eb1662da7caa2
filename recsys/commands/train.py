"""`recsys train`: flags and config file → TrainConfig → workflows.train.train → a printed summary."""
from __future__ import annotations

import argparse
import pathlib

from core.config import ConfigError, build_config
from recsys.commands import add_command
from recsys.commands._data import DATA_HELP, data_from_version

_HELP = {
    "run": {"stages": "stages to train", "promote": "point CURRENT at the new version when done (only a version "
                                                    "serving can load: retriever, index and ranker)",
            "base_version": "reuse this version's features, retriever and index byte-identical and train the "
                            "other stages (ranking) on them; data settings come from its manifest",
            "artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)",
            "new_version": "name of the new version (empty = v<UTC time>-<random>)",
            "epochs": "override every stage's maximum epochs (0 = each stage's own default); for smoke runs"},
    "retrieval": {"monitor": "validation metric that selects the epoch count",
                  "refit": "retrain on all of train for the selected epochs",
                  "logq": "sampling-bias (logQ) correction",
                  "eval_max_users": "held-out users the validation/test metrics score against the whole catalogue "
                                    "(0 = all; N = a seeded sample of N: that work is users × items, for large "
                                    "data)"},
    "index": {"factory": "faiss.index_factory string: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16 ..."},
    "ranking": {"crosses": "wide crossed features USER_COL*ITEM_COL (empty = every user × item categorical pair)",
                "retrieval_weight": "β: served engagement = σ(a·(ranker logit + β·(retrieval score - 1)) + b), the "
                                    "version's two-tower (0 = ranker alone; < 0 = chosen on validation from "
                                    "--ranking-retrieval-weight-grid)",
                "retrieval_weight_grid": "the β values tried on the validation carve (by NDCG@10 of the served "
                                         "candidate lists)",
                "calibrate": "Platt-calibrate the served engagement (a, b) on the validation carve's served "
                             "candidates, so it is P(engaged | user, candidate)",
                "selection_max_users": "validation users whose served candidates β, calibration, stacking and the "
                                       "blend are chosen on (0 = all; N = a seeded sample of N, for large data)",
                "select_blend": "choose the version's default blend on validation (best NDCG@10 whose mean hit "
                                "rating >= the engagement-only blend's); off = --pipeline-* weights"},
    "pipeline": {"num_candidates": "N: FAISS candidates the ranker scores per user"},
    **{f"data.{k}": v for k, v in DATA_HELP.items()},
}


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.train import TrainConfig

    p = add_command(sub, "train", TrainConfig, run, help_text=_HELP, build=_build,
                    description="Loads the data, splits it, fits the feature store on train, trains each stage "
                                "(two-tower retrieval + FAISS index, ranker) into a new version directory "
                                "<artifacts>/<version>/, seals it with a checksummed manifest.json and points "
                                "CURRENT at it (when serving can load it). With --base-version V the new version "
                                "reuses V's features, retriever and index byte-identical and trains the ranker on "
                                "them, on V's data (taken from V's manifest).")
    # `--version` reads an existing version in every command; train writes a new one (--new-version).
    p.add_argument("--version", dest="misplaced_version", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _build(args: argparse.Namespace):
    """Defaults ← file ← flags; with --base-version, V's data settings are the defaults of the data section."""
    from workflows.index import artifacts_root
    from workflows.train import TrainConfig

    if hasattr(args, "misplaced_version"):
        raise ConfigError(f"--version names an existing version to read; name the version train writes with "
                          f"--new-version {args.misplaced_version} (and reuse a trained retriever with --base-version)")
    config = build_config(TrainConfig, args)
    if not config.run.base_version:
        return config
    base = data_from_version(TrainConfig, args, artifacts_root(config.run.artifacts), config.run.base_version,
                             override=False, flag="--base-version",
                             remedy="its features and retriever fit its own split only: drop them")
    return build_config(TrainConfig, args, base=base)


def run(config, args: argparse.Namespace) -> int:
    from workflows.train import train

    result = train(config)
    _print_summary(result.manifest, result.version_dir, result.promoted)
    if result.not_promoted:
        print(f"  not promoted: {result.not_promoted}")
    return 0


def _print_summary(manifest: dict, version_dir: pathlib.Path, promoted: bool) -> None:
    print(f"version {version_dir.name} written to {version_dir}{' and promoted (CURRENT)' if promoted else ''} "
          f"in {manifest['train_seconds']:.0f} s")
    if manifest.get("base_version"):
        print(f"  features, retriever and index reused byte-identical from {manifest['base_version']}")
    r = manifest.get("retrieval")
    if r:
        val = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"]["validation"].items())
        test = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"]["test_exact"].items())
        print(f"  two-tower: best epoch {r['best_epoch']} of {r['epochs_run']} (validation {val}); final model "
              f"trained on {r['trained_on']} for {r['final_epochs']} epochs in {r['training_seconds']:.0f} s")
        print(f"  two-tower test (exact search): {test}")
    i = manifest.get("index")
    if i:
        print(f"  index {i['factory']}: {i['size']} items × {i['dim']}, recall@{i.get('recall_n')} vs exact "
              f"{i.get('recall_at_n', float('nan')):.4f}")
    rk = manifest.get("ranking")
    if rk:
        d = rk["test_diagnostics"]
        print(f"  ranker: {rk['training']['examples']} examples ({rk['negatives']['resolved_source']} negatives) in "
              f"{rk['training']['seconds']:.0f} s; test engagement AUC {d.get('engagement_auc', float('nan')):.4f}, "
              f"quality RMSE {d.get('quality_rmse', float('nan')):.4f} / MAE {d.get('quality_mae', float('nan')):.4f}")
