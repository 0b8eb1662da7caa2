"""Serving fixtures on top of tests/conftest.py (redis_server, redis_url, own_redis, tiny_version, pipeline)."""
from __future__ import annotations

import pathlib

import grpc
import numpy as np
import pytest

from core.config import parse_config
from feedback import EventLogConfig
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import CacheConfig, RecommendServer, ServerConfig
from tests.conftest import TINY_SYNTHETIC
from workflows.data import DataConfig, load_split


@pytest.fixture(scope="session")
def trained_version(tiny_version) -> pathlib.Path:
    """The shared tiny version (tests/conftest.py `tiny_version`)."""
    return tiny_version


@pytest.fixture(scope="session")
def known_users(pipeline) -> list[str]:
    """Train users with at least 3 seen items, in a fixed order."""
    users = [u for u in pipeline.features.vocabularies["user_id"].tokens
             if len(pipeline.features.seen_items([u])[0]) >= 3]
    assert len(users) >= 20
    return users


@pytest.fixture
def start(pipeline):
    """start(redis_url="", model=pipeline, cache={...}, events={...}, **ServerConfig overrides) -> (server, stub):
    a real gRPC server on a free loopback port (4 handler threads unless overridden); all stopped afterwards."""
    started = []

    def _start(redis_url: str = "", model=None, cache: dict | None = None, events: dict | None = None, **overrides):
        config = ServerConfig(**{"host": "127.0.0.1", "port": 0, "workers": 4, "metrics_port": 0, **overrides})
        server = RecommendServer(config, CacheConfig(redis_url=redis_url, **(cache or {})),
                                 events=EventLogConfig(**(events or {}))).start()
        server.set_model(model if model is not None else pipeline)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return server, pb_grpc.RecommenderStub(channel)

    yield _start
    for server, channel in started:
        channel.close()
        server.stop(grace=0)


@pytest.fixture(scope="session")
def populations(pipeline):
    """(unshifted, shifted) request users: validation-carve rows (as the reference draws them, another seed),
    and the same count drawn from the users of one segment only."""
    _, split = load_split(parse_config(DataConfig, ["--source", "synthetic", *TINY_SYNTHETIC]))
    rng = np.random.default_rng(7)
    users = split.validation["user_id"].astype(str).to_numpy()
    unshifted = [u for u in users[rng.integers(0, len(users), 400)] if pipeline.is_known_user(u)]
    segments = pipeline.features.user_features(unshifted)["segment"]
    top = max(set(segments), key=list(segments).count)
    shifted_pool = sorted({u for u, s in zip(unshifted, segments) if s == top})
    shifted = list(rng.choice(shifted_pool, len(unshifted)))
    return unshifted, shifted
