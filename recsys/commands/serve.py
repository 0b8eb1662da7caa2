"""`recsys serve` (the gRPC server) and `recsys serve-demo` (the serving tour); the client is `recsys recommend`.

Neither takes data flags: a server answers with the trained version's own features,
vocabularies and models, so its data and split settings are the version's (manifest["data"]).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Literal

from core.config import config_to_dict, section
from core.errors import RecsysError
from core.registry import default_root, resolve_version
from feedback import EventLogConfig
from recsys.commands import add_command
from serving import CacheConfig, HotSwapConfig, RequestLimits, SecurityConfig, ServerConfig
from serving.experiments import ExperimentsConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeRunConfig:
    """Which version to serve and how to log."""

    artifacts: str = ""            # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = "current"       # a version name, 'current' (the registry pointer) or a version directory
    verify: bool = True            # check the version's checksums before serving it
    log_format: Literal["text", "json"] = "json"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`recsys serve`: one section per serving config; none has a flag prefix."""

    run: ServeRunConfig = section(ServeRunConfig, title="run")
    server: ServerConfig = section(ServerConfig, title="server")
    cache: CacheConfig = section(CacheConfig, title="cache")
    limits: RequestLimits = section(RequestLimits, title="request limits")
    hotswap: HotSwapConfig = section(HotSwapConfig, title="hot swap")
    security: SecurityConfig = section(SecurityConfig, title="security")
    events: EventLogConfig = section(EventLogConfig, prefix="events_", title="event log (LogEvents, streamed history)")
    experiments: ExperimentsConfig = section(ExperimentsConfig, prefix="experiment_",
                                             title="experiments (A/B arms, shadow, canary: `recsys experiment`)")


@dataclasses.dataclass(frozen=True)
class ServeDemoConfig:
    artifacts: str = ""            # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = "current"       # version to serve
    users: tuple[str, ...] = ()    # known users to recommend for (empty = the two most active train users)
    num_results: int = dataclasses.field(default=5, metadata={"aliases": ("-k",)})


_RUN_HELP = {"artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)",
             "version": "version name under --artifacts, 'current' (the registry pointer) or a directory"}


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "serve", ServeConfig, run_serve, help_text={
        "run": {**_RUN_HELP, "verify": "check the version's checksums before serving it",
                "log_format": "json: one structured object per line; text: human-readable"},
        "server": {
            "workers": "threads for the work off the event loop (with --no-aio: handler threads)",
            "aio": "serve on a grpc.aio event loop that answers near-cache hits itself and hands the rest to "
                   "--workers threads (--no-aio = the synchronous gRPC server, every RPC in a thread)",
            "aio_redis_reads": "with --aio and a Redis cache, read a plain request's cache entry on the event loop "
                               "and answer a hit there (--no-aio-redis-reads: read it in a --workers thread)",
            "max_concurrent_rpcs": "RPCs in flight before RESOURCE_EXHAUSTED",
            "metrics_port": "Prometheus /metrics port (0 = off)", "grace_s": "seconds in-flight RPCs get on SIGTERM",
            "engagement_weight": "default blend weight (< 0: the version's)",
            "quality_weight": "default blend weight (< 0: the version's)",
            "min_deadline_s": "refuse online computations with less time left than this",
            "processes": "server processes sharing --port (SO_REUSEPORT), each with its own model copy; process i "
                         "serves metrics on --metrics-port + i (fixed across blue/green swaps; the blue/green "
                         "supervisor's own metrics on --metrics-port + N)",
            "batch_max_users": "concurrent cache misses of up to this many users share one user-tower, FAISS and "
                               "ranker call (0 = off: each miss computes alone)",
            "batch_max_wait_s": "the first miss of a batch waits at most this long for batch-mates",
            "batch_workers": "batches computed at once (threads)",
            "tf_intra_op_threads": "TensorFlow intra-op threads in this process (0 = TF's default)",
            "tf_inter_op_threads": "TensorFlow inter-op threads in this process (0 = TF's default)",
            "faiss_threads": "FAISS OpenMP threads in this process (0 = FAISS's default, one per core)",
            "gil_switch_interval_s": "Python's GIL switch interval in this process (0 = Python's default)",
            "monitor": "live drift monitoring: the recent answers vs the version's reference profile, computed when "
                       "/metrics is scraped (--no-monitor = off)",
            "monitor_window": "answers in the monitoring window (the newest)",
            "monitor_max_age_s": "answers older than this leave the monitoring window",
            "monitor_min_samples": "requests in the window before a drift gauge is computed (NaN before)",
            "monitor_interval_s": "recompute the drift gauges at most this often (scrapes in between get the last "
                                  "values)"},
        "cache": {"redis_url": "redis://host:port/db, or redis+cluster://host:port[,host:port...] for a Redis "
                               "Cluster; empty = in-process LRU", "ttl_s": "lifetime of cached entries",
                  "socket_timeout_s": "per Redis command", "circuit_open_s": "skip Redis this long after a failure",
                  "decoded_max_entries": "decoded Redis entries kept per process; a hit whose bytes are unchanged "
                                         "reuses its decoded copy (0 = off)",
                  "thread_read_connections": "each request thread reads Redis on a connection of its own (no pool "
                                             "checkout per read; same timeouts and retries); off = the shared pool",
                  "near_validate": "a near-cache hit is checked against the user's engagement counter (by Redis's "
                                   "invalidation messages, or a read: --near-invalidations), so another process's "
                                   "engagement is reflected at once; off = up to --near-ttl-s of lag",
                  "near_invalidations": "validated near hits learn of engagements from Redis's invalidation "
                                        "messages (CLIENT TRACKING) instead of a read per hit, still strictly fresh; "
                                        "one Redis only (a cluster or TLS reads per hit)"},
        "hotswap": {
            "watch_interval_s": "poll the registry pointer this often and swap to a new version (0 = off; SIGHUP "
                                "always reloads)",
            "warmup_users": "known users computed on a new version before it serves",
            "swap_mode": "in_process: each server loads and switches itself; blue_green: new server processes load "
                         "the version, then take over the port while the old ones drain (no loader in a serving "
                         "process)"},
        "security": {
            "tls_cert": "PEM server certificate chain (with --tls-key; empty = plaintext)",
            "tls_key": "PEM server private key", "tls_client_ca": "PEM CA for client certificates (mutual TLS)",
            "auth_tokens_file": "file of accepted bearer tokens, one per line",
            "auth_tokens_env": "environment variable with comma-separated accepted tokens",
            "max_message_bytes": "largest request/response message"},
        "events": {
            "redis_url": "Redis holding the event log (empty = --redis-url; both empty = no event log)",
            "stream_key": "the Redis stream; its dedupe, counter and channel keys share this prefix",
            "max_len": "log entries kept (approximate trim): export more often than it fills",
            "dedupe_ttl_s": "seconds an event id is remembered (a replay within it writes nothing)",
            "recent_length": "streamed engagements kept per user, newest first",
            "recent_ttl_s": "a user's streamed history expires this long after their last event",
            "max_batch_events": "events per LogEvents call", "max_batch_bytes": "LogEvents request bytes",
            "max_id_length": "event/user/item/request id bytes",
            "timeout_s": "per Redis command of LogEvents (slower: UNAVAILABLE)",
            "read_timeout_s": "per Redis read of a user's counter or history on the Recommend path",
            "log_served": "log every served list as impressions (--no-events-log-served: off)",
            "served_queue": "served lists queued for writing; beyond it they are dropped and counted",
            "served_flush_s": "the served-list writer sends what queued this often, in one Redis call",
            "versions_ttl_s": "a process trusts its copy of a user's engagement counter this long (only when the "
                              "event log is in another Redis than the cache)",
            "stream_shards": "Redis Cluster: the log is this many streams <stream-key>:{s<k>} spread over the "
                             "masters",
            "versions_max_entries": "users' counters kept per process"},
        "experiments": {
            "file": "the experiment file (empty = <artifacts>/experiment.json, written by `recsys experiment set`; "
                    "'off' = no experiments)",
            "poll_s": "re-read the file when it changed, and check the canary guardrails, this often",
            "allow_force": "honour RecommendRequest.force_arm (QA) when the experiment sets allow_force too",
            "memory_budget_mb": "the served version plus the experiment's versions must fit this (estimated as "
                                "their files' size × --experiment-memory-factor); otherwise the file is refused",
            "memory_factor": "estimated resident bytes per byte of a version's files",
            "shadow_queue": "shadow requests waiting; beyond it they are dropped and counted",
            "verify": "check an experiment version's checksums before loading it"}},
        description="Starts the gRPC Recommender server for a trained version: health (grpc.health.v1), "
                    "reflection, Prometheus metrics, Redis or in-process candidate cache. SIGTERM stops it "
                    "gracefully; SIGHUP reloads the version the registry points at. Data and split settings are "
                    "the version's own (its features and manifest); there are no data flags.")
    add_command(sub, "serve-demo", ServeDemoConfig, run_serve_demo, help_text={"": {
        **_RUN_HELP, "users": "known users to recommend for (empty = the two most active train users)"}},
        description="The serving tour: starts a local redis-server (in-process cache if none is installed) and "
                    "the gRPC server on free ports, calls Recommend for a known user (online, then cached, then "
                    "re-weighted from the same cache entry), an unknown user (popularity fallback) and "
                    "SimilarItems; then logs events (LogEvents) for a known user and shows the next list change, "
                    "and personalises a brand-new user from three events; then shuts everything down.")


def _root(artifacts: str) -> str:
    return artifacts or str(default_root())


def run_serve(config: ServeConfig, args: argparse.Namespace) -> int:
    from serving import serve
    from serving.metrics import JsonFormatter
    from serving.ports import claim_port

    run = config.run
    if run.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    root = _root(run.artifacts)
    version_dir = resolve_version(root, run.version)  # fail fast on a bad --version
    log.info("starting", extra={"event": "config", "version_dir": str(version_dir),
                                "server": config_to_dict(config.server), "cache": config_to_dict(config.cache),
                                "limits": config_to_dict(config.limits), "hotswap": config_to_dict(config.hotswap),
                                "security": config_to_dict(config.security),
                                "events": config_to_dict(config.events)})
    _check_startup(config)
    # The port belongs to this server (or fleet) until it exits: a second `recsys serve` on it is refused,
    # and so is a port something else listens on (serving/ports.py: gRPC's SO_REUSEPORT would share it).
    claim = claim_port(config.server.host, config.server.port) if config.server.port else None
    try:
        if config.server.processes > 1 or config.hotswap.swap_mode == "blue_green":
            from serving.processes import FleetSpec, serve_processes

            return serve_processes(FleetSpec(root, run.version, run.verify, config.server, config.cache,
                                             config.limits, config.hotswap, config.security, config.events,
                                             logging.getLevelName(logging.getLogger().level), run.log_format,
                                             experiments=config.experiments))

        def resolve():
            return resolve_version(root, run.version)

        try:
            return serve(resolve, config.server, config.cache, config.limits, verify=run.verify,
                         hotswap=config.hotswap, security=config.security, events=config.events,
                         experiments=config.experiments)
        except RuntimeError as e:  # grpc's "Failed to bind to address ...": lost a race for the port
            if "bind" not in str(e):
                raise
            raise RecsysError(f"cannot listen on {config.server.host}:{config.server.port}: "
                              f"{str(e).split(';')[0]}") from e
    finally:
        if claim is not None:
            claim.release()


def _check_startup(config: ServeConfig) -> None:
    """The mistakes gRPC would only report as a traceback once the server binds: the TLS certificate and key
    (missing, swapped, not a pair) and the token settings. RecsysError naming the flag."""
    from serving.security import load_tokens, server_credentials

    if config.security.tls:
        server_credentials(config.security)
    load_tokens(config.security)


def _start_local_redis(workdir: str):
    """A started serving.local_redis.LocalRedis, or None when redis-server is missing or fails to start."""
    from serving.local_redis import LocalRedis

    try:
        return LocalRedis(workdir).start()
    except (FileNotFoundError, RuntimeError) as e:
        log.warning("no local Redis for the demo: %s", e)
        return None


def _demo_table(rows: list[dict], titles) -> None:
    """Compact table of response items: rank, item id, title (when the version has titles), scores,
    answer source and model version."""
    cols = [("rank", 4), ("item_id", 10)] + ([("title", 34)] if titles is not None else []) + [
        ("score", 9), ("engagement", 10), ("quality", 8), ("source", 11), ("model_version", 13)]
    print("  ".join(f"{name:<{w}}" if name in ("item_id", "title", "source", "model_version") else f"{name:>{w}}"
                    for name, w in cols))
    for r in rows:
        cells = {"rank": f"{r['rank']:>4}", "item_id": f"{r['item_id']:<10}",
                 "score": f"{r['score']:9.4g}", "engagement": f"{r['engagement']:>10}", "quality": f"{r['quality']:>8}",
                 "source": f"{r['source']:<11}", "model_version": r["model_version"]}
        if titles is not None:
            title = str(titles.get(r["item_id"], ""))
            cells["title"] = f"{title[:34]:<34}"
        print("  ".join(cells[name] for name, _ in cols))


def _response_rows(response) -> list[dict]:
    from protos.recsys.v1 import recommender_pb2 as pb

    source = pb.Source.Name(response.source)
    # The fallback's engagement and quality are the items' train priors, blended like the heads.
    return [{"rank": n, "item_id": i.item_id, "score": i.score, "engagement": f"{i.engagement:.4g}",
             "quality": f"{i.quality:.4f}", "source": source, "model_version": response.model_version}
            for n, i in enumerate(response.items, 1)]


def _demo_events(stub, user: str, k: int, titles, target: str = "localhost:50051") -> None:
    """The loop closing: a known user's engagements change their very next list; a brand-new user
    is personalised from three events (Source EVENTS instead of FALLBACK). Events are sent the way
    `recsys events log` sends them (its send_events, retries included), and its command lines shown."""
    import time

    from protos.recsys.v1 import recommender_pb2 as pb
    from recsys.commands.events import event_fields, log_command, send_events, to_proto

    def show(request: pb.RecommendRequest, title: str) -> pb.RecommendResponse:
        print(f"\n$ recsys recommend --user {request.user_id} -k {request.num_results}\n# {title}")
        response = stub.Recommend(request, timeout=60)
        _demo_table(_response_rows(response), titles)
        return response

    def log_events(events: list[dict], title: str) -> None:
        print(f"\n# {title}")
        for e in events:
            print(f"$ {log_command(e, target)}")
        accepted, duplicates, _ = send_events(stub, [to_proto(e) for e in events], timeout=10)
        print(f"  → accepted {accepted}, duplicates {duplicates}")

    now = int(time.time())
    before = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k), timeout=60)
    picked = before.items[:2]
    events = [event_fields(user, item.item_id, "engagement", None, now, f"demo-{user}-{n}", before.request_id, n + 1)
              for n, item in enumerate(picked)]
    print(f"\n# closing the loop: every response has a request_id (this one {before.request_id!r}) and the server "
          "logged it as impressions; the client reports what the user did with it")
    log_events(events, f"user {user} engages with the first two items of that list")
    after = show(pb.RecommendRequest(user_id=user, num_results=k),
                 f"user {user} right after: recomputed with the two engagements as newest history (merged with the "
                 "batch history), the engaged items gone")
    kept = len({i.item_id for i in after.items} & {i.item_id for i in before.items})
    print(f"# {k - kept} of {k} items changed")
    log_events(events, "the same batch again (a client retry): nothing changes")
    newcomer = "new-user-demo"
    show(pb.RecommendRequest(user_id=newcomer, num_results=k), "a brand-new user: the fallback")
    seeds = [event_fields(newcomer, item.item_id, "engagement", None, now + n, f"demo-{newcomer}-{n}")
             for n, item in enumerate(before.items[2:5])]
    log_events(seeds, f"{newcomer} engages with three items")
    show(pb.RecommendRequest(user_id=newcomer, num_results=k),
         f"{newcomer} after three events: personalised from them (source EVENTS), not the fallback")


def run_serve_demo(config: ServeDemoConfig, args: argparse.Namespace) -> int:
    import tempfile

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving import CacheConfig, RecommendServer, ServerConfig

    version_dir = resolve_version(_root(config.artifacts), config.version)
    with tempfile.TemporaryDirectory(prefix="recsys-redis-") as workdir:
        local_redis = _start_local_redis(workdir)
        redis_url = local_redis.url if local_redis is not None else ""
        server = None
        try:
            print("cache: " + (f"redis-server started for this demo at {redis_url}" if redis_url else
                               "in-process LRU (redis-server is not installed; scripts/setup.sh installs it)"))
            server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
                                     CacheConfig(redis_url=redis_url)).start()
            target = f"127.0.0.1:{server.port}"
            print(f"server: gRPC on {target}, loading version {version_dir.name} ...", flush=True)
            model = server.load(version_dir)
            items = model.features.items
            titles = (dict(zip(items.index.astype(str), items["title"].astype(str))) if "title" in items.columns
                      else None)
            with grpc.insecure_channel(target) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                print(f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
                print("columns: score = the version's blend (default engagement^1 · quality^1); engagement = the ranker's "
                      "engagement head (with retrieval fusion, β > 0: σ(logit + β·(s − 1)), a ranking score that is "
                      "small by construction, not a calibrated probability); quality = predicted rating scaled to "
                      "[0, 1] (0 = 1★, 1 = 5★)")
                stub = pb_grpc.RecommenderStub(channel)
                k = config.num_results
                # The vocabulary lists train users most active first.
                users = list(config.users) or list(model.features.vocabularies["user_id"].tokens[:2])
                quality_heavy = pb.BlendWeights(engagement=0.2, quality=1.0)
                calls = []
                for user in users:
                    calls += [
                        (f"user {user}: first call, computed online (user tower → FAISS → ranker → blend)",
                         pb.RecommendRequest(user_id=user, num_results=k)),
                        (f"user {user}: the same request again, answered from the cache",
                         pb.RecommendRequest(user_id=user, num_results=k)),
                        (f"user {user}: quality-heavy weights (engagement 0.2, quality 1.0), re-blended from the "
                         "same cache entry without running the ranker",
                         pb.RecommendRequest(user_id=user, num_results=k, weights=quality_heavy)),
                    ]
                calls.append(("an unknown user: fallback, the catalogue's train priors blended with the version's "
                              "weights (engagement = share of train users who engaged, quality = the item's mean "
                              "rating shrunk towards the global mean, scaled like the quality head)",
                              pb.RecommendRequest(user_id="no-such-user", num_results=k)))
                first_item = ""
                for title, request in calls:
                    print(f"\n$ recsys recommend --user {request.user_id} -k {k}"
                          + (f" --engagement-weight {request.weights.engagement:g} --quality-weight "
                             f"{request.weights.quality:g}" if request.HasField("weights") else ""))
                    print(f"# {title}")
                    response = stub.Recommend(request, timeout=60)
                    first_item = first_item or (response.items[0].item_id if response.items else "")
                    _demo_table(_response_rows(response), titles)
                if first_item:
                    print(f"\n$ recsys recommend --item {first_item} -k {k}\n# items similar to {first_item} "
                          "(FAISS inner product of item embeddings)")
                    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=first_item, num_results=k), timeout=30)
                    _demo_table([{"rank": n, "item_id": i.item_id, "score": i.score, "engagement": "-",
                                  "quality": "-", "source": "INDEX", "model_version": similar.model_version}
                                 for n, i in enumerate(similar.items, 1)], titles)
                if redis_url:
                    _demo_events(stub, users[0], k, titles, target)
            m = server.metrics
            print(f"\nmetrics: cache hit ratio {m.value('recsys_cache_hit_ratio'):.2f}, online computations "
                  f"{m.value('recsys_online_computations_total'):.0f}, fallbacks "
                  f"{m.value('recsys_fallbacks_total'):.0f}, Redis faults {m.value('recsys_redis_faults_total'):.0f}")
        finally:
            if server is not None:
                server.stop(grace=1)
            if local_redis is not None:
                local_redis.stop()
            print("stopped the server" + (" and redis-server" if local_redis is not None else ""))
    return 0
