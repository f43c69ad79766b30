"""``relance topics create`` (run by compose's topics service and the k8s Job)."""
from __future__ import annotations

import subprocess
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.topics import CATALOG, MESSAGES, topic_name
from devstack.processes import RELANCE

pytestmark = pytest.mark.kafka


async def test_topics_create_makes_the_whole_catalog_and_can_run_again(stack):
    prefix = f"cli-{uuid.uuid4().hex[:8]}-"
    command = [RELANCE, "topics", "create", "--broker", stack.bootstrap, "--topic-prefix", prefix, "--partitions", "3"]
    for _ in range(2):  # idempotent: existing topics are left as they are
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic_name(spec, prefix) for spec in CATALOG])
    finally:
        await admin.close()
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    assert partitions[topic_name(MESSAGES, prefix)] == 3  # keyed by user, so the partition count
    assert set(partitions) == {topic_name(spec, prefix) for spec in CATALOG}
    assert all(t["error_code"] == 0 for t in described)
