"""`recsys recommend`: a thin gRPC client of a running server (Recommend or SimilarItems).

Imports only argparse and the config helpers until it runs, and then only gRPC and the
generated stubs: no TensorFlow, FAISS, pandas or serving stack, so it answers in well
under a second.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Literal

from core.errors import RecsysError
from recsys.commands import add_command


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    """Who to ask about and how to reach the server. Give exactly one of user and item."""

    user: str = ""                    # user id to recommend for
    item: str = ""                    # item id to find similar items for (SimilarItems)
    target: str = "localhost:50051"   # host:port; several replicas host1:p1,host2:p2 or dns:///name:port
    num_results: int = dataclasses.field(default=10, metadata={"aliases": ("-k",)})
    engagement_weight: float = -1.0   # blend weight (< 0 = the server's default); give both weights or neither
    quality_weight: float = -1.0      # blend weight (< 0 = the server's default); give both weights or neither
    blend_mode: Literal["default", "additive", "multiplicative"] = "default"  # with both weights; default = the version's
    blend_transform: Literal["default", "identity", "log", "logit"] = "default"  # f of the additive form; default = the version's
    exclude: tuple[str, ...] = ()     # item ids not to return
    context: tuple[tuple[str, str], ...] = ()  # request context entries KEY=VALUE
    explain: bool = False             # show retrieval score and stage ranks
    timeout: float = 5.0              # deadline in seconds
    tls_ca: str = ""                  # PEM CA of the server certificate (enables TLS)
    tls_cert: str = ""                # PEM client certificate, for mutual TLS
    tls_key: str = ""                 # PEM client private key, for mutual TLS
    tls_server_name: str = ""         # name to expect in the server certificate
    token_env: str = "RECSYS_TOKEN"   # environment variable holding the bearer token to send


_HELP = {
    "user": "user id to recommend for", "item": "item id to find similar items for (SimilarItems)",
    "target": "server host:port; several replicas: host1:port1,host2:port2 (client round robin, health-checked, "
              "retried), or a DNS name with one address per replica (dns:///name:port)",
    "num_results": "items to return",
    "engagement_weight": "blend weight (< 0 = the server's default); give both weights or neither",
    "quality_weight": "blend weight (< 0 = the server's default); give both weights or neither",
    "blend_mode": "how the weights combine the heads: additive w_e·e + w_q·q or multiplicative e^w_e·q^w_q "
                  "(default = the served version's mode); needs both weights",
    "blend_transform": "f applied to each head in the additive form w_e·f(e) + w_q·f(q): identity, log or logit "
                       "(default = the served version's transform); needs both weights",
    "exclude": "item ids not to return", "context": "request context entries", "explain":
    "show retrieval score and stage ranks", "timeout": "deadline in seconds",
    "tls_ca": "PEM CA of the server certificate (enables TLS)", "tls_cert": "PEM client certificate, for mutual TLS",
    "tls_key": "PEM client private key, for mutual TLS", "tls_server_name": "name to expect in the server certificate",
    "token_env": "environment variable holding the bearer token to send",
}


def register(sub: argparse._SubParsersAction) -> None:
    c = add_command(sub, "recommend", RecommendConfig, run_recommend, help_text={"": _HELP},
                    description="A command-line client: recommendations for --user, or items similar to --item.")
    c.add_argument("--json", dest="as_json", action="store_true", help="print the response as JSON")


def run_recommend(config: RecommendConfig, args: argparse.Namespace) -> int:
    if bool(config.user) == bool(config.item):
        raise RecsysError("give one of --user (Recommend) or --item (SimilarItems)")
    if (config.engagement_weight < 0) != (config.quality_weight < 0):
        raise RecsysError("give both --engagement-weight and --quality-weight, or neither")
    if config.blend_mode != "default" and config.engagement_weight < 0:
        raise RecsysError("--blend-mode needs --engagement-weight and --quality-weight too")
    if config.blend_transform != "default" and config.engagement_weight < 0:
        raise RecsysError("--blend-transform needs --engagement-weight and --quality-weight too")
    import grpc
    from google.protobuf import json_format

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.security import ClientSecurity, client_channel

    security = ClientSecurity(config.tls_ca, config.tls_cert, config.tls_key, config.tls_server_name,
                              os.environ.get(config.token_env, "") if config.token_env else "")
    with client_channel(config.target, security) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        try:
            if config.item:
                response = stub.SimilarItems(pb.SimilarItemsRequest(item_id=config.item,
                                                                    num_results=config.num_results),
                                             timeout=config.timeout)
            else:
                request = pb.RecommendRequest(user_id=config.user, num_results=config.num_results,
                                              exclude_item_ids=list(config.exclude), context=dict(config.context),
                                              explain=config.explain)
                if config.engagement_weight >= 0:
                    request.weights.engagement = config.engagement_weight
                    request.weights.quality = config.quality_weight
                    request.weights.mode = {"default": pb.BLEND_MODE_UNSPECIFIED, "additive": pb.ADDITIVE,
                                            "multiplicative": pb.MULTIPLICATIVE}[config.blend_mode]
                    request.weights.transform = {"default": pb.BLEND_TRANSFORM_UNSPECIFIED, "identity": pb.IDENTITY,
                                                 "log": pb.LOG, "logit": pb.LOGIT}[config.blend_transform]
                response = stub.Recommend(request, timeout=config.timeout)
        except grpc.RpcError as e:
            print(f"recsys recommend: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    if args.as_json:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    if config.item:
        print(f"items similar to {config.item} (model {response.model_version}):")
        for rank, item in enumerate(response.items, 1):
            print(f"{rank:>4}  {item.item_id:<20} {item.score:9.4g}")
        return 0
    print_recommendations(config.user, response, config.explain)
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
