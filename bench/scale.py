"""End to end at scale: synthetic data → train → index recall → batch-score → serve, per size.

  .venv/bin/python bench/scale.py run --sizes 1000000 3000000 10000000 --out bench/out/scale
  .venv/bin/python bench/scale.py report --out bench/out/scale     # the table from whatever finished

Each stage of each size runs as its own subprocess, so its wall time and peak RSS (the
child's ru_maxrss from wait4, which covers its own waited-for children) are its own:

  data     features.synthetic chunks → interactions.parquet (written chunk by chunk),
           users.parquet, items.parquet (`--source files` reads them as they are)
  train    `recsys train --source files ...` (the real CLI; every knob below is a flag of it)
  recall   recall@100 of the version's FAISS index vs exact (Flat) inner-product search on the
           trained item embeddings, for a seeded sample of real train users' tower embeddings
  batch    `recsys batch-score` (Beam DirectRunner) for a seeded sample of train users → Parquet
  serve    `recsys serve` on the version + a bounded gRPC load of distinct users (cache misses:
           the online path); p50/p95 and the server's peak RSS (VmHWM) from /proc

Sizes: users = interactions / `--interactions-per-user`, items = interactions /
`--interactions-per-item` (defaults 1M → 30k users × 5k items, 10M → 300k × 50k); IVF lists
grow with the catalogue (nlist = the power of two nearest 4·√items, nprobe = nlist / 8).
Growth exponent per stage = least-squares slope of log(wall seconds), log(CPU seconds: user + system
of the stage's processes, less sensitive to a shared machine's load) and log(peak RSS) against
log(interactions) over the sizes that finished. The machine is shared: `uptime` is recorded
before and after every stage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0] and would shadow packages of the same name.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("data", "train", "recall", "batch", "serve")


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- stage: data ------------------------------------------------------------------------------
def data_main(a: argparse.Namespace) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.synthetic import SyntheticConfig, synthetic_chunks, synthetic_tables

    cfg = SyntheticConfig(num_users=a.users, num_items=a.items, num_interactions=a.interactions, seed=a.seed)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    writer, rows, engaged = None, 0, 0
    try:
        for chunk in synthetic_chunks(cfg, chunk_rows=a.chunk_rows):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(out / "interactions.parquet", table.schema)
            writer.write_table(table)
            rows += len(chunk)
            engaged += int(chunk["engaged"].sum())
    finally:
        if writer is not None:
            writer.close()
    users, items = synthetic_tables(cfg)
    users.to_parquet(out / "users.parquet")
    items.drop(columns=["true_quality"]).to_parquet(out / "items.parquet")  # the label, never a feature
    return {"rows": rows, "engaged": engaged, "users": a.users, "items": a.items,
            "bytes": sum(p.stat().st_size for p in out.glob("*.parquet"))}


# -- stage: recall ----------------------------------------------------------------------------
def recall_main(a: argparse.Namespace) -> dict:
    import numpy as np

    from core import layout
    from core.tf_env import limit_threads

    limit_threads(2, 1)
    import faiss

    from features import FeatureStore
    from retrieval import ItemIndex, UserTower, load_items

    version = pathlib.Path(a.version_dir)
    store = FeatureStore.load(layout.features_dir(version))
    item_ids, emb = load_items(version)
    index = ItemIndex.load(layout.index_dir(version))
    users = np.asarray(store.vocabularies["user_id"].tokens, dtype=object)
    rng = np.random.default_rng(a.seed)
    sample = users[rng.choice(len(users), min(a.queries, len(users)), replace=False)]
    t0 = time.perf_counter()
    queries = np.ascontiguousarray(UserTower.load(version).embed_ids(store, sample), dtype=np.float32)
    embed_s = time.perf_counter() - t0
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(np.ascontiguousarray(emb, dtype=np.float32))
    t0 = time.perf_counter()
    _, exact = flat.search(queries, a.k)
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, got = index.index.search(queries, a.k)  # the raw FAISS index (rows of items.npz), as configured
    ann_s = time.perf_counter() - t0
    hits = [len(set(e[e >= 0].tolist()) & set(g[g >= 0].tolist())) / max(1, int((e >= 0).sum()))
            for e, g in zip(exact, got)]
    return {"recall_at_k": round(float(np.mean(hits)), 4), "k": a.k, "queries": len(sample), "items": len(item_ids),
            "dim": int(emb.shape[1]), "factory": index.config.factory, "nprobe": index.config.nprobe,
            "embed_s": round(embed_s, 2), "exact_ms_per_query": round(1e3 * exact_s / len(sample), 3),
            "ann_ms_per_query": round(1e3 * ann_s / len(sample), 3)}


# -- stage: serve -----------------------------------------------------------------------------
def _proc_status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM", "VmRSS")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _tree_rss(pid: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) over `pid` and its descendants (a fleet is several processes)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    stats = [_proc_status(p) for p in pids]
    return sum(s.get("VmRSS", 0) for s in stats), sum(s.get("VmHWM", 0) for s in stats)


def serve_main(a: argparse.Namespace) -> dict:
    import random
    import threading

    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from core import layout, registry
    from features import FeatureStore
    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.local_redis import free_port

    version = registry.resolve_version(pathlib.Path(a.artifacts), a.version)
    users = list(FeatureStore.load(layout.features_dir(version)).vocabularies["user_id"].tokens)
    random.Random(a.seed).shuffle(users)
    users = users[:a.requests]
    port = free_port()
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", a.artifacts, "--version", version.name,
           "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--workers", str(a.concurrency),
           "--no-monitor", *shlex.split(a.serve_flags)]
    started = time.perf_counter()
    log = open(a.log, "w") if a.log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"recsys serve exited with {proc.returncode} before SERVING (see {a.log})")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.perf_counter() - started > a.startup_timeout_s:
                    raise RuntimeError(f"recsys serve not SERVING after {a.startup_timeout_s} s")
                time.sleep(0.2)
            startup_s = time.perf_counter() - started
            rss_ready, _ = _tree_rss(proc.pid)
            stub = pb_grpc.RecommenderStub(channel)
            lat, failed, sources, lock = [], [], {}, threading.Lock()
            it = iter(range(len(users)))

            def worker() -> None:
                while True:
                    with lock:
                        n = next(it, None)
                    if n is None:
                        return
                    t0 = time.perf_counter()
                    try:
                        r = stub.Recommend(pb.RecommendRequest(user_id=users[n], num_results=10), timeout=60)
                        ok = len(r.items) > 0
                    except grpc.RpcError as e:
                        ok, r = False, e
                    dt = time.perf_counter() - t0
                    with lock:
                        if ok:
                            lat.append(dt)
                            src = pb.Source.Name(r.source) if hasattr(pb, "Source") else str(r.source)
                            sources[src] = sources.get(src, 0) + 1
                        else:
                            failed.append(str(r)[:200])
            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            load_s = time.perf_counter() - t0
            rss_after, hwm = _tree_rss(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ms = np.asarray(lat) * 1e3
    return {"requests": len(users), "ok": len(lat), "failed": len(failed), "failures": failed[:3],
            "sources": sources, "concurrency": a.concurrency, "startup_s": round(startup_s, 1),
            "load_s": round(load_s, 2), "throughput_rps": round(len(lat) / load_s, 1) if load_s else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 2) if len(ms) else None,
            "server_rss_ready_mib": round(rss_ready / 2**20), "server_rss_after_mib": round(rss_after / 2**20),
            "server_peak_rss_mib": round(hwm / 2**20)}


# -- driver -----------------------------------------------------------------------------------
def sizes_for(n: int, a: argparse.Namespace) -> dict:
    users = max(100, n // a.interactions_per_user)
    items = max(50, n // a.interactions_per_item)
    nlist = 2 ** max(4, round(math.log2(4 * math.sqrt(items))))
    return {"interactions": n, "users": users, "items": items, "nlist": nlist, "nprobe": max(1, nlist // 8),
            "batch_users": max(1, users // a.batch_user_divisor)}


def stage_commands(n: int, a: argparse.Namespace, out: pathlib.Path) -> dict[str, list[str]]:
    s = sizes_for(n, a)
    py = sys.executable
    data, art = out / "data", out / "artifacts"
    version = "scale"
    train = [py, "-m", "recsys.cli", "train", "--source", "files",
             "--interactions", str(data / "interactions.parquet"), "--users", str(data / "users.parquet"),
             "--items", str(data / "items.parquet"), "--artifacts", str(art), "--new-version", version,
             "--index-factory", f"IVF{s['nlist']},{a.codes}", "--index-nprobe", str(s["nprobe"]),
             *shlex.split(a.train_flags)]
    batch = [py, "-m", "recsys.cli", "batch-score", "--artifacts", str(art), "--version", version,
             "--users", str(out / "batch_users.txt"), "--output", str(out / "scores"), "--top-k", "10",
             *shlex.split(a.batch_flags)]
    me = str(pathlib.Path(__file__).resolve())
    return {
        "data": [py, me, "data", "--interactions", str(n), "--users", str(s["users"]), "--items", str(s["items"]),
                 "--seed", str(a.seed), "--out", str(data)],
        "train": train,
        "recall": [py, me, "recall", "--version-dir", str(art / version), "--queries", str(a.recall_queries),
                   "--seed", str(a.seed)],
        "batch": batch,
        "serve": [py, me, "serve", "--artifacts", str(art), "--version", version, "--requests", str(a.serve_requests),
                  "--concurrency", str(a.serve_concurrency), "--seed", str(a.seed), "--log", str(out / "serve.server.log"),
                  "--serve-flags", a.serve_flags],
    }


def _batch_users(out: pathlib.Path, count: int, seed: int) -> int:
    """A seeded sample of `count` train users (the version's user vocabulary) for batch-score."""
    import numpy as np

    from core import layout
    from features import FeatureStore

    users = np.asarray(FeatureStore.load(layout.features_dir(out / "artifacts" / "scale")).vocabularies["user_id"].tokens,
                       dtype=object)
    sample = users[np.sort(np.random.default_rng(seed).choice(len(users), min(count, len(users)), replace=False))]
    (out / "batch_users.txt").write_text("\n".join(map(str, sample)) + "\n")
    return len(sample)


def run_stage(name: str, cmd: list[str], out: pathlib.Path) -> dict:
    json_out = out / f"{name}.result.json"
    if cmd[1:2] == [str(pathlib.Path(__file__).resolve())]:
        cmd = [*cmd, "--json", str(json_out)]
    load_before = _uptime()
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    record = {"stage": name, "command": shlex.join(cmd), "seconds": round(seconds, 1),
              "peak_rss_mib": round(usage.ru_maxrss / 1024), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "exit": proc.returncode, "load_before": load_before, "load_after": _uptime()}
    if json_out.exists():
        record["result"] = json.loads(json_out.read_text())
    print(f"  {name}: {record['seconds']} s, peak RSS {record['peak_rss_mib']} MiB, exit {record['exit']} "
          f"(load {load_before} → {record['load_after']})", flush=True)
    return record


def run_main(a: argparse.Namespace) -> int:
    root = pathlib.Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    for n in a.sizes:
        out = root / f"n{n}"
        out.mkdir(parents=True, exist_ok=True)
        summary_file = out / "stages.json"
        done = json.loads(summary_file.read_text()) if summary_file.exists() and a.resume else {}
        cmds = stage_commands(n, a, out)
        print(f"== {n:,} interactions: {sizes_for(n, a)}", flush=True)
        for name in a.stages:
            if name in done and done[name]["exit"] == 0:
                continue
            if name == "batch":
                _batch_users(out, sizes_for(n, a)["batch_users"], a.seed)
            done[name] = run_stage(name, cmds[name], out)
            done[name]["sizes"] = sizes_for(n, a)
            summary_file.write_text(json.dumps(done, indent=2))
            if done[name]["exit"] != 0:
                print(f"  {name} failed: see {out / (name + '.log')}; later stages of this size skipped", flush=True)
                break
        report(root, a)
    failed = [f"{n}:{name}" for n in a.sizes
              for name, rec in json.loads((root / f"n{n}" / "stages.json").read_text()).items() if rec["exit"] != 0]
    return 1 if failed else 0


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x) (None with fewer than 2 points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(root: pathlib.Path, a: argparse.Namespace | None = None) -> str:
    runs = {}
    for d in sorted(root.glob("n*")):
        f = d / "stages.json"
        if f.exists():
            runs[int(d.name[1:])] = json.loads(f.read_text())
    sizes = sorted(runs)
    lines = ["| stage | " + " | ".join(f"{n / 1e6:g}M: wall s / CPU s / peak RSS MiB / load" for n in sizes)
             + " | exponent wall | exponent CPU | exponent RSS |", "|---|" + "---|" * len(sizes) + "---|---|---|"]
    table = {}
    for stage in STAGES:
        cells, xs, ts, cs, rs = [], [], [], [], []
        for n in sizes:
            r = runs[n].get(stage)
            if r is None or r["exit"] != 0:
                cells.append("—" if r is None else f"failed (exit {r['exit']})")
                continue
            cells.append(f"{r['seconds']:.0f} / {r['cpu_s']:.0f} / {r['peak_rss_mib']} / {r['load_before'].split()[0]}")
            xs.append(n)
            ts.append(r["seconds"])
            cs.append(r["cpu_s"])
            rs.append(r["peak_rss_mib"])
        et, ec, er = fit_exponent(xs, ts), fit_exponent(xs, cs), fit_exponent(xs, rs)
        table[stage] = {"time_exponent": et, "cpu_exponent": ec, "rss_exponent": er, "sizes": xs, "seconds": ts,
                        "cpu_s": cs, "peak_rss_mib": rs}
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {_fmt(et)} | {_fmt(ec)} | {_fmt(er)} |")
    extra = []
    for n in sizes:
        r = runs[n]
        s = (r.get("data") or {}).get("sizes") or {}
        bits = [f"{n / 1e6:g}M: {s.get('users', '?'):,} users × {s.get('items', '?'):,} items" if s else f"{n / 1e6:g}M"]
        rec = (r.get("recall") or {}).get("result")
        if rec:
            bits.append(f"{rec['factory']} nprobe {rec['nprobe']}: recall@{rec['k']} vs exact {rec['recall_at_k']:.4f} "
                        f"({rec['queries']} users)")
        sv = (r.get("serve") or {}).get("result")
        if sv:
            bits.append(f"serve: {sv['ok']}/{sv['requests']} ok, p50 {sv['p50_ms']} ms, p95 {sv['p95_ms']} ms, server "
                        f"peak RSS {sv['server_peak_rss_mib']} MiB, startup {sv['startup_s']} s")
        b = r.get("batch")
        if b and b["exit"] == 0:
            bits.append(f"batch-score: {s.get('batch_users', '?'):,} users")
        extra.append("- " + "; ".join(bits))
    text = "\n".join(lines + [""] + extra) + "\n"
    (root / "scale.md").write_text(text)
    (root / "scale.json").write_text(json.dumps({"runs": {str(n): runs[n] for n in sizes}, "exponents": table},
                                                indent=2))
    print(text, flush=True)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the stages for each size")
    r.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    r.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    r.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale"))
    r.add_argument("--resume", action="store_true", help="skip stages that already finished (stages.json)")
    r.add_argument("--interactions-per-user", type=int, default=33)
    r.add_argument("--interactions-per-item", type=int, default=200)
    r.add_argument("--batch-user-divisor", type=int, default=3, help="batch-score users = users / this")
    r.add_argument("--codes", default="SQ8", help="IVF code: SQ8, PQ8, ... (the factory is IVF<nlist>,<codes>)")
    r.add_argument("--train-flags", default=DEFAULT_TRAIN_FLAGS)
    r.add_argument("--batch-flags", default="--batch-size 1024")
    r.add_argument("--serve-flags", default="")
    r.add_argument("--recall-queries", type=int, default=2000)
    r.add_argument("--serve-requests", type=int, default=400)
    r.add_argument("--serve-concurrency", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    rep = sub.add_parser("report", help="the table from the stages that finished")
    rep.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale"))
    d = sub.add_parser("data")
    d.add_argument("--interactions", type=int, required=True)
    d.add_argument("--users", type=int, required=True)
    d.add_argument("--items", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--chunk-rows", type=int, default=2_000_000)  # generate_synthetic's: the same log
    d.add_argument("--out", required=True)
    rc = sub.add_parser("recall")
    rc.add_argument("--version-dir", required=True)
    rc.add_argument("--queries", type=int, default=2000)
    rc.add_argument("--k", type=int, default=100)
    rc.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("serve")
    s.add_argument("--artifacts", required=True)
    s.add_argument("--version", required=True)
    s.add_argument("--requests", type=int, default=400)
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--log", default="")
    s.add_argument("--serve-flags", default="")
    s.add_argument("--startup-timeout-s", type=float, default=900)
    for q in (d, rc, s):
        q.add_argument("--json", default="")
    a = p.parse_args()
    if a.cmd == "run":
        return run_main(a)
    if a.cmd == "report":
        report(pathlib.Path(a.out))
        return 0
    t0 = time.perf_counter()
    result = {"data": data_main, "recall": recall_main, "serve": serve_main}[a.cmd](a)
    result["stage_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


# Tiny models, one epoch, big batches: what a 10M run can afford on 2 shared cores (each a `recsys train` flag,
# recorded in the version's manifest): the two-tower is trained once, on split.fit (no refit on train),
# 100 candidates per user, the retrieval metrics score at most 5k held-out users against the whole
# catalogue (users × items work) and the ranker's validation choices are made on at most 2k validation
# users' served candidates (seeded samples; 0 = all, the defaults of `recsys train`).
DEFAULT_TRAIN_FLAGS = ("--epochs 1 --no-retrieval-progress --no-ranking-progress "
                       "--retrieval-embedding-dim 16 --retrieval-id-dim 16 --retrieval-feature-dim 8 "
                       "--retrieval-batch-size 8192 --ranking-batch-size 8192 --ranking-id-dim 8 "
                       "--ranking-feature-dim 4 --ranking-hidden 32 --ranking-head-hidden 16 "
                       "--no-retrieval-refit --pipeline-num-candidates 100 "
                       "--retrieval-eval-max-users 5000 --ranking-selection-max-users 2000 "
                       "--retrieval-history-length 10 --ranking-history-length 10")

if __name__ == "__main__":
    sys.exit(main())
