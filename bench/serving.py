"""Serving throughput and latency on loopback, as ratios measured side by side in one run.

  .venv/bin/python bench/serving.py --version-dir artifacts/<version> --json bench/out/serving.json
  .venv/bin/python bench/serving.py --train-synthetic          # trains a small version first

Bounded concurrent load (`--concurrency` requests in flight, a grpc.aio client in this
process, the server in child processes) for:
  (a) an empty RPC on the same server stack (same server model, thread pool, limits) — the reference; on
      the grpc.aio model (the default) a coroutine answered on the loop, its cheapest call
  (a0) NullRecommend on the same server: parses a RecommendRequest and answers fixed bytes of a hit's
      size, nothing else (attribution: what a Recommend-shaped call costs gRPC and the client)
  (b) Recommend answered from the server's near cache
  (c) Recommend on a cache miss: the full online path (user tower → FAISS → ranker → blend),
      concurrent misses micro-batched (serving/batcher.py), `--miss-concurrency` in flight
  (c0) the same on a server with batching off (today's behaviour before issue 14)
  (d) the servicer's cache-miss path called in-process, without gRPC, at the same concurrency
  (e) RecommendPipeline.candidates() in-process, `--reference-batch` users per call: what the
      models cost when fed in bulk — the reference for (c)'s throughput (this process has the
      server's TF/FAISS thread settings)
  (e') the same in a process of its own with TensorFlow's and FAISS's default threads (both cores)
  paced: an open-loop load at `--paced-fraction` of (c)'s (and (c0)'s) measured throughput
  (a') / (b') a second server with the near cache off: every hit is a Redis MGET + decode + blend
  (a-t) / (b-t), (a'-t) / (b'-t): with the grpc.aio model (the default), the same on --no-aio servers,
      in the same rounds (`--no-threads-server` skips them)
  monitoring: (b) on a server with live drift monitoring on vs one with it off (`--no-monitor`), one
      process each, alternating rounds, both /metrics scraped every `--scrape-interval-s`; target >= 0.95
Targets: (b)/(a) >= 0.8, (b')/(a') >= 0.6, (c)/(e) and (c)/(e') >= 0.6 in throughput; paced
p99 <= 3 × p50. The three hit servers run at once and every round runs (a), (b), (a'), (b'),
(a''), (b'') in turn; (c), (c0), (d), (e) and (e') alternate the same way, so machine noise hits
all. Each hit round also records the server processes' and the client's CPU µs per request and
the load average: on a shared machine "server CPU per empty RPC ÷ per hit" is the steadier figure.

`--compare-stacks` also measures the server models the server could use — the sync
thread pool, grpc.aio, and several sync processes sharing the port (SO_REUSEPORT) — on
(a) and, where the stack serves it, (b).
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import os
import pathlib
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0] and this file would shadow the `serving` package.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving.local_redis import LocalRedis, free_port  # noqa: E402

EMPTY_METHOD = "/recsys.bench.Bench/Empty"


# -- child process: one server ----------------------------------------------------------
NULL_METHOD = "/recsys.bench.Bench/NullRecommend"


def _null_response() -> bytes:
    """A RecommendResponse of a hit's size (10 items): what NullRecommend answers to every request."""
    from protos.recsys.v1 import recommender_pb2 as pb

    items = [pb.RecommendedItem(item_id=str(1000 + i), score=0.5 - i / 100, engagement=0.25, quality=0.75,
                                quality_rating=3.5) for i in range(10)]
    return pb.RecommendResponse(items=items, model_version="v20261201-000000-000000", source=pb.CACHE,
                                blend=pb.BlendWeights(engagement=1.0, quality=0.5), request_id="0" * 12 + "-1"
                                ).SerializeToString()


def _empty_handler(aio: bool = False):
    """Empty: no bytes in, none out. NullRecommend: parses a RecommendRequest (strictly, as Recommend does)
    and answers a fixed RecommendResponse of a hit's size, doing nothing else: the gRPC-side cost of a
    Recommend-shaped call, to tell it apart from the servicer's own work (attribution only, no target).
    With `aio` both are coroutines, answered on a grpc.aio server's loop: the cheapest call that stack has
    (a plain function there would run in the thread pool and make the reference slower than it is)."""
    import grpc

    from protos.recsys.v1 import recommender_pb2 as pb

    null = _null_response()

    async def empty_async(request, context) -> bytes:
        return b""

    async def null_async(request, context) -> bytes:
        return null

    return grpc.method_handlers_generic_handler("recsys.bench.Bench", {
        "Empty": grpc.unary_unary_rpc_method_handler(empty_async if aio else (lambda request, context: b"")),
        "NullRecommend": grpc.unary_unary_rpc_method_handler(
            null_async if aio else (lambda request, context: null), request_deserializer=pb.RecommendRequest.FromString),
    })


REDIS_READ_METHOD = "/recsys.bench.Bench/RedisRead"
THREADS_METHOD = "/recsys.bench.Bench/Threads"
SPIN_METHOD = "/recsys.bench.Bench/Spin"


def _attribution_handler(started: list):
    """RedisRead: one engagement-counter read through the server's cache store (what a validated near-cache hit
    adds to a Recommend: a Redis round trip from a handler thread), answering nothing. Threads: this process's
    threads as JSON {native thread id: name}, to attribute /proc's per-thread CPU (bench/hit_threads.py)."""
    import grpc

    def redis_read(request, context) -> bytes:
        started[0].cache.store.read_counter("recsys:bench:rv:{attribution}")
        return b""

    def threads(request, context) -> bytes:
        return json.dumps({str(t.native_id): t.name for t in threading.enumerate()}).encode()

    def spin(request, context) -> bytes:  # pure Python for the µs in the request, holding the GIL (no I/O, no locks)
        end = time.thread_time() + float(request or b"0") * 1e-6
        while time.thread_time() < end:
            pass
        return b""

    return grpc.method_handlers_generic_handler("recsys.bench.Bench", {
        "RedisRead": grpc.unary_unary_rpc_method_handler(redis_read),
        "Threads": grpc.unary_unary_rpc_method_handler(threads),
        "Spin": grpc.unary_unary_rpc_method_handler(spin)})


def reference_main(argv: list[str]) -> int:
    """`bench/serving.py reference VERSION_DIR BATCH INTRA INTER`: for each line on stdin, one round of
    RecommendPipeline.candidates() over every train user, BATCH users per call; prints "<n> <seconds>"."""
    version_dir, batch, intra, inter = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    from core.tf_env import limit_threads

    limit_threads(intra, inter)
    from pipeline import RecommendPipeline

    pipeline = RecommendPipeline.from_version_dir(version_dir, verify=False)
    users = list(pipeline.features.vocabularies["user_id"].tokens)
    pipeline.candidates(users[:batch])  # warm the batch shape
    print("READY", flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        for lo in range(0, len(users), batch):
            pipeline.candidates(users[lo:lo + batch])
        print(len(users), time.perf_counter() - t, flush=True)
    return 0


class ReferenceProcess:
    """A child running reference_main: (e') in its own process, with TF's own thread defaults."""

    def __init__(self, version_dir: str, batch: int, intra: int = 0, inter: int = 0) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), "reference", version_dir,
                                      str(batch), str(intra), str(inter)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        if self.proc.stdout.readline().strip() != "READY":
            self.close()
            raise RuntimeError("the reference process did not start; run it alone to see its error")

    def round(self) -> tuple[list[float], float]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        n, seconds = self.proc.stdout.readline().split()
        return [float(seconds) / int(n)] * int(n), float(seconds)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(30)


def serve_aio(port: int, handlers: list, max_concurrent_rpcs: int = 256) -> None:
    """A grpc.aio server with `handlers` on 127.0.0.1:`port`: prints READY once listening, stops when stdin closes
    (how ServerProcesses and the other benches drive their child servers)."""
    import grpc

    async def run() -> None:
        server = grpc.aio.server(handlers=handlers, maximum_concurrent_rpcs=max_concurrent_rpcs)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(0)

    asyncio.run(run())


def child_main(argv: list[str]) -> int:
    """`bench/serving.py child ...`: runs one server until stdin closes."""
    p = argparse.ArgumentParser()
    p.add_argument("--stack", choices=["sync", "aio"], default="sync")
    p.add_argument("--version-dir", default="")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url", default="")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-concurrent-rpcs", type=int, default=256)
    p.add_argument("--near-ttl-s", type=float, default=30.0)
    p.add_argument("--server-config", default="{}", help="JSON of further ServerConfig fields")
    p.add_argument("--cache-config", default="{}", help="JSON of further CacheConfig fields")
    p.add_argument("--events-config", default="{}", help="JSON of EventLogConfig fields")
    p.add_argument("--attribution", action="store_true", help="also serve bench/hit_threads.py's RedisRead and Threads")
    a = p.parse_args(argv)
    if a.stack == "aio":
        serve_aio(a.port, [_empty_handler()], a.max_concurrent_rpcs)
        return 0
    from feedback import EventLogConfig
    from serving import CacheConfig, RecommendServer, ServerConfig

    started: list = []  # the server, for the attribution handlers
    config = ServerConfig(host="127.0.0.1", port=a.port, workers=a.workers, max_concurrent_rpcs=a.max_concurrent_rpcs,
                          **{"metrics_port": 0, **json.loads(a.server_config)})
    extra = (_empty_handler(config.aio),) + ((_attribution_handler(started),) if a.attribution else ())
    server = RecommendServer(
        config,
        CacheConfig(redis_url=a.redis_url, max_connections=max(64, a.workers), near_ttl_s=a.near_ttl_s,
                    **json.loads(a.cache_config)),
        extra_handlers=extra, events=EventLogConfig(**json.loads(a.events_config))).start()
    started.append(server)
    if a.version_dir:
        server.load(a.version_dir, verify=False)
    print("READY", flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    server.stop(0)
    return 0


class ServerProcesses:
    """`processes` child servers sharing one port (SO_REUSEPORT, gRPC's default on Linux)."""

    def __init__(self, stack: str, processes: int, version_dir: str, redis_url: str, workers: int,
                 near_ttl_s: float = 30.0, server_config: dict | None = None,
                 cache_config: dict | None = None, events_config: dict | None = None,
                 child_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.procs = []
        for _ in range(processes):
            cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "child", "--stack", stack,
                   "--port", str(self.port), "--redis-url", redis_url, "--workers", str(workers),
                   "--near-ttl-s", str(near_ttl_s), "--server-config", json.dumps(server_config or {}),
                   "--cache-config", json.dumps(cache_config or {}), "--events-config", json.dumps(events_config or {})]
            if version_dir:
                cmd += ["--version-dir", version_dir]
            cmd += list(child_args)
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                               env=env, cwd=ROOT))
        for proc in self.procs:
            line = proc.stdout.readline()
            if line.strip() != "READY":
                self.close()
                raise RuntimeError(f"bench server did not start (got {line!r}); run it alone to see its error")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- load generation --------------------------------------------------------------------
def summarize(latencies: list[float], elapsed: float, **extra) -> dict:
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(lat), "seconds": round(elapsed, 3), "throughput_rps": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), **extra}


async def drive(call: Callable[[int], Awaitable], concurrency: int, seconds: float,
                max_requests: int | None = None) -> tuple[list[float], float]:
    """Keeps `concurrency` calls in flight for `seconds` (or until `max_requests`)."""
    counter = itertools.count()
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds

    async def worker() -> None:
        while True:
            n = next(counter)
            if (max_requests is not None and n >= max_requests) or time.perf_counter() >= end:
                return
            t = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def drive_threads(call: Callable[[int], object], concurrency: int, seconds: float,
                  max_requests: int | None = None) -> tuple[list[float], float]:
    """drive() for in-process calls: `concurrency` threads."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds

    def worker() -> None:
        while True:
            with lock:
                n = next(counter)
            if (max_requests is not None and n >= max_requests) or time.perf_counter() >= end:
                return
            t = time.perf_counter()
            call(n)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies, time.perf_counter() - start


class Client:
    """grpc.aio channels to one port; several channels so SO_REUSEPORT servers all get connections."""

    def __init__(self, port: int, channels: int) -> None:
        import grpc

        from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(channels)]
        self.stubs = [pb_grpc.RecommenderStub(c) for c in self.channels]
        self.empty = [c.unary_unary(EMPTY_METHOD) for c in self.channels]
        from protos.recsys.v1 import recommender_pb2 as pb

        self.null = [c.unary_unary(NULL_METHOD, request_serializer=pb.RecommendRequest.SerializeToString,
                                   response_deserializer=pb.RecommendResponse.FromString) for c in self.channels]

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


def rpc_rounds(port: int, cases: dict[str, Callable[[Client, int], Awaitable]], concurrency: int, seconds: float,
               rounds: int, channels: int, warmup_s: float = 1.0, max_requests: dict[str, int] | None = None,
               before_round: Callable[[str], None] | None = None) -> dict[str, list[tuple[list[float], float]]]:
    """Runs each case for `rounds` rounds, alternating cases, after a warm-up of each."""
    max_requests = max_requests or {}

    async def run() -> dict:
        client = Client(port, channels)
        out: dict[str, list] = {name: [] for name in cases}
        try:
            for name, case in cases.items():
                if warmup_s > 0:
                    await drive(lambda n, c=case: c(client, n), concurrency, warmup_s, max_requests.get(name))
            for _ in range(rounds):
                for name, case in cases.items():
                    if before_round:
                        before_round(name)
                    out[name].append(await drive(lambda n, c=case: c(client, n), concurrency, seconds,
                                                 max_requests.get(name)))
        finally:
            await client.close()
        return out

    return asyncio.run(run())


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (/proc): robust to what other processes do to wall clock."""
    total = 0.0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def interleaved_rounds(targets: dict[str, tuple[int, Callable[[Client, int], Awaitable], list[int]]],
                       concurrency: int, seconds: float, rounds: int, channels: int, warmup_s: float = 1.0
                       ) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """name → (port, case, server pids): every case once per round, in this order, for `rounds` rounds.

    Returns (name → [(latencies, elapsed)] as rpc_rounds, name → per-round {server_cpu_us, client_cpu_us,
    load1}): CPU µs per request of the server processes and of this (client) process, and the 1-minute
    load average when the round started.
    """
    async def run() -> tuple[dict, dict]:
        clients = {port: Client(port, channels) for port, _, _ in targets.values()}
        out: dict[str, list] = {name: [] for name in targets}
        stats: dict[str, list] = {name: [] for name in targets}
        try:
            for port, case, _ in targets.values():
                if warmup_s > 0:
                    await drive(lambda n, c=case, cl=clients[port]: c(cl, n), concurrency, warmup_s)
            for _ in range(rounds):
                for name, (port, case, pids) in targets.items():
                    load1 = os.getloadavg()[0]
                    server0, client0 = process_cpu_s(pids), time.process_time()
                    latencies, elapsed = await drive(lambda n, c=case, cl=clients[port]: c(cl, n), concurrency,
                                                     seconds)
                    n = max(len(latencies), 1)
                    stats[name].append({"server_cpu_us": round(1e6 * (process_cpu_s(pids) - server0) / n, 1),
                                        "client_cpu_us": round(1e6 * (time.process_time() - client0) / n, 1),
                                        "load1": round(load1, 2)})
                    out[name].append((latencies, elapsed))
        finally:
            for client in clients.values():
                await client.close()
        return out, stats

    return asyncio.run(run())


def cpu_summary(stats: list[dict]) -> dict:
    """Medians over rounds of the per-round CPU figures of interleaved_rounds."""
    return {"server_cpu_us_per_request": round(float(np.median([s["server_cpu_us"] for s in stats])), 1),
            "client_cpu_us_per_request": round(float(np.median([s["client_cpu_us"] for s in stats])), 1),
            "server_cpu_us_per_round": [s["server_cpu_us"] for s in stats],
            "load1_per_round": [s["load1"] for s in stats]}


def merge(rounds: list[tuple[list[float], float]], **extra) -> dict:
    latencies = [x for lat, _ in rounds for x in lat]
    return summarize(latencies, sum(e for _, e in rounds), rounds=len(rounds),
                     round_rps=[round(len(lat) / e, 1) for lat, e in rounds], **extra)


# -- the benchmark ----------------------------------------------------------------------
def train_synthetic(workdir: str, users: int, items: int, interactions: int) -> str:
    root = pathlib.Path(workdir) / "artifacts"
    argv = ["train", "--artifacts", str(root), "--new-version", "bench", "--source", "synthetic",
            "--synthetic-num-users", str(users), "--synthetic-num-items", str(items),
            "--synthetic-num-interactions", str(interactions), "--epochs", "1"]
    print("training:", "recsys", " ".join(argv), flush=True)
    # In a child process, so this process's TensorFlow (used by (d)) carries no training state.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if subprocess.run([sys.executable, "-m", "recsys.cli", "--log-level", "WARNING", *argv], env=env).returncode:
        raise SystemExit("training the bench version failed")
    return str(root / "bench")


def known_users(version_dir: str, n: int, seed: int) -> list[str]:
    from core import layout
    from features import FeatureStore

    store = FeatureStore.load(layout.features_dir(version_dir))
    users = list(store.vocabularies["user_id"].tokens)
    random.Random(seed).shuffle(users)
    return users[:n]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    if argv[:1] == ["reference"]:
        return reference_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--version-dir", help="a trained version directory (artifacts/<version>)")
    src.add_argument("--train-synthetic", action="store_true", help="train a small synthetic version first")
    p.add_argument("--synthetic-users", type=int, default=3000)
    p.add_argument("--synthetic-items", type=int, default=1000)
    p.add_argument("--synthetic-interactions", type=int, default=60000)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight for (a), (b) (default: %(default)s)")
    p.add_argument("--miss-concurrency", type=int, default=32,
                   help="requests in flight for the cache-miss cases (c), (c0), (d) (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="per round of (a)/(b) (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default: %(default)s)")
    p.add_argument("--miss-requests", type=int, default=0,
                   help="distinct users per cache-miss round (0 = every train user; Redis is flushed before each "
                        "round and the miss servers run without the near cache, so every request is cold)")
    p.add_argument("--hit-users", type=int, default=256, help="users cycled through in (b)")
    p.add_argument("--num-results", type=int, default=10)
    p.add_argument("--workers", type=int, default=8, help="server handler threads per process")
    p.add_argument("--processes", type=int, default=1, help="server processes for (a)-(c)")
    p.add_argument("--channels", type=int, default=4, help="client channels (TCP connections)")
    p.add_argument("--near-ttl-s", type=float, default=30.0, help="server near-cache TTL for (a)/(b)")
    p.add_argument("--batch-max-users", type=int, default=None,
                   help="server micro-batch size for the batched servers (default: ServerConfig's)")
    p.add_argument("--batch-max-wait-s", type=float, default=None,
                   help="server micro-batch wait (default: ServerConfig's)")
    p.add_argument("--batch-workers", type=int, default=None,
                   help="batches computed at once per server (default: ServerConfig's)")
    p.add_argument("--tf-intra-op-threads", type=int, default=None, help="TF threads (default: ServerConfig's)")
    p.add_argument("--tf-inter-op-threads", type=int, default=None, help="TF threads (default: ServerConfig's)")
    p.add_argument("--reference-batch", type=int, default=256,
                   help="users per in-process candidates() call in the reference (e) (default: %(default)s)")
    p.add_argument("--unbatched", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the cache-miss cases on a server with batching off (c0)")
    p.add_argument("--paced", action=argparse.BooleanOptionalAction, default=True,
                   help="also offer an open-loop load at --paced-fraction of (c)'s throughput and report latency")
    p.add_argument("--paced-fraction", type=float, default=0.5)
    p.add_argument("--tf-threads-sweep", nargs="*", default=[], metavar="INTRA,INTER",
                   help="also measure (c)'s throughput on servers with these TF thread settings, e.g. 1,1 2,1 2,2 0,0")
    p.add_argument("--misses", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the cache-miss cases (c), (c0), (d), (e) and the paced load")
    p.add_argument("--gil-switch-interval-s", type=float, default=None, help="(default: ServerConfig's)")
    p.add_argument("--redis-hits", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure (a)/(b) with the near cache off, so every hit is a Redis GET")
    p.add_argument("--monitor-overhead", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure (b) on a server with live drift monitoring on vs one with it off (one process "
                        "each, alternating rounds, both scraped every --scrape-interval-s)")
    p.add_argument("--scrape-interval-s", type=float, default=1.0,
                   help="/metrics scrape interval for the monitoring comparison (default: %(default)s)")
    p.add_argument("--aio", action=argparse.BooleanOptionalAction, default=None,
                   help="servers on a grpc.aio loop (default: ServerConfig's)")
    p.add_argument("--threads-server", action=argparse.BooleanOptionalAction, default=True,
                   help="with --aio, also measure (a)/(b) and (a')/(b') on --no-aio servers in the same rounds")
    p.add_argument("--compare-stacks", action="store_true", help="also measure aio and multi-process servers")
    p.add_argument("--near-validation", action=argparse.BooleanOptionalAction, default=True,
                   help="near-cache hits validated by invalidation messages, by a counter read, and not at all "
                        "(CacheConfig.near_validate, near_invalidations), three servers, rounds alternating")
    p.add_argument("--served-logging", action=argparse.BooleanOptionalAction, default=True,
                   help="(b) with every served list logged as impressions vs not, two servers, rounds alternating")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write config, hardware and results here")
    a = p.parse_args(argv)

    from protos.recsys.v1 import recommender_pb2 as pb
    from serving import ServerConfig

    defaults = ServerConfig()
    batching = {"batch_max_users": a.batch_max_users if a.batch_max_users is not None else defaults.batch_max_users,
                "batch_max_wait_s": a.batch_max_wait_s if a.batch_max_wait_s is not None else defaults.batch_max_wait_s,
                "batch_workers": a.batch_workers if a.batch_workers is not None else defaults.batch_workers,
                "tf_intra_op_threads": (a.tf_intra_op_threads if a.tf_intra_op_threads is not None
                                        else defaults.tf_intra_op_threads),
                "tf_inter_op_threads": (a.tf_inter_op_threads if a.tf_inter_op_threads is not None
                                        else defaults.tf_inter_op_threads),
                "gil_switch_interval_s": (a.gil_switch_interval_s if a.gil_switch_interval_s is not None
                                          else defaults.gil_switch_interval_s),
                "aio": a.aio if a.aio is not None else defaults.aio}
    tmp = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        local_redis = LocalRedis(tmp).start()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    redis_url = local_redis.url
    rclient = local_redis.client(timeout_s=10.0)
    results: dict = {"server_config": batching}
    try:
        version_dir = a.version_dir or train_synthetic(tmp, a.synthetic_users, a.synthetic_items,
                                                       a.synthetic_interactions)
        users = known_users(version_dir, 10**9, a.seed)
        hit_users = users[:a.hit_users]
        miss_users = users[:a.miss_requests] if a.miss_requests else users
        m = len(miss_users)
        k = a.num_results
        hit_requests = [pb.RecommendRequest(user_id=u, num_results=k) for u in hit_users]
        miss_requests = [pb.RecommendRequest(user_id=u, num_results=k) for u in miss_users]
        sources: dict[str, dict[int, int]] = {"hit": {}, "miss": {}, "null": {}}
        answers: dict[str, dict[str, list]] = {"batched": {}, "unbatched": {}}

        # Every call carries a deadline, as production clients' calls do (it costs timer work).
        async def empty(c: Client, n: int):
            await c.empty[n % len(c.empty)](b"", timeout=10)

        async def null_recommend(c: Client, n: int):  # (a0): a Recommend-shaped call that does nothing
            r = await c.null[n % len(c.null)](hit_requests[n % len(hit_requests)], timeout=10)
            sources["null"][r.source] = sources["null"].get(r.source, 0) + 1

        async def hit(c: Client, n: int):
            r = await c.stubs[n % len(c.stubs)].Recommend(hit_requests[n % len(hit_requests)], timeout=10)
            sources["hit"][r.source] = sources["hit"].get(r.source, 0) + 1

        def miss_case(label: str):
            async def miss(c: Client, n: int):
                r = await c.stubs[n % len(c.stubs)].Recommend(miss_requests[n % m], timeout=30)
                sources["miss"][r.source] = sources["miss"].get(r.source, 0) + 1
                answers[label][miss_requests[n % m].user_id] = [(i.item_id, i.score) for i in r.items]
            return miss

        def flush(_name: str = "") -> None:
            rclient.flushdb()

        # (d) and (e): the same code in this process, on the same Redis, without gRPC. Loaded
        # before the servers start so loading does not overlap the measured rounds.
        from serving import CacheConfig, RecommendServer
        from serving.validation import RequestLimits, validate_recommend

        local = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=0, **batching),
                                CacheConfig(redis_url=redis_url, near_ttl_s=0.0))
        local.load(version_dir, verify=False)
        limits = RequestLimits()
        for r in hit_requests[:32]:  # warm TensorFlow in this process
            local.servicer.answer(validate_recommend(r, limits))
        pipeline = local.servicer.model
        pipeline.candidates(miss_users[:a.reference_batch])  # warm the reference's batch shape
        results["f_decode_blend"] = decode_blend_us(pipeline, hit_users[:64], k)
        queries = [validate_recommend(q, limits) for q in miss_requests]
        d_sources: dict[str, int] = {}

        def in_process(n: int) -> None:
            _, source = local.servicer.answer(queries[n % m])
            d_sources[source] = d_sources.get(source, 0) + 1

        def reference_round() -> tuple[list[float], float]:
            """(e): candidates() for every miss user, `--reference-batch` users per call; one 'latency' per user."""
            lat = []
            t0 = time.perf_counter()
            for lo in range(0, m, a.reference_batch):
                t = time.perf_counter()
                n = len(pipeline.candidates(miss_users[lo:lo + a.reference_batch]))
                lat += [(time.perf_counter() - t) / n] * n
            return lat, time.perf_counter() - t0

        # The hit cases: one server with the near cache, and with --redis-hits one without it (every hit a
        # Redis MGET) and one without the decoded-entry reuse too, all up at once; every round runs
        # (a), (b), (a'), (b'), (a''), (b'') in turn, so machine noise lands on all of them alike.
        hit_servers = {"near": ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, a.near_ttl_s,
                                               batching)}
        try:
            if a.threads_server and batching["aio"]:  # the synchronous server model, same rounds
                hit_servers["threads"] = ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers,
                                                         a.near_ttl_s, {**batching, "aio": False})
            if a.redis_hits:
                hit_servers["redis"] = ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, 0.0,
                                                       batching)
                if a.threads_server and batching["aio"]:
                    hit_servers["redis-threads"] = ServerProcesses("sync", a.processes, version_dir, redis_url,
                                                                   a.workers, 0.0, {**batching, "aio": False})
                hit_servers["redis0"] = ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, 0.0,
                                                        batching, {"decoded_max_entries": 0})
            for srv in hit_servers.values():
                asyncio.run(_warm(srv.port, hit_requests))  # also warms TensorFlow in the server
            targets = {}
            for label, srv in hit_servers.items():
                pids = [p.pid for p in srv.procs]
                targets[f"{label}:empty"] = (srv.port, empty, pids)
                if label == "near":
                    targets["near:null"] = (srv.port, null_recommend, pids)
                targets[f"{label}:hit"] = (srv.port, hit, pids)
            hit_rounds, hit_cpu = interleaved_rounds(targets, a.concurrency, a.seconds, a.rounds, a.channels)
        finally:
            for srv in hit_servers.values():
                srv.close()
        ab = {"empty": hit_rounds["near:empty"], "hit": hit_rounds["near:hit"]}
        hit_sources = dict(sources["hit"])
        sources["hit"].clear()

        if a.monitor_overhead:
            results["monitor_overhead"] = monitor_overhead(a, version_dir, redis_url, batching, hit, hit_requests)

        rounds: dict[str, list] = {"c": [], "c0": [], "d": [], "e": [], "e2": []}
        paced: dict[str, dict] = {}
        if not a.misses:
            local.stop(0)
        else:
            # Cache misses: servers without the near cache and Redis flushed before every round, so
            # every request of a round is a cold computation; batched (c), unbatched (c0), the servicer
            # in process (d) and the in-process batched reference (e) alternate round by round.
            reference = ReferenceProcess(version_dir, a.reference_batch)  # (e'): TF's default threads
            miss_servers = {"batched": ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, 0.0,
                                                       batching)}
            if a.unbatched:
                miss_servers["unbatched"] = ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, 0.0,
                                                            {**batching, "batch_max_users": 0})
            try:
                for srv in miss_servers.values():
                    asyncio.run(_warm(srv.port, hit_requests))
                for _ in range(a.rounds):
                    for key, label in (("c", "batched"), ("c0", "unbatched")):
                        if label in miss_servers:
                            rounds[key] += rpc_rounds(miss_servers[label].port, {"miss": miss_case(label)},
                                                      a.miss_concurrency, 1e9, 1, a.channels, max_requests={"miss": m},
                                                      before_round=flush, warmup_s=0.0)["miss"]
                    flush()
                    rounds["d"].append(drive_threads(in_process, a.miss_concurrency, 1e9, m))
                    rounds["e"].append(reference_round())
                    rounds["e2"].append(reference.round())
                if a.paced:
                    for key, label in (("c", "batched"), ("c0", "unbatched")):
                        if label not in miss_servers:
                            continue
                        rate = a.paced_fraction * merge(rounds[key])["throughput_rps"]
                        flush()
                        lat, elapsed = asyncio.run(paced_load(miss_servers[label].port, miss_case(label), rate, m,
                                                              a.channels))
                        paced[label] = summarize(lat, elapsed, offered_rps=round(rate, 1))
            finally:
                for srv in miss_servers.values():
                    srv.close()
                reference.close()
                local.stop(0)

        sweep = {}
        for setting in a.tf_threads_sweep:
            intra, inter = (int(x) for x in setting.split(","))
            srv = ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, 0.0,
                                  {**batching, "tf_intra_op_threads": intra, "tf_inter_op_threads": inter})
            try:
                asyncio.run(_warm(srv.port, hit_requests))
                out = []
                for _ in range(a.rounds):
                    out += rpc_rounds(srv.port, {"miss": miss_case("batched")}, a.miss_concurrency, 1e9, 1,
                                      a.channels, max_requests={"miss": m}, before_round=flush, warmup_s=0.0)["miss"]
            finally:
                srv.close()
            sweep[setting] = merge(out)

        results["a_empty_rpc"] = merge(ab["empty"], **cpu_summary(hit_cpu["near:empty"]))
        results["a0_null_recommend"] = merge(hit_rounds["near:null"], **cpu_summary(hit_cpu["near:null"]))
        results["b_cache_hit"] = merge(ab["hit"], sources={pb.Source.Name(s): c for s, c in hit_sources.items()},
                                       **cpu_summary(hit_cpu["near:hit"]))
        rounds_ratio = per_round(ab["empty"], ab["hit"])
        results["ratios"] = {
            "b_over_a_throughput": round(results["b_cache_hit"]["throughput_rps"]
                                         / results["a_empty_rpc"]["throughput_rps"], 3),
            "b_over_a_throughput_median_round": round(float(np.median(rounds_ratio)), 3),
            "b_over_a_throughput_per_round": rounds_ratio,
            "a0_over_a_throughput_median_round": round(float(np.median(per_round(ab["empty"],
                                                                                 hit_rounds["near:null"]))), 3),
            "b_over_a0_throughput_median_round": round(float(np.median(per_round(hit_rounds["near:null"],
                                                                                 ab["hit"]))), 3),
            # What the ratio would be if the server process alone bounded throughput: its CPU per empty RPC
            # over its CPU per hit (medians of the rounds). Steadier than throughput on a shared machine.
            "b_over_a_server_cpu": round(results["a_empty_rpc"]["server_cpu_us_per_request"]
                                         / results["b_cache_hit"]["server_cpu_us_per_request"], 3)}
        if a.misses:
            results["c_cache_miss_rpc"] = merge(rounds["c"], sources={pb.Source.Name(s): c
                                                                      for s, c in sources["miss"].items()})
            if rounds["c0"]:
                results["c0_cache_miss_rpc_unbatched"] = merge(rounds["c0"])
            results["d_online_in_process"] = merge(rounds["d"], sources=d_sources)
            results["e_candidates_batched_in_process"] = merge(rounds["e"])
            results["e2_candidates_batched_tf_default_threads"] = merge(rounds["e2"])
            rc, rd, re_ = (results[x] for x in ("c_cache_miss_rpc", "d_online_in_process",
                                                "e_candidates_batched_in_process"))
            results["ratios"].update({
                "c_over_e_throughput": round(rc["throughput_rps"] / re_["throughput_rps"], 3),
                "c_over_e_throughput_per_round": per_round(rounds["e"], rounds["c"]),
                "c_over_e2_throughput": round(rc["throughput_rps"]
                                              / results["e2_candidates_batched_tf_default_threads"]["throughput_rps"], 3),
                "c_over_e2_throughput_per_round": per_round(rounds["e2"], rounds["c"]),
                "c_over_d_p50": round(rc["p50_ms"] / rd["p50_ms"], 3),
                "c_over_d_p99": round(rc["p99_ms"] / rd["p99_ms"], 3),
            })
            if rounds["c0"]:
                results["ratios"]["c0_over_e_throughput"] = round(
                    results["c0_cache_miss_rpc_unbatched"]["throughput_rps"] / re_["throughput_rps"], 3)
                same = [u for u in answers["batched"] if u in answers["unbatched"]]
                results["ratios"]["answers_compared"] = len(same)
                results["ratios"]["answers_identical"] = sum(answers["batched"][u] == answers["unbatched"][u]
                                                             for u in same)
            if paced:
                results["paced"] = paced
                for label, r in paced.items():
                    results["ratios"][f"paced_{label}_p99_over_p50"] = round(r["p99_ms"] / r["p50_ms"], 3)
        if sweep:
            results["tf_threads_sweep"] = sweep

        for label, base, key in (("threads", "b_cache_hit", "threads_server"),
                                 ("redis-threads", None, "redis_threads_server")):
            if f"{label}:hit" not in hit_rounds:  # the same hits on the synchronous server (--no-aio)
                continue
            th = {"a_empty_rpc": merge(hit_rounds[f"{label}:empty"], **cpu_summary(hit_cpu[f"{label}:empty"])),
                  "b_cache_hit": merge(hit_rounds[f"{label}:hit"], **cpu_summary(hit_cpu[f"{label}:hit"]))}
            th["b_over_a_throughput"] = round(th["b_cache_hit"]["throughput_rps"] / th["a_empty_rpc"]["throughput_rps"],
                                              3)
            th["b_over_a_throughput_per_round"] = per_round(hit_rounds[f"{label}:empty"], hit_rounds[f"{label}:hit"])
            aio_hit = merge(hit_rounds["near:hit" if base else "redis:hit"])["throughput_rps"]
            aio_empty = merge(hit_rounds["near:empty" if base else "redis:empty"])["throughput_rps"]
            th["aio_hit_over_threads_hit"] = round(aio_hit / th["b_cache_hit"]["throughput_rps"], 3)
            th["aio_hit_over_threads_empty"] = round(aio_hit / th["a_empty_rpc"]["throughput_rps"], 3)
            th["aio_empty_over_threads_empty"] = round(aio_empty / th["a_empty_rpc"]["throughput_rps"], 3)
            results[key] = th

        if a.redis_hits:  # every hit a Redis round trip + decode (near cache off); measured with (a)/(b) above
            out = {"empty": hit_rounds["redis:empty"], "hit": hit_rounds["redis:hit"]}
            out0 = {"empty": hit_rounds["redis0:empty"], "hit": hit_rounds["redis0:hit"]}
            rounds_ratio = per_round(out["empty"], out["hit"])
            results["redis_hits"] = {
                "a_empty_rpc": merge(out["empty"], **cpu_summary(hit_cpu["redis:empty"])),
                "b_cache_hit": merge(out["hit"], **cpu_summary(hit_cpu["redis:hit"])),
                "b_over_a_throughput_median_round": round(float(np.median(rounds_ratio)), 3),
                "b_over_a_throughput_per_round": rounds_ratio}
            rh = results["redis_hits"]
            rh["b_over_a_throughput"] = round(rh["b_cache_hit"]["throughput_rps"] / rh["a_empty_rpc"]["throughput_rps"],
                                              3)
            rh["b_over_a_server_cpu"] = round(rh["a_empty_rpc"]["server_cpu_us_per_request"]
                                              / rh["b_cache_hit"]["server_cpu_us_per_request"], 3)
            rounds0 = per_round(out0["empty"], out0["hit"])
            results["redis_hits_no_decoded_reuse"] = {
                "a_empty_rpc": merge(out0["empty"], **cpu_summary(hit_cpu["redis0:empty"])),
                "b_cache_hit": merge(out0["hit"], **cpu_summary(hit_cpu["redis0:hit"])),
                "b_over_a_throughput_median_round": round(float(np.median(rounds0)), 3),
                "b_over_a_throughput_per_round": rounds0}
            r0 = results["redis_hits_no_decoded_reuse"]
            r0["b_over_a_throughput"] = round(r0["b_cache_hit"]["throughput_rps"] / r0["a_empty_rpc"]["throughput_rps"],
                                              3)

        if a.served_logging:  # issue 13: the cost of logging every served list (near-cache hits, the fastest path)
            sources["hit"].clear()
            logging_servers = {on: ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, a.near_ttl_s,
                                                   batching, events_config={"log_served": on}) for on in (True, False)}
            try:
                for srv in logging_servers.values():
                    asyncio.run(_warm(srv.port, hit_requests))
                logged: dict[bool, list] = {True: [], False: []}
                for _ in range(a.rounds):
                    for on, srv in logging_servers.items():
                        logged[on] += rpc_rounds(srv.port, {"hit": hit}, a.concurrency, a.seconds, 1, a.channels,
                                                 warmup_s=0.5)["hit"]
            finally:
                for srv in logging_servers.values():
                    srv.close()
            # The same cost as CPU time in one process (servicer.answer on near-cache hits, the writer thread's
            # work included): insensitive to what other processes on a shared machine do to wall-clock rounds.
            from feedback import EventLogConfig
            from pipeline import RecommendPipeline

            model = RecommendPipeline.from_version_dir(version_dir, verify=False)
            cpu_servers = {on: RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=0,
                                                            **batching),
                                               CacheConfig(redis_url=redis_url, near_ttl_s=a.near_ttl_s),
                                               events=EventLogConfig(log_served=on)) for on in (True, False)}
            hit_queries = [validate_recommend(q, limits) for q in hit_requests]
            cpu_us: dict[bool, list[float]] = {True: [], False: []}
            try:
                for srv in cpu_servers.values():
                    srv.set_model(model)
                    for q in hit_queries:
                        srv.servicer.answer(q)
                n_cpu = 20 * len(hit_queries)
                for _ in range(a.rounds):
                    for on, srv in cpu_servers.items():
                        t0 = time.process_time()
                        for i in range(n_cpu):
                            srv.servicer.answer(hit_queries[i % len(hit_queries)])
                        if srv.servicer.served is not None:
                            srv.servicer.served.flush()
                        cpu_us[on].append((time.process_time() - t0) / n_cpu * 1e6)
            finally:
                for srv in cpu_servers.values():
                    srv.stop(0)
            on, off = merge(logged[True]), merge(logged[False])
            results["served_logging"] = {
                "b_hit_logging_on": on, "b_hit_logging_off": off, "stream_entries": rclient.xlen("recsys:events"),
                "on_over_off_throughput": round(on["throughput_rps"] / off["throughput_rps"], 3),
                "on_over_off_throughput_per_round": per_round(logged[False], logged[True])}
            results["served_logging"]["cpu_us_per_hit"] = {
                "logging_on": round(float(np.median(cpu_us[True])), 2),
                "logging_off": round(float(np.median(cpu_us[False])), 2),
                "on_per_round": [round(x, 2) for x in cpu_us[True]], "off_per_round": [round(x, 2) for x in cpu_us[False]],
                "off_over_on_median": round(float(np.median(cpu_us[False]) / np.median(cpu_us[True])), 3)}
            results["served_logging"]["on_over_off_throughput_median_round"] = round(float(np.median(
                results["served_logging"]["on_over_off_throughput_per_round"])), 3)

        if a.near_validation:  # issue 13 strict freshness: how a near-cache hit learns of a new engagement
            sources["hit"].clear()
            modes = {"invalidations": {"near_validate": True},  # the default: Redis's messages, no read per hit
                     "read": {"near_validate": True, "near_invalidations": False},  # a counter read per hit
                     "off": {"near_validate": False}}  # not validated (lags another process's engagements)
            validating = {m: ServerProcesses("sync", a.processes, version_dir, redis_url, a.workers, a.near_ttl_s,
                                             batching, cache_config=c) for m, c in modes.items()}
            try:
                for srv in validating.values():
                    asyncio.run(_warm(srv.port, hit_requests))
                got: dict[str, list] = {m: [] for m in modes}
                for _ in range(a.rounds):
                    for m, srv in validating.items():
                        got[m] += rpc_rounds(srv.port, {"hit": hit}, a.concurrency, a.seconds, 1, a.channels,
                                             warmup_s=0.5)["hit"]
            finally:
                for srv in validating.values():
                    srv.close()
            merged = {m: merge(got[m]) for m in modes}
            results["near_validation"] = {f"b_hit_{m}": merged[m] for m in modes}
            for m in ("invalidations", "read"):
                per = per_round(got["off"], got[m])
                results["near_validation"][f"{m}_over_unvalidated"] = {
                    "throughput": round(merged[m]["throughput_rps"] / merged["off"]["throughput_rps"], 3),
                    "per_round": per, "median_round": round(float(np.median(per)), 3)}

        if a.compare_stacks:
            stacks = {}
            for label, stack, procs, workers in (("sync, 2 threads", "sync", 1, 2), ("sync, 8 threads", "sync", 1, 8),
                                                  ("grpc.aio", "aio", 1, 0),
                                                  ("sync x2 processes, 4 threads", "sync", 2, 4)):
                with_model = stack == "sync"
                srv = ServerProcesses(stack, procs, version_dir if with_model else "", redis_url, workers or 1,
                                      a.near_ttl_s, batching)
                try:
                    if with_model:
                        asyncio.run(_warm(srv.port, hit_requests))
                    cases = {"empty": empty, **({"hit": hit} if with_model else {})}
                    out = rpc_rounds(srv.port, cases, a.concurrency, a.seconds, a.rounds, a.channels)
                finally:
                    srv.close()
                stacks[label] = {name: merge(r) for name, r in out.items()}
            results["stacks"] = stacks
    finally:
        local_redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(results, a)
    if a.json:
        path = pathlib.Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"args": vars(a), "hardware": hardware(), "results": results}, indent=2))
    return 0


def monitor_overhead(a: argparse.Namespace, version_dir: str, redis_url: str, batching: dict, hit,
                     hit_requests: list) -> dict:
    """(b) with live drift monitoring on vs off (serving/monitor.py): two one-process servers, alternating
    rounds, each /metrics scraped every --scrape-interval-s meanwhile (the "on" scrape computes PSI/KS)."""
    import urllib.request

    ports = {"on": free_port(), "off": free_port()}
    servers = {k: ServerProcesses("sync", 1, version_dir, redis_url, a.workers, a.near_ttl_s,
                                  {**batching, "monitor": k == "on", "metrics_port": ports[k]}) for k in ports}
    stop, scrapes = threading.Event(), {"on": [], "off": []}

    def scrape() -> None:
        while not stop.wait(a.scrape_interval_s):
            for k, port in ports.items():
                t = time.perf_counter()
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
                scrapes[k].append(time.perf_counter() - t)
    def cpu_s(srv: ServerProcesses) -> float:
        """The server process's user + system CPU seconds (/proc; robust to other load on the machine)."""
        fields = pathlib.Path(f"/proc/{srv.procs[0].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    scraper = threading.Thread(target=scrape, daemon=True)
    out: dict[str, list] = {"on": [], "off": []}
    cpu: dict[str, list] = {"on": [], "off": []}  # (cpu seconds, requests) per round
    try:
        for srv in servers.values():
            asyncio.run(_warm(srv.port, hit_requests))
        scraper.start()
        for i in range(a.rounds):
            for k in ("on", "off") if i % 2 == 0 else ("off", "on"):  # neither always goes first
                srv = servers[k]
                before = cpu_s(srv)
                r = rpc_rounds(srv.port, {"hit": hit}, a.concurrency, a.seconds, 1, a.channels, warmup_s=0.0)["hit"]
                out[k] += r
                cpu[k].append((cpu_s(srv) - before, len(r[0][0])))
    finally:
        stop.set()
        scraper.join()
        for srv in servers.values():
            srv.close()
    on, off = merge(out["on"]), merge(out["off"])
    rounds = per_round(out["off"], out["on"])
    return {"on": on, "off": off, "on_over_off_throughput": round(on["throughput_rps"] / off["throughput_rps"], 3),
            "on_over_off_median_round": round(float(np.median(rounds)), 3), "on_over_off_per_round": rounds,
            "server_cpu_us_per_request": {k: round(1e6 * sum(c for c, _ in v) / sum(n for _, n in v), 1)
                                          for k, v in cpu.items()},
            "cpu_off_over_on": round(sum(c for c, _ in cpu["off"]) / sum(n for _, n in cpu["off"])
                                     / (sum(c for c, _ in cpu["on"]) / sum(n for _, n in cpu["on"])), 3),
            "scrape_ms_p50": {k: round(float(np.median(v)) * 1e3, 2) if v else None for k, v in scrapes.items()},
            "scrapes": {k: len(v) for k, v in scrapes.items()}}


def decode_blend_us(pipeline, users: list[str], k: int, calls: int = 2000) -> dict:
    """(f): µs per CandidateSet.from_bytes + blend_top_k of these users' real entries, as a Redis hit
    without the decoded-entry reuse does it (best of 5 rounds; plus each part alone)."""
    from pipeline import CandidateSet

    raws = [c.to_bytes() for c in pipeline.candidates(users)]
    decoded = [CandidateSet.from_bytes(r) for r in raws]
    weights = pipeline.default_weights

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(calls):
                fn(i % len(raws))
            times.append((time.perf_counter() - t) / calls * 1e6)
        return round(min(times), 2)

    return {"candidates": int(np.mean([len(c) for c in decoded])), "k": k,
            "decode_us": best(lambda i: CandidateSet.from_bytes(raws[i])),
            "blend_top_k_us": best(lambda i: pipeline.blend_top_k(decoded[i], weights, k)),
            "decode_blend_us": best(lambda i: pipeline.blend_top_k(CandidateSet.from_bytes(raws[i]), weights, k))}


async def paced_load(port: int, call: Callable[[Client, int], Awaitable], rate: float, n: int,
                     channels: int) -> tuple[list[float], float]:
    """Open loop: request i is sent at start + i / rate whatever the earlier ones are doing; its
    latency counts from that scheduled time (no coordinated omission)."""
    client = Client(port, channels)
    latencies: list[float] = []
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        await call(client, i)
        latencies.append(time.perf_counter() - scheduled)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    return latencies, time.perf_counter() - start


def per_round(reference: list, other: list) -> list[float]:
    """Throughput ratio other/reference of each pair of adjacent rounds."""
    return [round((len(o[0]) / o[1]) / (len(r[0]) / r[1]), 3) for r, o in zip(reference, other)]


async def _warm(port: int, requests: list) -> None:
    client = Client(port, 1)
    for r in requests:
        await client.stubs[0].Recommend(r, timeout=30)
    await client.close()


def hardware() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
            "loadavg": os.getloadavg()}


def _row(label: str, r: dict) -> str:
    src = ", ".join(f"{k} {v}" for k, v in r.get("sources", {}).items())
    return (f"| {label} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{src} |")


def print_table(results: dict, a: argparse.Namespace) -> None:
    cfg = results["server_config"]
    print(f"\nconcurrency {a.concurrency} (hits) / {a.miss_concurrency} (misses), {a.rounds} rounds, server: "
          f"{'grpc.aio loop +' if cfg.get('aio') else 'sync'} thread pool x {a.workers} workers, {a.processes} process(es), batching {cfg['batch_max_users']} users / "
          f"{cfg['batch_max_wait_s'] * 1e3:g} ms / {cfg['batch_workers']} workers, TF threads intra {cfg['tf_intra_op_threads']} inter "
          f"{cfg['tf_inter_op_threads']}")
    print("| case | requests | throughput (rps) | p50 ms | p95 ms | p99 ms | sources |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for key, label in (("a_empty_rpc", "(a) empty RPC (reference)"),
                       ("a0_null_recommend", "(a0) NullRecommend: a hit-shaped call, no work (attribution)"),
                       ("b_cache_hit", "(b) Recommend, near-cache hit"),
                       ("c_cache_miss_rpc", "(c) Recommend, cache miss, batched server"),
                       ("c0_cache_miss_rpc_unbatched", "(c0) Recommend, cache miss, batching off"),
                       ("d_online_in_process", "(d) servicer in-process (no gRPC), cache miss"),
                       ("e_candidates_batched_in_process",
                        f"(e) candidates() in-process, {a.reference_batch} users per call (reference; per user)"),
                       ("e2_candidates_batched_tf_default_threads",
                        "(e') the same in its own process, TF's default threads (reference; per user)")):
        if key in results:
            print(_row(label, results[key]))
    for label, r in results.get("paced", {}).items():
        print(_row(f"paced {label} server at {r['offered_rps']} rps offered", r))
    for key, tag, what in (("threads_server", "", "near-cache hit"), ("redis_threads_server", "'", "Redis hit")):
        if key in results:
            th = results[key]
            print(_row(f"(a{tag}-t) empty RPC, synchronous server (--no-aio)", th["a_empty_rpc"]))
            print(_row(f"(b{tag}-t) Recommend, {what}, synchronous server", th["b_cache_hit"]))
    if "redis_hits" in results:
        rh = results["redis_hits"]
        print(_row("(a') empty RPC, second server", rh["a_empty_rpc"]))
        print(_row("(b') Recommend, Redis hit (near cache off)", rh["b_cache_hit"]))
    if "redis_hits_no_decoded_reuse" in results:
        r0 = results["redis_hits_no_decoded_reuse"]
        print(_row("(a'') empty RPC, third server", r0["a_empty_rpc"]))
        print(_row("(b'') Redis hit, near cache and decoded-entry reuse off", r0["b_cache_hit"]))
    if "monitor_overhead" in results:
        mo = results["monitor_overhead"]
        print(_row("(b) near-cache hit, live monitoring on (1 process)", mo["on"]))
        print(_row("(b) near-cache hit, live monitoring off (1 process)", mo["off"]))
    f = results["f_decode_blend"]
    print(f"\n(f) decode + blend_top_k of one {f['candidates']}-candidate entry (k {f['k']}), in-process: "
          f"{f['decode_blend_us']} µs (decode {f['decode_us']} µs, blend_top_k {f['blend_top_k_us']} µs)  "
          f"target <= 100 µs")
    ratios = results["ratios"]
    print(f"\n(b)/(a) throughput: {ratios['b_over_a_throughput']} over all rounds, median round "
          f"{ratios['b_over_a_throughput_median_round']} (per round {ratios['b_over_a_throughput_per_round']})"
          f"  target >= 0.8")
    for key, what in (("threads_server", "near-cache hits"), ("redis_threads_server", "Redis hits")):
        if key in results:
            th = results[key]
            print(f"{what} on a synchronous server, same rounds: hit/empty {th['b_over_a_throughput']} (per round "
                  f"{th['b_over_a_throughput_per_round']}); aio hit ÷ its hit {th['aio_hit_over_threads_hit']}, ÷ its "
                  f"empty RPC {th['aio_hit_over_threads_empty']}; aio empty ÷ its empty "
                  f"{th['aio_empty_over_threads_empty']}")
    if "redis_hits" in results:
        rh = results["redis_hits"]
        print(f"(b')/(a') throughput, every hit from Redis: {rh['b_over_a_throughput']} over all rounds, median "
              f"round {rh['b_over_a_throughput_median_round']} (per round {rh['b_over_a_throughput_per_round']})"
              f"  target >= 0.6")
    print(f"(a0)/(a) median round {ratios['a0_over_a_throughput_median_round']}: gRPC and client cost of a "
          f"Recommend-shaped call; (b)/(a0) median round {ratios['b_over_a0_throughput_median_round']}: the servicer")
    cpu_rows = [("(a)", results["a_empty_rpc"]), ("(a0)", results["a0_null_recommend"]),
                ("(b)", results["b_cache_hit"])]
    for key, tag in (("redis_hits", "'"), ("redis_hits_no_decoded_reuse", "''")):
        if key in results:
            cpu_rows += [(f"(a{tag})", results[key]["a_empty_rpc"]), (f"(b{tag})", results[key]["b_cache_hit"])]
    print("server / client CPU µs per request (median of rounds): " + "; ".join(
        f"{label} {r['server_cpu_us_per_request']} / {r['client_cpu_us_per_request']}" for label, r in cpu_rows)
          + f"; load average at round starts {results['a_empty_rpc']['load1_per_round']}")
    print(f"server CPU per empty RPC ÷ per hit: near cache {ratios['b_over_a_server_cpu']}"
          + (f", Redis {results['redis_hits']['b_over_a_server_cpu']}" if "redis_hits" in results else ""))
    if "redis_hits_no_decoded_reuse" in results:
        r0 = results["redis_hits_no_decoded_reuse"]
        print(f"(b'')/(a'') throughput, every hit decoded and blended: {r0['b_over_a_throughput']} (per round "
              f"{r0['b_over_a_throughput_per_round']})")
    if "monitor_overhead" in results:
        mo = results["monitor_overhead"]
        print(f"monitoring on/off cache-hit throughput: {mo['on_over_off_throughput']} over all rounds, median round "
              f"{mo['on_over_off_median_round']}; server CPU per request off/on {mo['cpu_off_over_on']} "
              f"({mo['server_cpu_us_per_request']} µs) (per round "
              f"{mo['on_over_off_per_round']}; /metrics scrape p50 ms {mo['scrape_ms_p50']}, {mo['scrapes']} scrapes)"
              f"  target >= 0.95")
    if "near_validation" in results:
        nv = results["near_validation"]
        for m, label in (("invalidations", "by invalidation messages (the default)"), ("read", "by a counter read")):
            r = nv[f"{m}_over_unvalidated"]
            print(f"near-cache hits validated {label} / not validated: {r['throughput']} over all rounds, median "
                  f"round {r['median_round']} ({nv[f'b_hit_{m}']['throughput_rps']} vs "
                  f"{nv['b_hit_off']['throughput_rps']} rps; per round {r['per_round']})")
    if "served_logging" in results:
        sl = results["served_logging"]
        print(f"near-cache hits with every served list logged / without: {sl['on_over_off_throughput']} over all "
              f"rounds, median round {sl['on_over_off_throughput_median_round']} "
              f"({sl['b_hit_logging_on']['throughput_rps']} vs {sl['b_hit_logging_off']['throughput_rps']} rps; per "
              f"round {sl['on_over_off_throughput_per_round']}; {sl['stream_entries']} lists in the log)  "
              f"target >= 0.9")
        cpu = sl["cpu_us_per_hit"]
        added = cpu["logging_on"] - cpu["logging_off"]
        print(f"  in-process CPU per near-cache hit (servicer.answer without gRPC, writer thread included): logging "
              f"on {cpu['logging_on']} µs, off {cpu['logging_off']} µs: {added:.2f} µs per served list, "
              f"{added * sl['b_hit_logging_on']['throughput_rps'] / 1e4:.2f}% of one core at the logged server's rate")
    if "c_over_e_throughput" in ratios:
        print(f"(c)/(e) throughput: {ratios['c_over_e_throughput']} (per round "
              f"{ratios['c_over_e_throughput_per_round']})  target >= 0.6")
    if "c_over_e2_throughput" in ratios:
        print(f"(c)/(e') throughput: {ratios['c_over_e2_throughput']} (per round "
              f"{ratios['c_over_e2_throughput_per_round']})  target >= 0.6")
    if "c0_over_e_throughput" in ratios:
        print(f"(c0)/(e) throughput, batching off: {ratios['c0_over_e_throughput']}; answers identical batched vs "
              f"unbatched: {ratios['answers_identical']} of {ratios['answers_compared']}")
    for label in results.get("paced", {}):
        print(f"paced {label}: p99/p50 {ratios[f'paced_{label}_p99_over_p50']}  target <= 3")
    if "c_over_d_p50" in ratios:
        print(f"(c)/(d) latency: p50 {ratios['c_over_d_p50']}, p99 {ratios['c_over_d_p99']}")
    if "tf_threads_sweep" in results:
        print("\n| TF threads intra,inter | (c) throughput (rps) | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|")
        for setting, r in results["tf_threads_sweep"].items():
            print(f"| {setting} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    if "stacks" in results:
        print("\n| server stack (near cache on) | empty RPC rps | cache-hit rps | hit/empty |")
        print("|---|---:|---:|---:|")
        for label, r in results["stacks"].items():
            e = r["empty"]["throughput_rps"]
            h = r.get("hit", {}).get("throughput_rps")
            print(f"| {label} | {e} | {h if h is not None else 'n/a'} | "
                  f"{round(h / e, 3) if h is not None else 'n/a'} |")


if __name__ == "__main__":
    sys.exit(main())
