"""Serving stage: the gRPC Recommender (online retrieve → rank → blend), its cache and metrics.

Importing this package does not import TensorFlow; loading a model version does.
"""
from serving.cache import CacheConfig, CandidateCache, LocalCandidateStore, RedisCandidateStore, redis_client
from serving.hotswap import HotSwapConfig, RegistryWatcher, check_consistency, load_checked
from serving.metrics import JsonFormatter, ServingMetrics
from serving.security import ClientSecurity, SecurityConfig, client_channel
from serving.server import RecommenderServicer, RecommendServer, ServerConfig, serve
from serving.validation import RequestLimits

__all__ = [
    "CacheConfig", "CandidateCache", "LocalCandidateStore", "RedisCandidateStore", "redis_client", "JsonFormatter", "ServingMetrics", "RecommenderServicer",
    "RecommendServer", "ServerConfig", "serve", "RequestLimits",
    "HotSwapConfig", "RegistryWatcher", "check_consistency", "load_checked", "ClientSecurity", "SecurityConfig",
    "client_channel",
]
