"""Ranker scoring throughput: the exported SavedModel signature vs the traced model and a FLOP bound.

Trains the default-architecture wide & deep ranker (RankerConfig defaults: ids, side
features, 50-item history, wide crosses, 128-64 bottom, two heads) on MovieLens-100k for
one epoch, exports it, loads it back with ranking.Ranker, and scores the same (user, item)
pairs in batches of 1, 50, 200 and 1000 through:

  keras_graph     model(batch, training=False) traced once as a tf.function (ranking.predict's
                  path) — the reference: the same graph with no export or conversion around it
  keras_eager     the same call run eagerly, op by op (for scale; not a reference)
  saved_model     the loaded SavedModel's serving signature, same input tensors
  ranker_score    Ranker.score end to end: raw numpy feature dicts in, numpy heads out
                  (includes building the string tensors, as serving does)
  flop_bound      what the dense layers alone would allow: this run's measured float32 matmul
                  rate (TF, same thread settings) / the model's dense multiply-adds per pair
                  (2 × Σ in·out over Dense layers); embedding lookups, string hashing and the
                  wide part are not counted, so no path can reach it

Every figure is pairs/s (best of `--repeats` timed rounds of `--calls` calls, after a warm-up)
and its ratio to keras_graph at the same batch size in the same run; the scores of the
SavedModel and the traced Keras call are checked to be identical first.

  nice -n 10 .venv/bin/python bench/ranker.py
  nice -n 10 .venv/bin/python bench/ranker.py --calls 50 --repeats 3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.tf_env import tf  # noqa: E402
from features import SplitConfig, fit_feature_store, load_movielens_100k, split_interactions  # noqa: E402
from ranking import NegativeConfig, Ranker, RankerConfig, export_ranker, train_ranker, training_rows  # noqa: E402
from ranking.model import ranker_inputs, user_inputs  # noqa: E402
from ranking.train import _graph_call  # noqa: E402


def timed(fn, calls: int, repeats: int) -> float:
    """Best-of-`repeats` seconds per call of `fn` (each round `calls` calls), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def dense_flops_per_pair(model) -> int:
    """2 × Σ in·out over the model's Dense layers: the multiply-adds of one (user, item) pair."""
    from core.tf_env import keras

    return sum(2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
               for layer in model.submodules if isinstance(layer, keras.layers.Dense))


def matmul_flops_per_s(repeats: int) -> float:
    """This process's float32 matmul rate through TensorFlow (the thread settings in force)."""
    a = tf.random.stateless_normal([512, 512], seed=[1, 2])
    b = tf.random.stateless_normal([512, 512], seed=[3, 4])
    mm = tf.function(lambda: tf.matmul(a, b))
    secs = timed(lambda: mm().numpy(), 20, repeats)
    return 2 * 512 ** 3 / secs


def to_tensors(inputs: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v.astype(str)) if v.dtype == object else tf.constant(v.astype(np.float32))
            for k, v in inputs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 50, 200, 1000])
    ap.add_argument("--calls", type=int, default=0, help="calls per timed round (0 = about 20k pairs, 20..400)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="TF intra/inter-op threads (1 = one core per call)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    dataset = load_movielens_100k()
    split = split_interactions(dataset.interactions, SplitConfig())
    features = fit_feature_store(dataset, split.train)
    config = RankerConfig(epochs=1, progress=False)
    t0 = time.perf_counter()
    model, info = train_ranker(training_rows(split, features, NegativeConfig(source="sampled"), config.history_length),
                               features, config)
    print(f"trained the default ranker for 1 epoch on {info['examples']} rows in {time.perf_counter() - t0:.0f} s")
    tmp = tempfile.TemporaryDirectory(prefix="bench-ranker-")
    export_ranker(model, os.path.join(tmp.name, "ranking"), info)
    ranker = Ranker.load(os.path.join(tmp.name, "ranking"))

    # Serving-shaped pairs: one user's candidates per call would repeat the user; use test rows.
    rows = split.test.sample(max(args.batches), replace=True, random_state=0)
    users, items = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    user_raw = user_inputs(features, users, config.history_length)
    item_raw = features.item_features(items)
    graph = _graph_call(model)
    flops_pair = dense_flops_per_pair(model)
    flops_rate = matmul_flops_per_s(args.repeats)
    bound = flops_rate / flops_pair
    print(f"dense multiply-adds per pair: {flops_pair / 2:,.0f}; measured matmul rate {flops_rate / 1e9:.1f} GFLOP/s "
          f"→ FLOP bound {bound:,.0f} pairs/s", flush=True)
    results = []
    for b in args.batches:
        inputs = ranker_inputs({k: v[:b] for k, v in user_raw.items()}, {k: v[:b] for k, v in item_raw.items()})
        tensors = to_tensors(inputs)
        fn = ranker._fn
        sm = fn(**{k: tensors[k] for k in ranker.input_names})
        kg = graph(tensors)
        same = all(np.array_equal(sm[h].numpy(), np.asarray(kg[h]).reshape(-1)) for h in ("engagement", "quality"))
        calls = args.calls or int(np.clip(20_000 // b, 20, 400))
        secs = {
            # Eager costs ~250 ms a call whatever the batch: a few calls are enough to show it.
            "keras_eager": timed(lambda: model(tensors, training=False), min(calls, 5), args.repeats),
            "keras_graph": timed(lambda: graph(tensors), calls, args.repeats),
            "saved_model": timed(lambda: fn(**{k: tensors[k] for k in ranker.input_names}), calls, args.repeats),
            "ranker_score": timed(lambda: ranker.score({k: v[:b] for k, v in user_raw.items()},
                                                       {k: v[:b] for k, v in item_raw.items()}), calls, args.repeats),
        }
        ref = secs["keras_graph"]
        row = {"batch": b, "calls": calls, "identical_scores": bool(same),
               **{f"{k}_pairs_per_s": b / v for k, v in secs.items()},
               **{f"{k}_vs_keras_graph": ref / v for k, v in secs.items()},
               "flop_bound_pairs_per_s": bound, "flop_bound_vs_keras_graph": bound * ref / b}
        results.append(row)
        print(f"batch {b:5d}: " + ", ".join(f"{k} {b / v:,.0f} pairs/s ({ref / v:.2f}×)" for k, v in secs.items())
              + f"; SavedModel == traced Keras: {same}", flush=True)

    print("\n| batch | Keras traced (reference) | SavedModel signature | Ranker.score (numpy in/out) | Keras eager "
          "| FLOP bound |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cells = [f"{r[f'{k}_pairs_per_s']:,.0f} ({r[f'{k}_vs_keras_graph']:.2f}×)"
                 for k in ("keras_graph", "saved_model", "ranker_score", "keras_eager")]
        cells.append(f"{r['flop_bound_pairs_per_s']:,.0f} ({r['flop_bound_vs_keras_graph']:.1f}×)")
        print(f"| {r['batch']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                       "config": vars(args), "dense_flops_per_pair": flops_pair, "matmul_flops_per_s": flops_rate,
                       "results": results}, f, indent=2)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
