"""Worker logs are JSON lines: one object a line, with the fields passed as ``extra``."""
from __future__ import annotations

import io
import logging

import orjson

from foundation.logs import JsonFormatter, RepeatLimit, logging_config


def _logged(emit) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("relance.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_extra_fields():
    [line] = _logged(lambda log: log.info("follow-up %s", "requested",
                                          extra={"followup_id": "abc", "app": "whatsapp", "partition": 3}))
    assert line["level"] == "info" and line["logger"] == "relance.test-logs"
    assert line["message"] == "follow-up requested"
    assert (line["followup_id"], line["app"], line["partition"]) == ("abc", "whatsapp", 3)
    assert line["ts"].endswith("Z") and len(line["ts"]) == 24


def test_a_traceback_stays_inside_its_line():
    def emit(log):
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed", extra={"topic": object()})

    [line] = _logged(emit)
    assert "ValueError: boom" in line["exc"] and line["level"] == "error"
    assert line["topic"].startswith("<object")  # not JSON-able: written as text, not lost


def test_the_config_gives_json_to_every_logger():
    config = logging_config("warning", stream="ext://sys.stdout")
    assert config["root"] == {"level": "WARNING", "handlers": ["json"]}
    assert config["disable_existing_loggers"] is False
    assert config["formatters"]["json"]["()"] is JsonFormatter


def _record(created: float, message: str = "Unable connect to node with id %s", level: int = logging.ERROR):
    record = logging.LogRecord("aiokafka", level, __file__, 1, message, (1,), None)
    record.created = created
    return record


def test_an_outage_is_logged_when_it_starts_and_then_at_a_bounded_rate():
    # Issue 14: a broker outage made three workers write about 8,000 lines in 20 s.
    limit = RepeatLimit(window=10.0)
    passed = [record for t in range(2000) if limit.filter(record := _record(t * 0.01))]  # 20 s, 100 a second
    assert len(passed) == 2  # the start, and once in the second window
    assert getattr(passed[0], "repeated", 0) == 0 and passed[1].repeated == 999
    other = _record(5.0, "another failure %s")
    assert limit.filter(other)  # another message is not hidden by the first
    assert limit.filter(_record(5.0, level=logging.INFO))  # nor is information


def test_the_worker_logging_config_limits_repeats():
    assert logging_config()["handlers"]["json"]["filters"] == ["repeats"]
