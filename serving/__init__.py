"""Serving stage: the gRPC Recommender (online retrieve → rank → blend), its cache and metrics.

Importing this package does not import TensorFlow; loading a model version does. Names
resolve lazily (PEP 562), so a thin client (`recsys recommend` → serving.security) loads
neither the pipeline, pandas nor Redis.
"""
from __future__ import annotations

from core.lazy import lazy_exports

_LAZY = {
    "CacheConfig": "serving.cache", "CandidateCache": "serving.cache", "LocalCandidateStore": "serving.cache",
    "RedisCandidateStore": "serving.cache", "redis_client": "serving.cache",
    "HotSwapConfig": "serving.hotswap", "RegistryWatcher": "serving.hotswap",
    "check_consistency": "serving.hotswap", "load_checked": "serving.hotswap",
    "JsonFormatter": "serving.metrics", "ServingMetrics": "serving.metrics",
    "ClientSecurity": "serving.security", "SecurityConfig": "serving.security", "client_channel": "serving.security",
    "RecommenderServicer": "serving.server", "RecommendServer": "serving.server", "ServerConfig": "serving.server",
    "serve": "serving.server",
    "RequestLimits": "serving.validation",
}

__all__ = [
    "CacheConfig", "CandidateCache", "LocalCandidateStore", "RedisCandidateStore", "redis_client", "JsonFormatter", "ServingMetrics", "RecommenderServicer",
    "RecommendServer", "ServerConfig", "serve", "RequestLimits",
    "HotSwapConfig", "RegistryWatcher", "check_consistency", "load_checked", "ClientSecurity", "SecurityConfig",
    "client_channel",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
