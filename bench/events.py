"""Event-log throughput and durability, as ratios measured side by side in one run.

  .venv/bin/python bench/events.py --json bench/out/events.json

Throughput (events/s into the same local redis-server, AOF on with fsync every second, as
the project's launcher runs it), rounds alternating so machine noise hits all:
  (x) raw pipelined XADD: this process sends `--batch` XADDs (the fields LogEvents writes)
      per pipeline round trip, `--concurrency` threads — the reference
  (l) LogEvents over gRPC to a server process: `--batch` events per call, `--concurrency`
      calls in flight; each event deduplicated, appended and (engagements) pushed onto the
      user's recent list by the atomic append script
  (p) the same append script called in this process (EventLog.append), without gRPC
Target (l)/(x) >= 0.5.

Durability (`--trials`): LogEvents writers run until `--acked` events are acknowledged, then
redis-server is killed with SIGKILL at once and restarted from its AOF; lost = acknowledged
event ids missing from the log, compared with the events acknowledged in the last second
before the kill (appendfsync everysec bounds the loss by about that). Then `recsys events
export` is run over the recovered log, killed with SIGKILL mid-run (a third of the way, plus a
random delay, so the kill can fall between a chunk's files and its checkpoint), and run again: the
output must hold every log entry exactly once (duplicate event ids = 0).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving.local_redis import LocalRedis, free_port  # noqa: E402

T0 = 1_767_225_600


# -- child: a server with an event log and no model (LogEvents needs none) ---------------
def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--workers", type=int, default=8)
    a = p.parse_args(argv)
    from feedback import EventLogConfig
    from serving import CacheConfig, RecommendServer, ServerConfig

    server = RecommendServer(ServerConfig(host="127.0.0.1", port=a.port, workers=a.workers, metrics_port=0,
                                          max_concurrent_rpcs=256),
                             CacheConfig(redis_url=a.redis_url),
                             events=EventLogConfig(log_served=False, timeout_s=30.0)).start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop(0)
    return 0


class ServerProcess:
    def __init__(self, redis_url: str, workers: int = 8) -> None:
        self.port = free_port()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), "child", "--port",
                                      str(self.port), "--redis-url", redis_url, "--workers", str(workers)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.close()
            raise RuntimeError(f"bench server did not start (got {line!r}); run it alone to see its error")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- workload ---------------------------------------------------------------------------
class Workload:
    """Unique events (ids from a counter), `engaged_share` of them engagements, over a fixed user/item pool."""

    def __init__(self, users: int, items: int, engaged_share: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.users, self.items, self.engaged_share = users, items, engaged_share
        self.ids = itertools.count()

    def events(self, n: int):
        from feedback import Event

        out = []
        for _ in range(n):
            i = next(self.ids)
            engaged = self.rng.random() < self.engaged_share
            out.append(Event(f"ev-{i}", f"u{self.rng.randrange(self.users)}", f"i{self.rng.randrange(self.items)}",
                             "engagement" if engaged else "impression", T0 + i // 1000,
                             request_id="" if engaged else f"r{i // 10}", position=0 if engaged else 1 + i % 10))
        return out


def to_pb(events) -> object:
    from protos.recsys.v1 import recommender_pb2 as pb

    kinds = {"engagement": pb.ENGAGEMENT, "impression": pb.IMPRESSION, "rating": pb.RATING}
    return pb.LogEventsRequest(events=[pb.Event(event_id=e.event_id, user_id=e.user_id, item_id=e.item_id,
                                                type=kinds[e.type], timestamp=e.timestamp, request_id=e.request_id,
                                                position=e.position) for e in events])


def drive(call, batches: list, concurrency: int, seconds: float) -> tuple[int, float]:
    """Calls `call(batch)` from `concurrency` threads until `seconds` pass or the batches run out;
    (events acknowledged, elapsed seconds)."""
    it = iter(batches)
    lock = threading.Lock()
    done = [0]
    end = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < end:
            with lock:
                batch = next(it, None)
            if batch is None:
                return
            n = call(batch)
            with lock:
                done[0] += n
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return done[0], time.perf_counter() - t


def throughput(a, redis_url: str, rclient) -> dict:
    import grpc

    from feedback import EventLog, EventLogConfig
    from feedback.log import _fields
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    workload = Workload(a.users, a.items, a.engaged_share, a.seed)
    per_round = int(a.max_rate * a.seconds)  # enough batches that no round runs out
    n_batches = max(1, per_round // a.batch)
    server = ServerProcess(redis_url)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.RecommenderStub(channel)
    log = EventLog(redis_url, EventLogConfig(timeout_s=30.0))  # a loaded machine can stall Redis for a while
    stream = log.config.stream_key
    raw = rclient

    def xadd(batch) -> int:
        pipe = raw.pipeline(transaction=False)
        for fields in batch:
            pipe.execute_command("XADD", stream, "MAXLEN", "~", log.config.max_len, "*", *fields)
        pipe.execute()
        return len(batch)

    def log_events(request) -> int:
        reply = stub.LogEvents(request, timeout=30)
        assert reply.duplicates == 0
        return reply.accepted

    def append(batch) -> int:
        return log.append(batch)[0]

    cases = {"x_raw_xadd": (xadd, lambda evs: [_fields(e) for e in evs]),
             "l_log_events_grpc": (log_events, to_pb),
             "p_append_in_process": (append, lambda evs: evs)}
    results: dict[str, list] = {name: [] for name in cases}
    try:
        for call, make in cases.values():  # warm-up
            drive(call, [make(workload.events(a.batch)) for _ in range(20)], a.concurrency, 1.0)
        for _ in range(a.rounds):
            for name, (call, make) in cases.items():
                batches = [make(workload.events(a.batch)) for _ in range(n_batches)]
                rclient.flushall()
                n, elapsed = drive(call, batches, a.concurrency, a.seconds)
                if n == n_batches * a.batch:
                    print(f"warning: {name} ran out of prepared events; raise --max-rate", file=sys.stderr)
                results[name].append((n, elapsed))
    finally:
        channel.close()
        log.close()
        server.close()
    out = {}
    for name, rounds in results.items():
        total = sum(n for n, _ in rounds)
        seconds = sum(e for _, e in rounds)
        out[name] = {"events": total, "seconds": round(seconds, 3), "events_per_s": round(total / seconds, 1),
                     "round_events_per_s": [round(n / e, 1) for n, e in rounds]}
    ref = out["x_raw_xadd"]["events_per_s"]
    per = [l_[0] / l_[1] / (x[0] / x[1]) for l_, x in zip(results["l_log_events_grpc"], results["x_raw_xadd"])]
    out["ratios"] = {"l_over_x": round(out["l_log_events_grpc"]["events_per_s"] / ref, 3),
                     "l_over_x_median_round": round(sorted(per)[len(per) // 2], 3),
                     "p_over_x": round(out["p_append_in_process"]["events_per_s"] / ref, 3),
                     "l_over_x_per_round": [round(l_[0] / l_[1] / (x[0] / x[1]), 3) for l_, x in
                                            zip(results["l_log_events_grpc"], results["x_raw_xadd"])]}
    return out


# -- durability -------------------------------------------------------------------------
def durability_trial(a, workdir: pathlib.Path, trial: int) -> dict:
    import grpc
    import redis as redis_py

    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    workdir.mkdir(parents=True)
    rserver = LocalRedis(workdir).start()  # AOF on, appendfsync everysec
    server = ServerProcess(rserver.url)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.RecommenderStub(channel)
    workload = Workload(a.users, a.items, a.engaged_share, a.seed + trial)
    batches = [workload.events(a.batch) for _ in range(a.acked // a.batch * 3)]
    requests = [to_pb(b) for b in batches]
    acked: list[tuple[float, list[str]]] = []  # (ack time, event ids)
    lock = threading.Lock()
    stop = threading.Event()
    it = iter(range(len(requests)))

    def writer() -> None:
        while not stop.is_set():
            with lock:
                i = next(it, None)
            if i is None:
                return
            try:
                stub.LogEvents(requests[i], timeout=5)
            except grpc.RpcError:
                return  # UNAVAILABLE after the kill: a client would retry; it was never acknowledged
            t = time.monotonic()
            with lock:
                acked.append((t, [e.event_id for e in batches[i]]))
                if sum(len(x[1]) for x in acked) >= a.acked:
                    stop.set()

    threads = [threading.Thread(target=writer) for _ in range(a.concurrency)]
    for th in threads:
        th.start()
    stop.wait(120)
    rserver.kill()  # SIGKILL the moment N events are acknowledged, writers still running
    killed = time.monotonic()
    for th in threads:
        th.join()
    channel.close()
    server.close()
    rserver.start()  # same dir and port: replays appendonlydir/
    client = redis_py.Redis(port=rserver.port, socket_timeout=30)
    present = {fields[b"id"].decode() for _, fields in client.xrange("recsys:events")}
    acked_ids = [i for _, ids in acked for i in ids]
    last_second = sum(len(ids) for t, ids in acked if t >= killed - 1.0)
    lost = [i for i in acked_ids if i not in present]
    elapsed = acked[-1][0] - acked[0][0] if len(acked) > 1 else 0.0
    result = {"acknowledged": len(acked_ids), "in_log_after_restart": len(present), "lost": len(lost),
              "acknowledged_in_last_second": last_second,
              "ack_rate_events_per_s": round(len(acked_ids) / elapsed, 1) if elapsed else None,
              "written_not_acknowledged": len(present - set(acked_ids))}
    result["lost_within_last_second"] = len(lost) <= last_second
    result["export"] = export_after_crash(a, rserver.url, workdir / "export", client)
    client.close()
    rserver.stop()
    return result


def export_after_crash(a, redis_url: str, output: pathlib.Path, client) -> dict:
    """`recsys events export` killed with SIGKILL mid-run, then run again: every entry exactly once."""
    import pandas as pd

    cmd = [sys.executable, "-m", "recsys.cli", "--log-level", "WARNING", "events", "export", "--redis-url", redis_url,
           "--output", str(output), "--chunk-events", str(a.export_chunk)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = output / "_export/checkpoint.json"
    deadline = time.monotonic() + 120
    target = client.xlen("recsys:events") // 3

    def progress() -> int:
        try:
            return json.loads(checkpoint.read_text())["entries"]
        except (OSError, ValueError, KeyError):
            return 0
    while progress() < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(random.Random(a.seed).uniform(0, 0.05))  # somewhere inside the next chunk
    killed_mid_run = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = json.loads(checkpoint.read_text())["entries"] if checkpoint.exists() else 0
    rows_at_kill = len(pd.read_parquet(output)) if any(output.glob("date=*/*.parquet")) else 0
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr}")
    df = pd.read_parquet(output)
    entries = client.xlen("recsys:events")
    return {"killed_mid_run": killed_mid_run, "checkpointed_entries_at_kill": at_kill,
            "rows_on_disk_at_kill": rows_at_kill, "log_entries": entries, "rows": len(df),
            "duplicate_event_ids": int(df["event_id"].duplicated().sum()),
            "missing_event_ids": entries - int(df["event_id"].nunique())}


def hardware() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100, help="events per LogEvents call / XADD pipeline")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    p.add_argument("--seconds", type=float, default=1.0, help="per round (short: the machine's load drifts)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--max-rate", type=float, default=150_000, help="events prepared per second of a round")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--engaged-share", type=float, default=0.5, help="engagements among events (rest impressions)")
    p.add_argument("--trials", type=int, default=3, help="durability trials (0 = skip)")
    p.add_argument("--acked", type=int, default=20_000, help="acknowledged events before the kill")
    p.add_argument("--export-chunk", type=int, default=1000, help="--chunk-events of the crashed export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-events-"))
    results: dict = {}
    try:
        (tmp / "redis").mkdir()
        local = LocalRedis(tmp / "redis").start()
        rclient = local.client(timeout_s=30)
        try:
            results["throughput"] = throughput(a, local.url, rclient)
        finally:
            rclient.close()
            local.stop()
        results["durability"] = [durability_trial(a, tmp / f"trial{t}", t) for t in range(a.trials)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = results["throughput"]
    print(f"{'case':<24}{'events/s':>12}  per round")
    for name in ("x_raw_xadd", "l_log_events_grpc", "p_append_in_process"):
        print(f"{name:<24}{t[name]['events_per_s']:>12,.0f}  {t[name]['round_events_per_s']}")
    print(f"(l)/(x) = {t['ratios']['l_over_x']} over all rounds, median round {t['ratios']['l_over_x_median_round']}"
          f"  per round {t['ratios']['l_over_x_per_round']}   "
          f"(p)/(x) = {t['ratios']['p_over_x']}")
    for i, d in enumerate(results["durability"]):
        e = d["export"]
        print(f"trial {i}: acknowledged {d['acknowledged']}, lost {d['lost']} (acknowledged in the last second "
              f"{d['acknowledged_in_last_second']}, at {d['ack_rate_events_per_s']} ev/s), written but not "
              f"acknowledged {d['written_not_acknowledged']}; export killed mid-run "
              f"{e['killed_mid_run']} at {e['checkpointed_entries_at_kill']} checkpointed entries "
              f"({e['rows_on_disk_at_kill']} rows on disk) → rerun: {e['rows']} rows for {e['log_entries']} log "
              f"entries, duplicates {e['duplicate_event_ids']}, missing {e['missing_event_ids']}")
    if a.json:
        path = pathlib.Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"args": vars(a), "hardware": hardware(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
