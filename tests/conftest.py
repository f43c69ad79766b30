"""Shared fixtures: one real Kafka broker and one real Redis per test session.

Tests that use ``stack`` (directly or through ``topic_prefix``/``redis_db``) are marked
``@pytest.mark.kafka``. Each test gets its own topic prefix and a flushed Redis db, so
tests do not see each other's data although they share the servers.
"""
from __future__ import annotations

import signal
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devstack.localstack import LocalStack, free_port, redis_db_url
from streams.admin import create_topics
from streams.topics import CATALOG

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from waiting import wait_for`


def _interrupted(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


# SIGTERM to pytest (a CI runner cancelling, a supervisor) ends it as Ctrl-C does, so the
# fixtures' teardown stops every server and worker; and each of those was started to
# die with the process that started it (devstack.localstack.die_with_parent) if even that fails.
signal.signal(signal.SIGTERM, _interrupted)

@pytest.fixture(params=["python", "native"])
def each_core(request, monkeypatch) -> str:
    """The test once with the Python decision core, once with the compiled one (rulebook.Run)."""
    from tests import rulebook
    monkeypatch.setattr(rulebook, "core_kind", request.param)
    return request.param


TEST_PARTITIONS = 4
TEST_REDIS_DB = 1  # db 0 stays the stack's default; each test starts from an empty db 1


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """Kafka and Redis on free ports (a demo may hold the default ones), once per session."""
    local = LocalStack(
        tmp_path_factory.mktemp("stack"),
        kafka_port=free_port(), redis_port=free_port(), controller_port=free_port(),
    )
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory):
    """The same Kafka with a SASL_SSL listener (SCRAM) and Redis with TLS and an ACL user,
    their CA and passwords made for the session; once per session, for the few tests of it."""
    local = LocalStack(
        tmp_path_factory.mktemp("secure-stack"),
        kafka_port=free_port(), redis_port=free_port(), controller_port=free_port(), secure=True,
    )
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def topic_prefix(stack: LocalStack) -> str:
    """A fresh prefix ``t-<hex>-`` with every catalog topic created under it (4 partitions)."""
    prefix = f"t-{uuid.uuid4().hex[:10]}-"
    create_topics(stack.bootstrap, CATALOG, prefix, TEST_PARTITIONS)
    return prefix


@pytest.fixture
def redis_db(stack: LocalStack) -> str:
    """URL of a Redis db emptied before the test."""
    return redis_db_url(stack.redis_url, TEST_REDIS_DB, flush=True)


@pytest.fixture
def redis_client(redis_db: str):
    """An asyncio client of that db, made here but connected lazily, in the test's own event loop."""
    return aioredis.Redis.from_url(redis_db)
