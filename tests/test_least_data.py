"""Least data (issue 19): every topic that carries what people wrote or are sent has a
bounded retention in the catalog, and the README's retention table says the same.

Which topics carry text is read from the records' JSON Schemas (a ``text``, a send-API
``body``, a dead letter's ``original``) and from what the raw topics are (the platforms'
webhooks, messages included), not from the catalog's own flag: the flag must agree.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from foundation.settings import format_duration
from streams.topics import CATALOG, DAY_MS

ROOT = Path(__file__).resolve().parent.parent
TEXT_FIELDS = {"text", "body", "original", "original_b64"}
LONGEST_TEXT_RETENTION = 30 * DAY_MS
# What each topic holds: a record schema, or what the platforms post (webhooks carry messages).
HOLDS = {
    "raw.whatsapp": "webhook", "raw.facebook": "webhook", "raw.instagram": "webhook",
    "messages": "message", "control": "control", "followups.requested": "followup_request",
    "followups.retry": "followup_retry", "followups.outcomes": "followup_outcome", "decisions": "decision",
    "delivery.whatsapp": "delivery", "delivery.facebook": "delivery", "delivery.instagram": "delivery",
    "delivery.retry": "send_retry", "followups.attempts": "send_started", "engine.state": "state", "deadletter": "deadletter",
}


def fields(node) -> set[str]:
    """Every property name anywhere in a JSON Schema."""
    if isinstance(node, dict):
        found = set(node.get("properties", {}))
        return found.union(*(fields(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(fields(value) for value in node))
    return set()


def carries_text(holds: str) -> bool:
    if holds == "webhook":
        return True
    if holds == "state":  # the engine's state: message times and ids, never a text (domain/state.py)
        return False
    schema = json.loads((ROOT / "schemas" / f"{holds}.schema.json").read_text())
    return bool(fields(schema) & TEXT_FIELDS)


def test_the_catalog_knows_which_topics_carry_text():
    assert {spec.name for spec in CATALOG} == set(HOLDS)
    assert {spec.name: spec.carries_text for spec in CATALOG} == {name: carries_text(h) for name, h in HOLDS.items()}


def test_every_topic_that_carries_text_has_a_bounded_retention():
    for spec in CATALOG:
        if spec.carries_text:
            assert not spec.compacted, spec.name  # compaction keeps the latest record of a key forever
            assert spec.retention_ms is not None and 0 < spec.retention_ms <= LONGEST_TEXT_RETENTION, spec.name
            assert spec.config() == {"cleanup.policy": "delete", "retention.ms": str(spec.retention_ms)}


def test_the_readme_retention_table_is_the_catalog():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Least data", 1)[1].split("\n### ", 1)[0]
    rows = {match[0]: match[1] for match in re.findall(r"^\| `([a-z.]+)` \| [^|]+ \| ([^|]+?) \|", section, re.M)}
    for spec in CATALOG:
        if spec.carries_text:
            assert rows.get(spec.name) == format_duration(spec.retention_ms), spec.name
