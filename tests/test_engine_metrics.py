"""What the engine counts from its decision cores into the worker's metrics."""
from __future__ import annotations

from types import SimpleNamespace

from agents.engine import Engine
from foundation.metrics import new_metrics
from foundation.settings import Settings
from tests.rulebook import MINUTE, at, msg, run


def _engine() -> Engine:
    # _count needs only the metrics; Kafka and Redis are not touched before the loop starts.
    return Engine(SimpleNamespace(settings=Settings(), metrics=new_metrics()))


def _duplicates(engine: Engine, app: str) -> float | None:
    return engine.wiring.metrics.registry.get_sample_value("relance_duplicates_total", {"app": app})


def test_duplicates_reach_the_metric_with_their_app_once():
    start = at("11-28 09:00")
    first, second = msg("u1", "b", start, app="facebook"), msg("u1", "b", start + MINUTE, app="instagram")
    engine, core = _engine(), run().feed(first, second, first, second, second).core
    engine._count(core)
    engine._count(core)  # counted once: the core's tally is cleared
    assert (_duplicates(engine, "facebook"), _duplicates(engine, "instagram")) == (1.0, 2.0)
    assert _duplicates(engine, "all") is None
