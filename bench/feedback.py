"""Streaming features pay off: a replay of the test period with events logged, and brand-new users (issue 13).

  .venv/bin/python bench/feedback.py --artifacts bench/out/feedback --json bench/out/feedback.json

Trains two versions on MovieLens-100k with the project's default data, split and model
settings (`recsys train` defaults; extra train flags after `--`), unless they already exist
under --artifacts: `full` (every user) and `holdout` (a seeded `--holdout` share of users
left out of training entirely). Then, with a real redis-server and the real gRPC server
(serving.RecommendServer with its event log) on loopback:

Replay (version `full`): the test split's interactions in time order (ties by user, item).
Before each test event (u, i) the user's top `--k` is asked for
  (a) with batch history only: Recommend before any event was logged;
  (b) with every earlier test event of the period already sent through LogEvents (each
      event is sent right after its own request), i.e. the server's streamed history;
and the same two lists are computed in this process with RecommendPipeline
(candidates(recent=...) + blend_top_k, popular_items for unknown users), which must agree.
Metrics of the next item i: HR@k = share of events whose item is in the top k, NDCG@k =
mean of 1/log2(1 + rank) over hits (0 otherwise), via evaluation.metrics. Target: (b) > (a). Diagnostic (c), in-process: batch history in the models and the earlier
events only excluded from the list — how much of (b)'s gain is "engaged items are not
recommended again" and how much the merged history in the models.
`--max-users` walks the events of a seeded sample of test users only.

New users (version `holdout`): each held-out user's interactions in time order; the first
`--first-events` are sent through LogEvents (ratings, with their values), then Recommend
asks for the top k (source EVENTS), computed in-process too. Relevant: the rest of the
user's interactions (binary). NDCG@k against the popularity fallback the server gives an
unknown user without events (popular_items with the default blend, the first events
excluded as the personalised list excludes them), and against raw popularity. Target:
ratio >= 1.3. A held-out user's interactions are never trained on; their side features
(age, gender, occupation) stay in the users table, as a sign-up form would give them, so the
row "model, no events" (OOV id + side features, no history) shows what the events add.
EVENTS is the version's new-user scorer (features.cooccurrence: P(item | events) mixed with the
popularity prior, w and d chosen at training on simulated new users, blended with the quality
prior); "model + events" is what EVENTS served before it (OOV id + the events as history bag).
A holdout version trained before the scorer existed gets it fitted here (ensure_new_user_scorer).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.feedback")


# -- training --------------------------------------------------------------------------------
def ensure_new_user_scorer(version_dir: pathlib.Path) -> dict:
    """A version trained before the new-user scorer existed gets one here (workflows.newusers.fit_new_users,
    the training step's own code, its default NewUserConfig) and its manifest re-sealed; returns the record."""
    from core import layout, registry
    from features import FeatureStore
    from features.cooccurrence import NewUserConfig
    from workflows.newusers import fit_new_users

    manifest = registry.read_manifest(version_dir)
    if layout.new_users_file(version_dir).is_file() and "new_users" in manifest:
        return manifest["new_users"]
    log.info("fitting the new-user scorer of %s (trained before it existed)", version_dir)
    record = fit_new_users(version_dir, FeatureStore.load(layout.features_dir(version_dir)), NewUserConfig())
    record["added_after_training"] = True
    keep = {k: v for k, v in manifest.items() if k not in ("version", "created", "git_sha", "checksums")}
    registry.finalize_version(version_dir, {**keep, "new_users": record})
    return record


def train_versions(root: pathlib.Path, holdout: float, seed: int, train_flags: list[str],
                   names: tuple[str, ...] = ("full", "holdout")) -> dict:
    """Trains (or reuses) versions `full` and `holdout`; returns {name: dir, "held_out": [user ids]}."""
    from core.config import parse_config
    from features import split_interactions
    from workflows.data import load_split
    from workflows.train import TrainConfig, train

    config = parse_config(TrainConfig, ["--artifacts", str(root), "--no-promote", "--no-retrieval-progress",
                                        "--no-ranking-progress", *train_flags])
    dataset, split = load_split(config.data)
    users = np.array(sorted(dataset.interactions["user_id"].astype(str).unique()))
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(users, size=max(1, round(holdout * len(users))), replace=False).tolist())
    out: dict = {"held_out": held, "dataset": dataset, "split": split}
    for name, loaded in (("full", (dataset, split)), ("holdout", None)):
        if name not in names:
            continue
        version_dir = root / name
        out[name] = version_dir
        if (version_dir / "manifest.json").exists():
            log.info("reusing %s", version_dir)
            continue
        if loaded is None:
            keep = ~dataset.interactions["user_id"].astype(str).isin(held)
            reduced = dataclasses.replace(dataset, interactions=dataset.interactions.loc[keep].reset_index(drop=True))
            loaded = (reduced, split_interactions(reduced.interactions, config.data.split))
        started = time.perf_counter()
        cfg = parse_config(TrainConfig, ["--artifacts", str(root), "--new-version", name, "--no-promote",
                                         "--no-retrieval-progress", "--no-ranking-progress", *train_flags])
        train(cfg, loaded=loaded)
        log.info("trained %s in %.0f s", name, time.perf_counter() - started)
    return out


# -- the two paths to a top k ---------------------------------------------------------------
def in_process_top_k(pipeline, user: str, recent: list[str], k: int) -> list[str]:
    """What the server answers, computed in this process: the pipeline for a known or personalisable
    user (merged history), else the popularity fallback."""
    weights = pipeline.default_weights
    if pipeline.is_known_user(user) or (recent and pipeline.personalisable(user, recent)):
        cands = pipeline.candidates([user], recent=[recent] if recent else None)[0]
        return [str(i) for i in pipeline.blend_top_k(cands, weights, k)[0]]
    return [str(i) for i in pipeline.popular_items(k, weights=weights)[0]]


def exclude_only_top_k(pipeline, user: str, recent: list[str], k: int) -> list[str]:
    """Diagnostic: batch history in the models, the `recent` items only left out of the list."""
    if not pipeline.is_known_user(user):
        return [str(i) for i in pipeline.popular_items(k, exclude=recent)[0]]
    cands = pipeline.candidates([user], exclude=[recent])[0]
    return [str(i) for i in pipeline.blend_top_k(cands, pipeline.default_weights, k)[0]]


class Server:
    """A redis-server and the real gRPC server with its event log, serving one pipeline."""

    def __init__(self, pipeline, workdir: pathlib.Path, recent_length: int) -> None:
        import grpc

        from feedback import EventLogConfig
        from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
        from serving import CacheConfig, RecommendServer, ServerConfig
        from serving.local_redis import LocalRedis

        workdir.mkdir(parents=True, exist_ok=True)
        self.redis = LocalRedis(workdir).start(timeout_s=30)
        # Generous Redis read timeout: on a busy 2-core machine a 50 ms read of the recent list can
        # time out, and the server then (correctly) serves batch features only — not what is measured here.
        self.server = RecommendServer(
            ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
            CacheConfig(redis_url=self.redis.url),
            events=EventLogConfig(recent_length=recent_length, read_timeout_s=2.0, timeout_s=5.0)).start()
        self.server.set_model(pipeline)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = pb_grpc.RecommenderStub(self.channel)

    def top_k(self, user: str, k: int) -> tuple[list[str], str]:
        from protos.recsys.v1 import recommender_pb2 as pb

        r = self.stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k), timeout=30)
        return [i.item_id for i in r.items], pb.Source.Name(r.source)

    def log_events(self, rows: list[tuple[str, str, int, float]]) -> None:
        """(user, item, timestamp, rating) rows as RATING events, one LogEvents call."""
        from protos.recsys.v1 import recommender_pb2 as pb

        events = [pb.Event(event_id=f"ml:{u}:{i}:{t}", user_id=u, item_id=i, type=pb.RATING, value=float(v),
                           timestamp=int(t)) for u, i, t, v in rows]
        r = self.stub.LogEvents(pb.LogEventsRequest(events=events), timeout=30)
        if r.accepted != len(events):
            raise RuntimeError(f"LogEvents accepted {r.accepted} of {len(events)} events ({r.duplicates} duplicates)")

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)
        self.redis.stop()


# -- metrics ---------------------------------------------------------------------------------
def metrics(lists: list[list[str]], relevant: list[set[str]], catalogue: pd.Index, k: int) -> dict[str, float]:
    """HR@k and NDCG@k (evaluation.metrics, binary gains) of ranked id lists against relevant id sets."""
    from evaluation.metrics import hit_rate_at_k, ndcg_at_k

    ranked = np.full((len(lists), k), -1, dtype=np.int64)
    for r, ids in enumerate(lists):
        cols = catalogue.get_indexer(ids[:k])
        ranked[r, :len(cols)] = cols
    rows = np.repeat(np.arange(len(relevant)), [len(s) for s in relevant])
    cols = catalogue.get_indexer([i for s in relevant for i in sorted(s)])
    if (cols < 0).any():
        raise ValueError("a relevant item is not in the catalogue")
    rel = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(relevant), len(catalogue)))
    return {f"hr@{k}": float(np.nanmean(hit_rate_at_k(ranked, rel, k))),
            f"ndcg@{k}": float(np.nanmean(ndcg_at_k(ranked, rel, k)))}


# -- replay ----------------------------------------------------------------------------------
def replay(pipeline, server: Server | None, test: pd.DataFrame, k: int, recent_length: int,
           in_process: bool = True) -> dict:
    """`in_process` False (needs a server): skip the per-event in-process lists (b) and (c), a third of the
    walk's time each; (a) is still computed both ways, once per user."""
    test = test.loc[test["engaged"] == 1].sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    users = sorted(test["user_id"].astype(str).unique())
    catalogue = pd.Index(np.asarray(pipeline.features.catalogue).astype(str))
    started = time.perf_counter()
    batch_local = {u: in_process_top_k(pipeline, u, [], k) for u in users}
    batch_server = {u: server.top_k(u, k)[0] for u in users} if server else {}
    a_seconds = time.perf_counter() - started
    recent: dict[str, list[str]] = {u: [] for u in users}
    lists = {"a_local": [], "b_local": [], "a_server": [], "b_server": [], "c_exclude_only": []}
    relevant: list[set[str]] = []
    sources: dict[str, int] = {}
    disagree = {"a": 0, "b": 0}
    started = time.perf_counter()
    for n, row in enumerate(test.itertuples(index=False)):
        u, i = str(row.user_id), str(row.item_id)
        relevant.append({i})
        lists["a_local"].append(batch_local[u])
        if in_process or not server:
            lists["b_local"].append(in_process_top_k(pipeline, u, recent[u][:recent_length], k))
            # diagnostic: the earlier events only excluded, not merged into the history inputs
            lists["c_exclude_only"].append(exclude_only_top_k(pipeline, u, recent[u][:recent_length], k))
        if server:
            got, source = server.top_k(u, k)
            sources[source] = sources.get(source, 0) + 1
            lists["a_server"].append(batch_server[u])
            lists["b_server"].append(got)
            disagree["a"] += batch_server[u] != batch_local[u]
            if lists["b_local"]:
                disagree["b"] += got != lists["b_local"][-1]
            server.log_events([(u, i, int(row.timestamp), float(row.rating))])
        recent[u].insert(0, i)
        if (n + 1) % 1000 == 0:
            log.info("replay: %d / %d events (%.0f s)", n + 1, len(test), time.perf_counter() - started)
    out = {"events": len(test), "users": len(users), "k": k, "recent_length": recent_length,
           "a_seconds": round(a_seconds, 1), "walk_seconds": round(time.perf_counter() - started, 1)}
    for name, got in lists.items():
        if got:
            out[name] = metrics(got, relevant, catalogue, k)
    if server:
        out["server_sources_b"] = sources
        # (b) is compared only when the in-process (b) lists were computed (not with --server-only)
        out["server_vs_in_process_disagreements"] = disagree if lists["b_local"] else {"a": disagree["a"]}
    return out


# -- new users -------------------------------------------------------------------------------
def new_users(pipeline, server: Server | None, interactions: pd.DataFrame, held: list[str], first: int,
              k: int) -> dict:
    from pipeline.scoring import POPULARITY_ONLY

    rows = interactions.loc[interactions["user_id"].astype(str).isin(held) & (interactions["engaged"] == 1)]
    rows = rows.sort_values(["timestamp", "item_id"], kind="stable")
    catalogue = pd.Index(np.asarray(pipeline.features.catalogue).astype(str))
    lists: dict[str, list[list[str]]] = {"personalised_local": [], "personalised_server": [], "fallback": [],
                                         "popularity": [], "model_without_events": [], "model_with_events": []}
    model_path = copy.copy(pipeline)  # the same version without its new-user scorer: the model's OOV path
    model_path.new_users = None
    relevant: list[set[str]] = []
    sources: dict[str, int] = {}
    disagree = 0
    skipped = 0
    for u, part in rows.groupby(rows["user_id"].astype(str), sort=True):
        items = part["item_id"].astype(str).tolist()
        if len(items) <= first:
            skipped += 1
            continue
        assert not pipeline.is_known_user(u), f"held-out user {u} is in the holdout version's vocabulary"
        recent = items[:first][::-1]  # newest first
        relevant.append(set(items[first:]) - set(items[:first]))
        local = in_process_top_k(pipeline, u, recent, k)
        lists["personalised_local"].append(local)
        lists["fallback"].append([str(i) for i in pipeline.popular_items(k, exclude=recent)[0]])
        lists["popularity"].append([str(i) for i in pipeline.popular_items(k, exclude=recent,
                                                                           weights=POPULARITY_ONLY)[0]])
        # the model for this unknown user without its events (OOV id, side features only): what history adds
        cold = pipeline.candidates([u], exclude=[recent])[0]
        lists["model_without_events"].append([str(i) for i in pipeline.blend_top_k(cold, pipeline.default_weights,
                                                                                   k)[0]])
        # what EVENTS served before the new-user scorer: OOV id + the events as the history bag, both heads
        lists["model_with_events"].append(in_process_top_k(model_path, u, recent, k))
        if server:
            before, source0 = server.top_k(u, k)
            if source0 != "FALLBACK":
                raise RuntimeError(f"a held-out user with no events got source {source0}, not FALLBACK")
            head = part.iloc[:first]
            server.log_events([(u, str(r.item_id), int(r.timestamp), float(r.rating))
                               for r in head.itertuples(index=False)])
            got, source = server.top_k(u, k)
            sources[source] = sources.get(source, 0) + 1
            lists["personalised_server"].append(got)
            disagree += got != local
    out = {"users": len(relevant), "skipped_short": skipped, "first_events": first, "k": k}
    for name, got in lists.items():
        if got:
            out[name] = metrics(got, relevant, catalogue, k)
    ndcg = f"ndcg@{k}"
    out["ratio_vs_fallback"] = out["personalised_local"][ndcg] / max(out["fallback"][ndcg], 1e-12)
    out["ratio_vs_popularity"] = out["personalised_local"][ndcg] / max(out["popularity"][ndcg], 1e-12)
    if server:
        out["server_sources"] = sources
        out["server_vs_in_process_disagreements"] = disagree
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_flags = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", default="bench/out/feedback", help="versions full/ and holdout/ (trained if missing)")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--seed", type=int, default=0, help="held-out users and the --max-users sample")
    p.add_argument("--holdout", type=float, default=0.1, help="share of users left out of the holdout version")
    p.add_argument("--first-events", type=int, default=5, help="events a new user sends before asking")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-users", type=int, default=0, help="replay a seeded sample of this many test users (0 = all)")
    p.add_argument("--recent-length", type=int, default=50, help="the server's recent list (--events-recent-length)")
    p.add_argument("--no-server", action="store_true", help="in-process path only (no redis-server, no gRPC)")
    p.add_argument("--server-only", action="store_true",
                   help="replay: skip the per-event in-process lists (b) and (c) (the full walk in a third of the time)")
    p.add_argument("--parts", default="replay,new_users", help="which measurements (comma-separated)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl", "serving", "feedback", "pipeline", "workflows", "retrieval", "ranking"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipeline import RecommendPipeline

    root = pathlib.Path(a.artifacts).resolve()
    parts = [x for x in a.parts.split(",") if x]
    if not parts or set(parts) - {"replay", "new_users"}:
        p.error(f"--parts must name replay and/or new_users, got {a.parts!r}")
    trained = train_versions(root, a.holdout, a.seed, train_flags,
                             tuple({"replay": "full", "new_users": "holdout"}[x] for x in parts))
    split = trained["split"]
    test = split.test
    if a.max_users:
        users = np.array(sorted(test["user_id"].astype(str).unique()))
        keep = np.random.default_rng(a.seed).choice(users, size=min(a.max_users, len(users)), replace=False)
        test = test.loc[test["user_id"].astype(str).isin(set(keep.tolist()))]
    results: dict = {"command": "python bench/feedback.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "train_flags": train_flags, "seed": a.seed, "machine": platform.platform(),
                     "cpus": __import__("os").cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        for name, run in (("replay", "full"), ("new_users", "holdout")):
            if name not in parts:
                continue
            if name == "new_users":
                results["new_user_scorer"] = ensure_new_user_scorer(trained[run])
            pipe = RecommendPipeline.from_version_dir(trained[run])
            server = None if a.no_server else Server(pipe, pathlib.Path(tmp) / name, a.recent_length)
            try:
                if name == "replay":
                    results[name] = replay(pipe, server, test, a.k, a.recent_length, not a.server_only)
                else:
                    results[name] = new_users(pipe, server, trained["dataset"].interactions, trained["held_out"],
                                              a.first_events, a.k)
                    results[name]["held_out_users"] = len(trained["held_out"])
            finally:
                if server:
                    server.close()
            log.info("%s: %s", name, json.dumps(results[name]))
    if "replay" in results:
        results["replay"]["sampled_users"] = a.max_users
    print(report(results, a.k))
    if a.json:
        out = pathlib.Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict, k: int) -> str:
    hr, nd = f"hr@{k}", f"ndcg@{k}"
    lines: list[str] = []
    if "replay" in results:
        lines += replay_lines(results["replay"], hr, nd)
    if "new_users" in results:
        lines += new_user_lines(results["new_users"], hr, nd)
    if "new_user_scorer" in results:
        sc = results["new_user_scorer"]
        lines.append(f"  new-user scorer: w = {sc['weight']:g}, d = {sc['decay']:g}, chosen on "
                     f"{sc.get('simulated_users', 0)} simulated new users (NDCG@10 {sc.get('ndcg@10', float('nan')):.4f} "
                     f"vs the fallback's {sc.get('fallback_ndcg@10', float('nan')):.4f}); {sc['nonzeros']} non-zeros, "
                     f"{sc['bytes']} bytes")
    return "\n".join(lines)


def replay_lines(r: dict, hr: str, nd: str) -> list[str]:
    lines = [f"replay: {r['events']} test events of {r['users']} users, in time order",
             f"  {'':34} {hr:>8} {nd:>8}"]
    for key, label in (("a_server", "(a) batch history, gRPC server"), ("b_server", "(b) + logged events, gRPC server"),
                       ("a_local", "(a) batch history, in-process"), ("b_local", "(b) + logged events, in-process"),
                       ("c_exclude_only", "(c) diagnostic: (a) + events excluded")):
        if key in r:
            lines.append(f"  {label:34} {r[key][hr]:8.4f} {r[key][nd]:8.4f}")
    b = r.get("b_local", r.get("b_server"))
    lines.append(f"  (b)/(a) NDCG: {b[nd] / max(r['a_local'][nd], 1e-12):.3f}")
    if "server_vs_in_process_disagreements" in r:
        lines.append(f"  server vs in-process lists differing: {r['server_vs_in_process_disagreements']}; "
                     f"sources (b): {r['server_sources_b']}")
    return lines


def new_user_lines(n: dict, hr: str, nd: str) -> list[str]:
    lines = [f"new users: {n['users']} held-out users, first {n['first_events']} events sent, the rest relevant",
              f"  {'':34} {hr:>8} {nd:>8}"]
    for key, label in (("personalised_server", "personalised (EVENTS), gRPC"),
                       ("personalised_local", "personalised, in-process"),
                       ("fallback", "popularity fallback (server's)"), ("popularity", "raw popularity"),
                       ("model_without_events", "model, no events (OOV id + side)"),
                       ("model_with_events", "model + events (OOV id + history)")):
        if key in n:
            lines.append(f"  {label:34} {n[key][hr]:8.4f} {n[key][nd]:8.4f}")
    lines.append(f"  NDCG ratio vs fallback {n['ratio_vs_fallback']:.3f} (target >= 1.3), vs raw popularity "
                 f"{n['ratio_vs_popularity']:.3f}")
    if "server_vs_in_process_disagreements" in n:
        lines.append(f"  server vs in-process lists differing: {n['server_vs_in_process_disagreements']}; "
                     f"sources: {n['server_sources']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
