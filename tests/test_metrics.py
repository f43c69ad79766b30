"""foundation.metrics: the names, types and labels the dashboards and alerts depend on.

The table below is the contract with deploy/prometheus and deploy/grafana: renaming a
metric or changing its labels breaks a panel or silences an alert without any error,
so such a change must be made here on purpose, not by accident.
"""
from __future__ import annotations

import dataclasses

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation import metrics
from foundation.metrics import (
    CHECKPOINT_SECONDS_BUCKETS,
    GATEWAY_SECONDS_BUCKETS,
    LLM_SECONDS_BUCKETS,
    SEND_SECONDS_BUCKETS,
    TIMER_LAG_SECONDS_BUCKETS,
    Metrics,
    label,
    new_metrics,
    render,
)
from domain.normalize import normalize_webhook
from domain.rules import DecisionCore
from foundation.settings import Settings
from schemas.records import InvalidRecord, loads, parse_record
from schemas.registry import BotRegistry
from streams.wiring import TRANSACTION_TIMEOUT_MS

# exposed name -> (type, label names)
EXPECTED = {
    "relance_events_in_total": ("counter", ("app",)),
    "relance_webhooks_in_total": ("counter", ("app",)),
    "relance_receipts_dropped_total": ("counter", ("app",)),
    "relance_dead_letters_total": ("counter", ("stage", "reason")),
    "relance_records_dropped_total": ("counter", ("stage", "reason")),
    "relance_duplicates_total": ("counter", ("app",)),
    "relance_pairs_tracked": ("gauge", ()),
    "relance_decisions_total": ("counter", ("outcome", "reason")),
    "relance_followups_requested_total": ("counter", ("app",)),
    "relance_followups_cancelled_total": ("counter", ("app", "reason")),
    "relance_followups_generated_total": ("counter", ("app",)),
    "relance_followups_dead_lettered_total": ("counter", ("reason",)),
    "relance_text_refused_total": ("counter", ("reason",)),
    "relance_llm_request_seconds": ("histogram", ("provider",)),
    "relance_llm_errors_total": ("counter", ("kind",)),
    "relance_llm_circuit_open": ("gauge", ()),
    "relance_consumer_lag": ("gauge", ("topic", "partition")),
    "relance_timer_lag_seconds": ("histogram", ()),
    "relance_distress_detected_total": ("counter", ("language",)),
    "relance_last_commit_timestamp_seconds": ("gauge", ()),
    "relance_checkpoint_seconds": ("histogram", ("stage",)),
    "relance_state_written_bytes_total": ("counter", ()),
    "relance_gateway_requests_total": ("counter", ("app", "status")),
    "relance_gateway_signature_failures_total": ("counter", ("app", "reason")),
    "relance_gateway_request_seconds": ("histogram", ("app",)),
    "relance_gateway_forwarded_bytes_total": ("counter", ("app",)),
    "relance_gateway_requests_in_flight": ("gauge", ()),
    "relance_sends_total": ("counter", ("app", "result")),
    "relance_send_errors_total": ("counter", ("app", "code")),
    "relance_send_seconds": ("histogram", ("app",)),
    "relance_send_limiter_wait_seconds": ("histogram", ("app",)),
    # bot: the registry's bot ids, a list the operator keeps (not user data)
    "relance_send_token_ok": ("gauge", ("app", "bot")),
    "relance_send_attempt_lookups_total": ("counter", ("result",)),
    "relance_send_attempt_read_seconds": ("histogram", ()),
    "relance_receipts_total": ("counter", ("app", "outcome")),
}


def _collectors(metrics: Metrics) -> dict[str, object]:
    """Exposed name -> collector, for every metric field of ``metrics``."""
    found = {}
    for field in dataclasses.fields(Metrics):
        if field.name == "registry":
            continue
        collector = getattr(metrics, field.name)
        name = collector._name + ("_total" if collector._type == "counter" else "")
        found[name] = collector
    return found


def _touch_all(metrics: Metrics) -> None:
    """Give every metric one sample, so labelled metrics appear in the exposition."""
    for collector in _collectors(metrics).values():
        child = collector.labels(*["x"] * len(collector._labelnames)) if collector._labelnames else collector
        if collector._type == "histogram":
            child.observe(0.3)
        elif collector._type == "gauge":
            child.set(2)
        else:
            child.inc()


def _families(metrics: Metrics) -> dict[str, object]:
    body, _ = render(metrics)
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def test_declares_exactly_the_documented_metrics_with_their_labels():
    found = {
        name: (collector._type, tuple(collector._labelnames))
        for name, collector in _collectors(new_metrics()).items()
    }
    assert found == EXPECTED


def test_render_exposes_every_metric_with_its_type():
    metrics = new_metrics()
    _touch_all(metrics)
    families = _families(metrics)
    for name, (kind, labels) in EXPECTED.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        assert family_name in families, f"{name} is missing from /metrics"
        family = families[family_name]
        assert family.type == kind, f"{name} is exposed as a {family.type}"
        # the series Prometheus stores, under the names the rules and panels query
        sample_names = {s.name for s in family.samples}
        if kind == "histogram":
            assert {name + "_bucket", name + "_count", name + "_sum"} <= sample_names
        else:
            assert name in sample_names
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                assert set(sample.labels) == set(labels) | {"le"}
            else:
                assert set(sample.labels) == set(labels), sample


def test_render_body_and_content_type_are_a_scrapeable_text_exposition():
    metrics = new_metrics()
    metrics.dead_letters.labels(stage="ingest", reason="not_json").inc(3)
    metrics.pairs_tracked.set(42)
    body, content_type = render(metrics)
    # Prometheus picks its parser from the Content-Type: 0.0.4 is the one every version reads.
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert 'relance_dead_letters_total{reason="not_json",stage="ingest"} 3.0' in text
    assert "relance_pairs_tracked 42.0" in text
    assert "# TYPE relance_timer_lag_seconds histogram" in text


def test_each_worker_has_its_own_registry():
    # Tests and multi-worker processes create several; a shared (global) registry would
    # mix their counts, or raise "Duplicated timeseries" on the second new_metrics().
    first, second = new_metrics(), new_metrics()
    first.events_in.labels(app="whatsapp").inc(5)
    second.events_in.labels(app="whatsapp").inc(1)
    assert 'relance_events_in_total{app="whatsapp"} 5.0' in render(first)[0].decode()
    assert 'relance_events_in_total{app="whatsapp"} 1.0' in render(second)[0].decode()
    assert first.registry is not second.registry


def test_names_follow_prometheus_conventions():
    for name, (kind, labels) in EXPECTED.items():
        assert name.startswith("relance_")
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        # unbounded identifiers must never be labels: one series per user would sink Prometheus
        assert not {"user_id", "bot_id", "followup_id", "event_id"} & set(labels), name


def test_histogram_buckets_bound_the_thresholds_that_matter():
    # histogram_quantile interpolates inside a bucket: the alert "timer lag p99 > 5s" is
    # only exact if 5 s is a bucket boundary.
    assert 5.0 in TIMER_LAG_SECONDS_BUCKETS
    # A call that times out takes the LLM timeout; it must not vanish into one wide bucket.
    assert Settings().llm_timeout / 1000 in LLM_SECONDS_BUCKETS
    # A post answered 503 took the acknowledgement timeout; a slow body, the read timeout.
    assert Settings().gateway_ack_timeout / 1000 in GATEWAY_SECONDS_BUCKETS
    assert Settings().gateway_read_timeout / 1000 in GATEWAY_SECONDS_BUCKETS
    assert list(GATEWAY_SECONDS_BUCKETS) == sorted(GATEWAY_SECONDS_BUCKETS)
    assert Settings().send_timeout / 1000 in SEND_SECONDS_BUCKETS
    assert list(SEND_SECONDS_BUCKETS) == sorted(SEND_SECONDS_BUCKETS)
    assert list(TIMER_LAG_SECONDS_BUCKETS) == sorted(TIMER_LAG_SECONDS_BUCKETS)
    assert list(LLM_SECONDS_BUCKETS) == sorted(LLM_SECONDS_BUCKETS)
    # A checkpoint's transaction is fenced at the timeout; the alert warns at half of it.
    assert TRANSACTION_TIMEOUT_MS / 1000 in CHECKPOINT_SECONDS_BUCKETS
    assert TRANSACTION_TIMEOUT_MS / 2000 in CHECKPOINT_SECONDS_BUCKETS
    assert list(CHECKPOINT_SECONDS_BUCKETS) == sorted(CHECKPOINT_SECONDS_BUCKETS)


def test_observations_land_in_the_right_buckets():
    metrics = new_metrics()
    metrics.timer_lag.observe(4.0)
    metrics.timer_lag.observe(7.0)
    families = _families(metrics)
    buckets = {
        s.labels["le"]: s.value
        for s in families["relance_timer_lag_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["5.0"] == 1.0    # 4 s is under the alert threshold, 7 s is not
    assert buckets["10.0"] == 2.0
    assert buckets["+Inf"] == 2.0


def test_label_keeps_short_words_and_bounds_everything_else():
    assert label("not_json") == "not_json"
    assert label("http_5xx") == "http_5xx"
    # an exception message, an id, a mixed-case or over-long value: each would be a new series
    assert label("Expecting value: line 1 column 1 (char 0)") == "other"
    assert label("u-42") == "other"
    assert label("NotJson") == "other"
    assert label("a" * 41) == "other"
    assert label("") == "other"
    assert label(None) == "other"
    assert label("??", fallback="unknown") == "unknown"


def _error_of(parse) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as caught:
        parse()
    return caught.value


def _unknown_number_error() -> InvalidRecord:
    webhook = {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "metadata": {"phone_number_id": "1"}, "messages": [{"id": "w", "from": "u", "timestamp": "1", "type": "text"}]}}]}]}
    return normalize_webhook("whatsapp", orjson.dumps(webhook), BotRegistry([])).errors[0]


def _future_error() -> InvalidRecord:
    core = DecisionCore(Settings(clock="wall"))
    event = parse_record({"event_id": "e", "app": "whatsapp", "user_id": "u", "bot_id": "b",
                          "direction": "inbound", "ts": 1_000_000 + 400_000, "text": ""})
    return _error_of(lambda: core.feed(event, now=1_000_000))


@pytest.mark.parametrize("error, kind", [
    (lambda: _error_of(lambda: loads(b"{oops")), "not_json"),
    (lambda: _error_of(lambda: parse_record({"event_id": "e", "app": "whatsapp"})), "missing_field"),
    (lambda: _error_of(lambda: parse_record([1])), "not_object"),
    (_future_error, "future_ts"),
    (_unknown_number_error, "unknown_bot"),
    (lambda: _error_of(lambda: parse_record({"type": "profile", "user_id": "u", "tz": "Mars/Olympus"})), "invalid_field"),
])
def test_every_invalid_record_carries_a_bounded_dead_letter_kind(error, kind):
    assert error().kind == kind
    assert kind in metrics.DEAD_LETTER_REASONS
