"""Online experiments proven end to end: A/A false-positive rate, SRM, an A/B the simulated users can tell
apart, shadow overhead, and a canary rolled back by its guardrail.

  .venv/bin/python bench/experiments.py --version-dir bench/out/exp/synth --json bench/out/experiments.json

The version must be trained on synthetic data (its manifest's data.synthetic config): the simulated
users are that generator's users and answer from its hidden truth (evaluation/simulator.py).

Parts (`--parts`, default all):
  aa      the offline path: `--aa-seeds` A/A experiments (50/50, a new salt each) of `--aa-sessions` lists
          each, through evaluation.experiments.analyze — the report's own code; false-positive rate of
          the CTR@k and mean-rating tests at alpha 0.05 (target 5% ± 2%).
  srm     the same simulator with a 60/40 assignment reported against 50/50 shares: SRM must trip.
  ab      a REAL server (a child process: RecommendServer + real Redis event log) runs the experiment
          file A = the version's default blend, B = a quality-heavy blend (`--b-weights`); simulated users
          receive lists over gRPC and answer with LogEvents (request_id, position; ratings); the log is
          exported to Parquet and `recsys experiment report`'s function reads it. Target: B better, p < 0.05.
  shadow  the same server, paced open-loop Recommend traffic (`--shadow-rate` per second, users drawn by
          activity, all cached by an unrecorded warm-up pass): `--shadow-blocks` short blocks alternate
          (off, on, on, off, ...) between shadow sample 0 and 1 (a second copy of the version, loaded once);
          the primary's p99 over all "on" latencies ÷ over all "off" ones. Target <= 1.1.
  canary  a canary arm on a deliberately slow (`--slow-s` per computation) and then a failing version
          (a loader wrapper injects the fault), schedule 20% from the start, guardrail window
          `--canary-window-s`; reports seconds to rollback and failed requests outside the canary (target 0).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from serving.local_redis import LocalRedis, free_port  # noqa: E402

T0 = 1_767_225_600


# -- child: the real server, with a loader that injects faults into versions named *-slow / *-failing ---------
class _Faulty:
    def __init__(self, inner, slow_s: float, fail: bool) -> None:
        self._inner, self._slow, self._fail = inner, slow_s, fail
        self.model_version = inner.model_version

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def candidates(self, *args, **kwargs):
        if self._slow:
            time.sleep(self._slow)
        if self._fail:
            raise RuntimeError("injected failure (bench canary)")
        return self._inner.candidates(*args, **kwargs)


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--slow-s", type=float, default=0.2)
    p.add_argument("--gil-switch-interval-s", type=float, default=0.0)
    a = p.parse_args(argv)
    import logging
    import signal

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from feedback import EventLogConfig
    from serving import CacheConfig, RecommendServer, ServerConfig
    from serving.experiments import ExperimentsConfig
    from serving.hotswap import load_checked

    def loader(d: pathlib.Path):
        model = load_checked(d)
        if d.name.endswith("-slow"):
            return _Faulty(model, a.slow_s, False)
        if d.name.endswith("-failing"):
            return _Faulty(model, 0.0, True)
        return model

    server = RecommendServer(ServerConfig(host="127.0.0.1", port=a.port, workers=8, metrics_port=a.metrics_port,
                                          tf_intra_op_threads=1, tf_inter_op_threads=1,
                                          gil_switch_interval_s=a.gil_switch_interval_s),
                             CacheConfig(redis_url=a.redis_url), events=EventLogConfig()).start()
    server.load(pathlib.Path(a.root) / a.version)
    server.start_experiments(a.root, ExperimentsConfig(poll_s=0.2), loader=loader)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    server.stop(grace=1)
    return 0


# -- parent ---------------------------------------------------------------------------------------------------
def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def truth_of(version_dir: pathlib.Path):
    from core.registry import read_manifest
    from features.synthetic import SyntheticConfig, synthetic_truth

    data = read_manifest(version_dir)["data"]
    if data["source"]["source"] != "synthetic":
        raise SystemExit(f"{version_dir}: trained on {data['source']['source']!r}; the simulator needs a synthetic "
                         "version (its users answer from the generator's hidden truth)")
    return synthetic_truth(SyntheticConfig(**data["synthetic"]))


def part_aa(truth, seeds: int, sessions: int, k: int) -> dict:
    from evaluation.experiments import analyze
    from evaluation.simulator import aa_experiment, simulate_events

    start = time.perf_counter()
    p_ctr, p_rating, srm = [], [], 0
    for seed in range(seeds):
        result = analyze(simulate_events(truth, aa_experiment(f"aa-{seed}"), sessions, k=k, seed=seed), "A",
                         {"A": 0.5, "B": 0.5}, k=k)
        p_ctr.append(result["tests"]["B"]["ctr_at_k"]["p_value"])
        p_rating.append(result["tests"]["B"]["mean_rating"]["p_value"])
        srm += result["srm"]["mismatch"]
    out = {"seeds": seeds, "sessions": sessions, "k": k,
           "fpr_ctr": float(np.mean(np.array(p_ctr) < 0.05)), "fpr_rating": float(np.mean(np.array(p_rating) < 0.05)),
           "srm_false_alarms": srm, "seconds": round(time.perf_counter() - start, 1), "load_avg": load_avg()}
    print(f"A/A over {seeds} seeds: false-positive rate CTR@{k} {out['fpr_ctr']:.3f}, mean rating "
          f"{out['fpr_rating']:.3f}; SRM false alarms {srm}; {out['seconds']} s", flush=True)
    return out


def part_srm(truth, sessions: int, k: int) -> dict:
    from evaluation.experiments import analyze
    from evaluation.simulator import aa_experiment, simulate_events

    out = {}
    for name, shares in (("balanced", (0.5, 0.5)), ("skewed_60_40", (0.6, 0.4))):
        srm = analyze(simulate_events(truth, aa_experiment(f"srm-{name}", shares), sessions, k=k, seed=7), "A",
                      {"A": 0.5, "B": 0.5}, k=k)["srm"]
        out[name] = {"p_value": srm["p_value"], "mismatch": srm["mismatch"], "observed": srm["observed"]}
        print(f"SRM {name}: p {srm['p_value']:.3g}, mismatch {srm['mismatch']}, users {srm['observed']}", flush=True)
    return out


class Fleet:
    """redis-server + the child server process on free ports; the experiment file under `root`."""

    def __init__(self, root: pathlib.Path, version: str, workdir: pathlib.Path, slow_s: float,
                 gil_switch_interval_s: float = 0.0) -> None:
        self.root, self.version = root, version
        (workdir / "redis").mkdir()
        self.redis = LocalRedis(workdir / "redis", appendonly=False).start()
        self.port, self.metrics_port = free_port(), free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", "--root", str(root), "--version", version,
                                      "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                                      "--redis-url", self.redis.url, "--slow-s", str(slow_s),
                                      "--gil-switch-interval-s", str(gil_switch_interval_s)],
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"})
        line = self.proc.stdout.readline()
        if "READY" not in line:
            raise SystemExit(f"the server child did not start (exit {self.proc.poll()})")
        import grpc

        from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.RecommenderStub(self.channel)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def sample(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def set(self, raw: dict | None) -> None:
        """Installs the experiment (None = stop) and waits until the server applied it."""
        from core.experiment import experiment_file, parse_experiment, write_experiment

        path = experiment_file(self.root)
        before = self.sample("recsys_experiment_config_loaded_total")
        if raw is None:
            path.unlink(missing_ok=True)
            time.sleep(1.0)
            return
        write_experiment(path, parse_experiment(raw))
        deadline = time.monotonic() + 300
        while self.sample("recsys_experiment_config_loaded_total") <= before:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not apply the experiment file in 300 s")
            time.sleep(0.2)

    def close(self) -> None:
        from core.experiment import experiment_file

        self.channel.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.redis.stop()
        experiment_file(self.root).unlink(missing_ok=True)


def part_ab(fleet: Fleet, truth, requests: int, k: int, b_weights: list[float], concurrency: int,
            out_dir: pathlib.Path, quality_sensitivity: float) -> dict:
    import redis

    from evaluation.simulator import SimulatedUsers, UserModel, item_index
    from feedback.export import ExportConfig, export_events
    from protos.recsys.v1 import recommender_pb2 as pb
    from workflows.experiments import ExperimentReportConfig, ExperimentTarget, ReportSpec, run_report

    fleet.set({"name": "quality-ab", "salt": "bench-ab", "control": "A", "arms": [
        {"name": "A", "share": 0.5},
        {"name": "B", "share": 0.5, "weights": {"engagement": b_weights[0], "quality": b_weights[1],
                                                "mode": "multiplicative"}}]})
    rng = np.random.default_rng(11)
    users = rng.choice(len(truth.activity), requests, p=truth.activity)
    sim = SimulatedUsers(truth, UserModel(quality_sensitivity=quality_sensitivity), seed=12)
    lock = threading.Lock()
    counter = iter(range(10 ** 9))
    failures = [0]

    def one(n: int) -> None:
        user = f"u{users[n]}"
        try:
            response = fleet.stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k), timeout=30)
        except Exception:
            failures[0] += 1
            return
        items = [item_index(i.item_id) for i in response.items]
        if not items:
            return
        with lock:
            engaged, ratings = sim.respond(int(users[n]), items)
        events = []
        for pos in np.flatnonzero(engaged):
            rated = np.isfinite(ratings[pos])
            events.append(pb.Event(event_id=f"ab-{next(counter)}", user_id=user, item_id=response.items[pos].item_id,
                                   type=pb.RATING if rated else pb.ENGAGEMENT, timestamp=T0 + n,
                                   value=float(ratings[pos]) if rated else None, request_id=response.request_id,
                                   position=int(pos) + 1))
        if events:
            fleet.stub.LogEvents(pb.LogEventsRequest(events=events), timeout=30)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    time.sleep(1.0)  # the served-list writer flushes every 250 ms
    events_dir = out_dir / "events-ab"
    shutil.rmtree(events_dir, ignore_errors=True)
    client = redis.Redis.from_url(fleet.redis.url)
    export_events(ExportConfig(redis_url=fleet.redis.url, output=str(events_dir)), client)
    client.close()
    from core.experiment import experiment_file

    result = run_report(ExperimentReportConfig(ExperimentTarget(file=str(experiment_file(fleet.root))),
                                               ReportSpec(events=str(events_dir), k=k,
                                                          output=str(out_dir / "report-ab"))))
    t = result["tests"]["B"]
    out = {"requests": requests, "failures": failures[0], "seconds": round(seconds, 1), "k": k,
           "b_weights": b_weights, "quality_sensitivity": quality_sensitivity, "load_avg": load_avg(),
           "arms": result["arms"], "tests": t, "srm": result["srm"], "report": str(out_dir / "report-ab")}
    print(f"A/B over the real server: {requests} lists in {seconds:.0f} s ({failures[0]} failed); "
          f"CTR@{k} A {result['arms']['A']['ctr_at_k']:.4f} B {result['arms']['B']['ctr_at_k']:.4f} "
          f"(diff {t['ctr_at_k']['diff']:+.4f}, p {t['ctr_at_k']['p_value']:.3g}); mean rating A "
          f"{result['arms']['A']['mean_rating']:.3f} B {result['arms']['B']['mean_rating']:.3f} "
          f"(p {t['mean_rating']['p_value']:.3g}); SRM p {result['srm']['p_value']:.3g}", flush=True)
    fleet.set(None)
    return out


def paced(fleet: Fleet, users: np.ndarray, rate: float, k: int, concurrency: int) -> tuple[np.ndarray, int]:
    """Open-loop Recommend at `rate` per second (send times fixed in advance); latency from the scheduled send."""
    from protos.recsys.v1 import recommender_pb2 as pb

    latencies = np.full(len(users), np.nan)
    errors = [0]
    t0 = time.perf_counter() + 0.05

    def one(n: int) -> None:
        due = t0 + n / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        try:
            fleet.stub.Recommend(pb.RecommendRequest(user_id=f"u{users[n]}", num_results=k), timeout=30)
        except Exception:
            errors[0] += 1
            return
        latencies[n] = time.perf_counter() - due

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(users))))
    return latencies, errors[0]


def part_shadow(fleet: Fleet, truth, version: str, blocks: int, per_block: int, rate: float, k: int) -> dict:
    """Blocks of paced requests alternate without / with the shadow (order off, on, on, off, ... so a slow drift
    of the machine's load hits both alike), all from one pool of users whose candidates were cached first; the
    latencies of each condition are pooled."""
    # "off" keeps the shadow version loaded at sample 0: the blocks compare the shadow's work, not its loading.
    base = {"name": "shadow-off", "arms": [{"name": "A", "share": 1.0}],
            "shadow": {"version": f"{version}-shadow", "sample": 0.0, "k": k}}
    with_shadow = {"name": "shadow-on", "arms": [{"name": "A", "share": 1.0}],
                   "shadow": {"version": f"{version}-shadow", "sample": 1.0, "k": k}}
    rng = np.random.default_rng(21)
    users = rng.choice(len(truth.activity), blocks * per_block, p=truth.activity)
    fleet.set(base)
    paced(fleet, np.unique(users), rate, k, 16)  # warm-up, not recorded: every user's candidates cached
    pooled: dict[str, list] = {"off": [], "on": []}
    rows = []
    scored = dropped = 0.0
    for b in range(blocks):
        name = "off" if b % 4 in (0, 3) else "on"
        fleet.set(with_shadow if name == "on" else base)
        while fleet.sample("recsys_shadow_queue") > 0:  # the previous block's shadow work is done
            time.sleep(0.05)
        before = (fleet.sample('recsys_shadow_requests_total{result="scored"}'),
                  fleet.sample('recsys_shadow_requests_total{result="dropped"}'))
        lat, errors = paced(fleet, users[b * per_block:(b + 1) * per_block], rate, k, 16)
        while fleet.sample("recsys_shadow_queue") > 0:
            time.sleep(0.05)
        scored += fleet.sample('recsys_shadow_requests_total{result="scored"}') - before[0]
        dropped += fleet.sample('recsys_shadow_requests_total{result="dropped"}') - before[1]
        pooled[name].append(lat)
        rows.append({"block": b, "shadow": name, "p50_ms": float(np.nanpercentile(lat, 50) * 1e3),
                     "p99_ms": float(np.nanpercentile(lat, 99) * 1e3), "errors": errors, "load_avg": load_avg()})
    text = fleet.metrics()
    overlap = {}
    for metric in ("recsys_shadow_jaccard", "recsys_shadow_rbo"):
        s = sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(metric + "_sum"))
        c = sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(metric + "_count"))
        overlap[metric] = s / c if c else float("nan")
    fleet.set(None)
    p99 = {n: float(np.nanpercentile(np.concatenate(v), 99) * 1e3) for n, v in pooled.items()}
    p50 = {n: float(np.nanpercentile(np.concatenate(v), 50) * 1e3) for n, v in pooled.items()}
    pairs = [rows[i + 1]["p99_ms"] / rows[i]["p99_ms"] if rows[i]["shadow"] == "off" else
             rows[i]["p99_ms"] / rows[i + 1]["p99_ms"] for i in range(0, len(rows) - 1, 2)]
    out = {"blocks": rows, "per_block": per_block, "rate": rate, "pooled_p99_ms": p99, "pooled_p50_ms": p50,
           "pooled_p99_ratio": p99["on"] / p99["off"], "median_pair_p99_ratio": float(np.median(pairs)),
           "shadow_scored": scored, "shadow_dropped": dropped, "mean_jaccard": overlap["recsys_shadow_jaccard"],
           "mean_rbo": overlap["recsys_shadow_rbo"], "load_avg": load_avg()}
    print(f"shadow: {blocks} blocks of {per_block} at {rate:g}/s; pooled p99 off {p99['off']:.1f} ms, on {p99['on']:.1f} "
          f"ms (ratio {out['pooled_p99_ratio']:.3f}); p50 {p50['off']:.1f} → {p50['on']:.1f} ms; median pair ratio "
          f"{out['median_pair_p99_ratio']:.3f}; shadow scored {scored:.0f}, dropped {dropped:.0f}; mean Jaccard "
          f"{out['mean_jaccard']:.3f}, RBO {out['mean_rbo']:.3f}; load {out['load_avg']}", flush=True)
    return out


def part_canary(fleet: Fleet, truth, version: str, kind: str, window_s: float, rate: float, k: int,
                max_seconds: float) -> dict:
    from core.experiment import experiment_file, parse_experiment, read_experiment

    start = time.time()
    raw = {"name": f"canary-{kind}", "salt": f"canary-{kind}", "control": "A",
           "arms": [{"name": "A", "share": 1.0}, {"name": "C", "share": 0.0, "version": f"{version}-{kind}"}],
           "canary": {"arm": "C", "start": start, "schedule": [[0, 0.2]], "window_s": window_s, "min_requests": 20,
                      "max_error_rate": 0.05, "max_p99_ratio": 3.0, "max_empty_rate": 0.05}}
    experiment = parse_experiment(raw)
    fleet.set(raw)
    from protos.recsys.v1 import recommender_pb2 as pb

    rng = np.random.default_rng(31)
    results: list[tuple[float, str, bool]] = []  # (time, the arm the user had before any rollback, ok)
    layout = experiment.layout(start + 1)

    drawn = rng.choice(len(truth.activity), int(rate * max_seconds) + 10, p=truth.activity)

    def one_sent(n: int) -> None:
        user = f"u{drawn[n % len(drawn)]}"
        arm = experiment.assign(user, layout)
        t = time.time()
        try:
            fleet.stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k), timeout=10)
            ok = True
        except Exception:
            ok = False
        results.append((t, arm, ok))

    rolled = None
    n = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        t_end = time.time() + max_seconds
        while time.time() < t_end:
            batch = [pool.submit(one_sent, n + i) for i in range(int(rate))]
            n += int(rate)
            concurrent.futures.wait(batch)
            current = read_experiment(experiment_file(fleet.root))
            if current is not None and current.canary is not None and current.canary.rolled_back:
                rolled = current.canary.rolled_back
                if time.time() > rolled["at"] + 2:  # keep sending 2 s after: everyone back on control
                    break
    before = [r for r in results if rolled is None or r[0] <= rolled["at"]]
    after = [r for r in results if rolled is not None and r[0] > rolled["at"] + 0.5]
    first_canary = min((r[0] for r in results if r[1] == "C"), default=float("nan"))
    out = {"kind": kind, "window_s": window_s, "rolled_back": bool(rolled),
           "reason": rolled["reason"] if rolled else None,
           "seconds_to_rollback": (rolled["at"] - first_canary) if rolled else None,
           "requests": len(results), "canary_requests_before": sum(r[1] == "C" for r in before),
           "failed_outside_canary": sum(1 for r in results if r[1] != "C" and not r[2]),
           "failed_inside_canary": sum(1 for r in results if r[1] == "C" and not r[2]),
           "failed_after_rollback": sum(1 for r in after if not r[2]), "load_avg": load_avg()}
    print(f"canary {kind}: rolled back {out['rolled_back']} after {out['seconds_to_rollback'] or float('nan'):.1f} s "
          f"(window {window_s:g} s) — {out['reason']}; failed outside the canary {out['failed_outside_canary']}, "
          f"inside {out['failed_inside_canary']}, after the rollback {out['failed_after_rollback']}", flush=True)
    fleet.set(None)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version-dir", default="bench/out/exp/synth", help="a version trained on synthetic data")
    p.add_argument("--parts", default="aa,srm,ab,shadow,canary")
    p.add_argument("--json", default="bench/out/experiments.json")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--aa-seeds", type=int, default=1000)
    p.add_argument("--aa-sessions", type=int, default=1000)
    p.add_argument("--ab-requests", type=int, default=6000)
    p.add_argument("--b-weights", type=float, nargs=2, default=[0.2, 1.0],
                   help="arm B's multiplicative blend exponents (engagement, quality)")
    p.add_argument("--quality-sensitivity", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--shadow-blocks", type=int, default=40)
    p.add_argument("--shadow-requests", type=int, default=150, help="requests per block")
    p.add_argument("--shadow-rate", type=float, default=100.0)
    p.add_argument("--canary-window-s", type=float, default=10.0)
    p.add_argument("--canary-rate", type=float, default=40.0, help="requests per second")
    p.add_argument("--slow-s", type=float, default=0.2)
    p.add_argument("--gil-switch-interval-s", type=float, default=0.0,
                   help="the server's --gil-switch-interval-s (0 = Python's 5 ms), the same for every part")
    a = p.parse_args(argv)
    parts = set(a.parts.split(","))
    version_dir = pathlib.Path(a.version_dir).resolve()
    truth = truth_of(version_dir)
    results: dict = {"command": " ".join([sys.executable, "bench/experiments.py", *argv]), "load_avg_start": load_avg(),
                     "cpus": os.cpu_count()}
    if "aa" in parts:
        results["aa"] = part_aa(truth, a.aa_seeds, a.aa_sessions, a.k)
    if "srm" in parts:
        results["srm"] = part_srm(truth, 3000, a.k)
    if parts & {"ab", "shadow", "canary"}:
        with tempfile.TemporaryDirectory(prefix="bench-exp-") as tmp:
            work = pathlib.Path(tmp)
            root = work / "artifacts"
            root.mkdir()
            name = version_dir.name
            for suffix in ("", "-shadow", "-slow", "-failing"):
                (root / f"{name}{suffix}").symlink_to(version_dir, target_is_directory=True)
            fleet = Fleet(root, name, work, a.slow_s, a.gil_switch_interval_s)
            try:
                out_dir = pathlib.Path(a.json).resolve().parent
                out_dir.mkdir(parents=True, exist_ok=True)
                if "ab" in parts:
                    results["ab"] = part_ab(fleet, truth, a.ab_requests, a.k, a.b_weights, a.concurrency, out_dir,
                                            a.quality_sensitivity)
                if "shadow" in parts:
                    results["shadow"] = part_shadow(fleet, truth, name, a.shadow_blocks, a.shadow_requests,
                                                    a.shadow_rate, a.k)
                if "canary" in parts:
                    results["canary"] = [part_canary(fleet, truth, name, kind, a.canary_window_s, a.canary_rate, a.k,
                                                     max_seconds=6 * a.canary_window_s) for kind in ("slow", "failing")]
            finally:
                fleet.close()
    results["load_avg_end"] = load_avg()
    pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
