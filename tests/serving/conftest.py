"""Serving fixtures on top of tests/conftest.py (redis_server, redis_url, own_redis, tiny_version, pipeline)."""
from __future__ import annotations

import pathlib

import pytest


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
