"""Worker logs are JSON lines: one object a line, with the fields passed as ``extra``."""
from __future__ import annotations

import io
import logging

import orjson

from foundation.logs import JsonFormatter, logging_config


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
