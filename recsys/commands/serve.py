"""`recsys serve` (the gRPC server) and `recsys recommend` (a command-line client for it)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from core.config import add_config_args, config_from_args, config_to_dict
from core.errors import RecsysError
from core.registry import default_root, resolve_version

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from serving import CacheConfig, HotSwapConfig, RequestLimits, SecurityConfig, ServerConfig

    p = sub.add_parser("serve", help="serve Recommend/SimilarItems over gRPC",
                       description="Starts the gRPC Recommender server for a trained version: health "
                                   "(grpc.health.v1), reflection, Prometheus metrics, Redis or in-process "
                                   "candidate cache. SIGTERM stops it gracefully; SIGHUP reloads the version "
                                   "the registry points at.")
    p.add_argument("--artifacts", default=str(default_root()), help="artifacts root (default: %(default)s)")
    p.add_argument("--version", default="current",
                   help="version name under --artifacts, 'current' (the registry pointer) or a directory")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check the version's checksums before serving it")
    p.add_argument("--log-format", choices=["text", "json"], default="json",
                   help="json: one structured object per line (default); text: human-readable")
    add_config_args(p.add_argument_group("server"), ServerConfig, help_text={
        "workers": "handler threads", "max_concurrent_rpcs": "RPCs in flight before RESOURCE_EXHAUSTED",
        "metrics_port": "Prometheus /metrics port (0 = off)", "grace_s": "seconds in-flight RPCs get on SIGTERM",
        "engagement_weight": "default blend weight (< 0: the version's)",
        "quality_weight": "default blend weight (< 0: the version's)",
        "min_deadline_s": "refuse online computations with less time left than this",
        "processes": "server processes sharing --port (SO_REUSEPORT), each with its own model copy; process i "
                     "serves metrics on --metrics-port + i"})
    add_config_args(p.add_argument_group("cache"), CacheConfig, help_text={
        "redis_url": "redis://host:port/db; empty = in-process LRU", "ttl_s": "lifetime of cached entries",
        "socket_timeout_s": "per Redis command", "circuit_open_s": "skip Redis this long after a failure"})
    add_config_args(p.add_argument_group("request limits"), RequestLimits)
    add_config_args(p.add_argument_group("hot swap"), HotSwapConfig, help_text={
        "watch_interval_s": "poll the registry pointer this often and swap to a new version (0 = off; SIGHUP "
                            "always reloads)",
        "warmup_users": "known users computed on a new version before it serves",
        "swap_mode": "in_process: each server loads and switches itself; blue_green: new server processes load "
                     "the version, then take over the port while the old ones drain (no loader in a serving "
                     "process)"})
    add_config_args(p.add_argument_group("security"), SecurityConfig, help_text={
        "tls_cert": "PEM server certificate chain (with --tls-key; empty = plaintext)",
        "tls_key": "PEM server private key", "tls_client_ca": "PEM CA for client certificates (mutual TLS)",
        "auth_tokens_file": "file of accepted bearer tokens, one per line",
        "auth_tokens_env": "environment variable with comma-separated accepted tokens",
        "max_message_bytes": "largest request/response message"})
    p.set_defaults(func=run_serve)

    c = sub.add_parser("recommend", help="call a running server (Recommend or SimilarItems)",
                       description="A command-line client: recommendations for --user, or items similar to --item.")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id to recommend for")
    who.add_argument("--item", help="item id to find similar items for (SimilarItems)")
    c.add_argument("--target", default="localhost:50051", help="server host:port (default: %(default)s)")
    c.add_argument("-k", "--num-results", type=int, default=10, help="items to return (default: %(default)s)")
    c.add_argument("--engagement-weight", type=float, help="blend weight; give both weights or neither")
    c.add_argument("--quality-weight", type=float, help="blend weight; give both weights or neither")
    c.add_argument("--exclude", nargs="*", default=[], metavar="ITEM", help="item ids not to return")
    c.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE", help="request context entries")
    c.add_argument("--explain", action="store_true", help="show retrieval score and stage ranks")
    c.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default: %(default)s)")
    c.add_argument("--json", dest="as_json", action="store_true", help="print the response as JSON")
    c.add_argument("--tls-ca", default="", help="PEM CA of the server certificate (enables TLS)")
    c.add_argument("--tls-cert", default="", help="PEM client certificate, for mutual TLS")
    c.add_argument("--tls-key", default="", help="PEM client private key, for mutual TLS")
    c.add_argument("--tls-server-name", default="", help="name to expect in the server certificate")
    c.add_argument("--token-env", default="RECSYS_TOKEN",
                   help="environment variable holding the bearer token to send (default: %(default)s)")
    c.set_defaults(func=run_recommend)

    d = sub.add_parser("serve-demo", help="start Redis and the server, call Recommend, show the answers",
                       description="The serving tour: starts a local redis-server (in-process cache if none is "
                                   "installed) and the gRPC server on free ports, calls Recommend for a known user "
                                   "(online, then cached, then re-weighted from the same cache entry), an unknown "
                                   "user (popularity fallback) and SimilarItems, then shuts everything down.")
    d.add_argument("--artifacts", default=str(default_root()), help="artifacts root (default: %(default)s)")
    d.add_argument("--version", default="current", help="version to serve (default: %(default)s)")
    d.add_argument("--users", nargs="*", default=[], metavar="USER",
                   help="known users to recommend for (default: the two most active train users)")
    d.add_argument("-k", "--num-results", type=int, default=5)
    d.set_defaults(func=run_serve_demo)


def run_serve(args: argparse.Namespace) -> int:
    from serving import CacheConfig, HotSwapConfig, RequestLimits, SecurityConfig, ServerConfig, serve
    from serving.metrics import JsonFormatter

    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    try:
        config = config_from_args(ServerConfig, args)
        cache_config = config_from_args(CacheConfig, args)
        limits = config_from_args(RequestLimits, args)
        hotswap = config_from_args(HotSwapConfig, args)
        security = config_from_args(SecurityConfig, args)
    except ValueError as e:
        raise RecsysError(str(e)) from e
    version_dir = resolve_version(args.artifacts, args.version)  # fail fast on a bad --version
    log.info("starting", extra={"event": "config", "version_dir": str(version_dir),
                                "server": config_to_dict(config), "cache": config_to_dict(cache_config),
                                "limits": config_to_dict(limits), "hotswap": config_to_dict(hotswap),
                                "security": config_to_dict(security)})
    if config.processes > 1 or hotswap.swap_mode == "blue_green":
        from serving.processes import FleetSpec, serve_processes

        return serve_processes(FleetSpec(str(args.artifacts), str(args.version), args.verify, config, cache_config,
                                         limits, hotswap, security,
                                         logging.getLevelName(logging.getLogger().level), args.log_format))
    def resolve():
        return resolve_version(args.artifacts, args.version)

    return serve(resolve, config, cache_config, limits, verify=args.verify, hotswap=hotswap, security=security)


def run_recommend(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    if (args.engagement_weight is None) != (args.quality_weight is None):
        raise RecsysError("give both --engagement-weight and --quality-weight, or neither")
    context = {}
    for entry in args.context:
        if "=" not in entry:
            raise RecsysError(f"--context {entry!r}: expected KEY=VALUE")
        key, value = entry.split("=", 1)
        context[key] = value
    from serving.security import ClientSecurity, client_channel

    security = ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name,
                              os.environ.get(args.token_env, "") if args.token_env else "")
    with client_channel(args.target, security) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        try:
            if args.item is not None:
                response = stub.SimilarItems(pb.SimilarItemsRequest(item_id=args.item, num_results=args.num_results),
                                             timeout=args.timeout)
            else:
                request = pb.RecommendRequest(user_id=args.user, num_results=args.num_results,
                                              exclude_item_ids=args.exclude, context=context, explain=args.explain)
                if args.engagement_weight is not None:
                    request.weights.engagement = args.engagement_weight
                    request.weights.quality = args.quality_weight
                response = stub.Recommend(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"recsys recommend: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    if args.as_json:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    if args.item is not None:
        print(f"items similar to {args.item} (model {response.model_version}):")
        for rank, item in enumerate(response.items, 1):
            print(f"{rank:>4}  {item.item_id:<20} {item.score:9.4g}")
        return 0
    print_recommendations(args.user, response, args.explain)
    return 0


def print_recommendations(user: str, response, explain: bool = False) -> None:
    """A RecommendResponse as a table."""
    from protos.recsys.v1 import recommender_pb2 as pb

    print(f"user {user}: {len(response.items)} items from {pb.Source.Name(response.source)} "
          f"(model {response.model_version})")
    header = f"{'rank':>4}  {'item_id':<20} {'score':>9} {'engagement':>10} {'quality':>8}"
    if explain:
        header += f" {'retrieval':>9} {'r_rank':>6} {'e_rank':>6} {'q_rank':>6}"
    print(header)
    for rank, item in enumerate(response.items, 1):
        # .4g, not .4f: the retrieval-fused engagement head (ranking/model.py) is often ~1e-5.
        line = f"{rank:>4}  {item.item_id:<20} {item.score:9.4g} {item.engagement:10.4g} {item.quality:8.4f}"
        if explain:
            x = item.explanation
            line += f" {x.retrieval_score:9.4f} {x.retrieval_rank:>6} {x.engagement_rank:>6} {x.quality_rank:>6}"
        print(line)


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
    heads = response.source != pb.FALLBACK  # the fallback's score is a popularity count; no head scores
    return [{"rank": n, "item_id": i.item_id, "score": i.score,
             "engagement": f"{i.engagement:.4g}" if heads else "-", "quality": f"{i.quality:.4f}" if heads else "-",
             "source": source, "model_version": response.model_version} for n, i in enumerate(response.items, 1)]


def run_serve_demo(args: argparse.Namespace) -> int:
    import tempfile

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving import CacheConfig, RecommendServer, ServerConfig

    version_dir = resolve_version(args.artifacts, args.version)
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
                k = args.num_results
                # The vocabulary lists train users most active first.
                users = args.users or list(model.features.vocabularies["user_id"].tokens[:2])
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
                calls.append(("an unknown user: popularity fallback (score = train engagement count)",
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
