"""Every Prometheus metric of a Relance worker, declared once.

A worker calls :func:`new_metrics` once and passes the returned :class:`Metrics` to its
agents; its own HTTP interface serves :func:`render` at ``/metrics``. Each call makes a
fresh :class:`~prometheus_client.CollectorRegistry`, never the process-global one, so a
test (or a process running several workers) can hold several independent sets.

Naming follows the Prometheus conventions: ``relance_`` prefix, base units (seconds,
messages), ``_total`` on counters, ``_seconds`` on durations. The dashboards in
``deploy/grafana`` and the alert rules in ``deploy/prometheus`` use these names, and
``tests/test_deploy.py`` fails if they name a metric that is not declared here.

Label values must come from small, bounded sets, because every distinct value is a new
time series kept by Prometheus forever after:

- ``app``: ``whatsapp``, ``facebook``, ``instagram`` (``schemas.records.APPS``).
- ``stage``: the worker stage that gave up on the record (``ingest``, ``engine``,
  ``generator``...).
- ``reason`` (dead letters, cancellations, refusals, decisions), ``outcome``, ``kind``:
  short snake_case words such as ``not_json``, ``invalid_field``, ``unknown_bot``.
  Never an exception message, an id or user text: the human-readable detail belongs in
  the dead-letter record, not in the label. Pass such values through :func:`label`,
  which turns anything that is not a short snake_case word into ``other``.
- ``topic``/``partition`` (consumer lag): bounded by the topic catalog and its partitions.
- ``language``: ISO 639-1 codes of the distress detector's word lists.
- ``provider``: the LLM backend, ``openai`` (any OpenAI-compatible API) or ``offline``.
- gateway ``app``: one of :data:`APPS`, or ``other`` for a path that is no app's
  endpoint; gateway ``status``: the HTTP status code answered (``200``, ``401``...);
  signature failure ``reason``: ``missing`` or ``mismatch``.
- ``result`` (sends): ``sent``, ``unknown``, ``failed``, ``window_closed``,
  ``slow_down``, ``retry``, ``not_reached``, ``token_refused`` (:data:`SEND_RESULTS`).
- ``code`` (send errors): the platform error codes the sender tells apart (131047,
  130429, 190...), ``http_429``, ``http_5xx``, ``http_4xx`` or ``other``
  (``domain.sendapi.code_label``).
- ``result`` (send attempt lookups): ``found`` or ``none``.
- ``bot`` (token state only): the bot ids of the registry, a list the operator keeps.

No other label carries a ``bot_id``, and none a ``user_id`` or follow-up id: those are unbounded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = [
    "CONTENT_TYPE",
    "DEAD_LETTER_REASONS",
    "LLM_SECONDS_BUCKETS",
    "GATEWAY_SECONDS_BUCKETS",
    "SEND_RESULTS",
    "SEND_SECONDS_BUCKETS",
    "TIMER_LAG_SECONDS_BUCKETS",
    "Metrics",
    "label",
    "new_metrics",
    "render",
]

SEND_RESULTS = ("sent", "unknown", "failed", "window_closed", "slow_down", "retry", "not_reached", "token_refused")

# The dead-letter reasons the stages are expected to use. Not enforced (a stage may add a
# new word), but a new reason should be added here so the dashboards' legend stays readable.
DEAD_LETTER_REASONS = (
    "not_json",          # bytes that are not a JSON document
    "not_object",        # JSON, but not an object
    "missing_field",     # a required field is absent
    "invalid_field",     # a field has the wrong type, length or value
    "unknown_app",       # app is not one of the three apps
    "unknown_bot",       # a webhook for a page/number/account no bot in the registry owns
    "future_ts",         # wall mode: ts more than 5 minutes ahead of the clock
    "too_large",         # a record over the size limits
    "invalid_header",    # a header a stage reads (the feeder's clock) is unreadable
    "generation_failed", # generation tries exhausted (followups.retry gave up)
    "text_refused",      # every generated text was refused by the honesty checks
    "other",             # anything :func:`label` could not keep
)

# LLM calls: tens of milliseconds (a local model) up to the default 20 s timeout and beyond.
LLM_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 20.0, 30.0, 60.0)
# Gateway requests: a millisecond or two when Kafka acknowledges at once; the 5 s default
# acknowledgement timeout (a 503) and the 10 s default body read timeout are bounds.
GATEWAY_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Send-API calls and rate-limiter waits: milliseconds normally, up to the 10 s send timeout.
SEND_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A checkpoint's transaction must end within the transaction timeout (15 s) or be fenced.
CHECKPOINT_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0)
# Timer lag: normally well under a second; 5 s is the alert threshold, so it is a bound.
TIMER_LAG_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# The classic text format 0.0.4, which every Prometheus 2.x and 3.x scrapes. Recent
# prometheus-client versions label the same bytes "version=1.0.0" (CONTENT_TYPE_LATEST),
# a format Prometheus 2.x predates; every name here is a plain ASCII name, so the body is
# valid 0.0.4 text whichever prometheus-client the worker runs.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL_WORD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def label(value: object, fallback: str = "other") -> str:
    """``value`` if it is a short snake_case word, else ``fallback``.

    Guards the bounded label sets: an exception message or an id passed by mistake as a
    reason becomes ``other`` instead of a new time series per distinct string.
    """
    text = str(value) if value is not None else ""
    return text if _LABEL_WORD.match(text) else fallback


@dataclass(frozen=True, slots=True)
class Metrics:
    """All the metrics of one worker, and the registry they are registered in.

    Each worker role uses its own subset; the others stay at zero (unlabelled metrics) or
    have no series (labelled ones), which is what the dashboards expect.
    """

    registry: CollectorRegistry
    # -- ingest ---------------------------------------------------------------------
    webhooks_in: Counter           # labels: app
    receipts_dropped: Counter      # labels: app
    # -- engine ---------------------------------------------------------------------
    events_in: Counter             # labels: app
    duplicates: Counter            # labels: app
    pairs_tracked: Gauge
    decisions: Counter             # labels: outcome, reason
    followups_requested: Counter   # labels: app  (follow-up requests emitted by the rules)
    distress_detected: Counter     # labels: language
    timer_lag: Histogram           # seconds
    # -- generator and delivery -----------------------------------------------------
    followups_cancelled: Counter   # labels: app, reason
    followups_generated: Counter   # labels: app
    followups_dead_lettered: Counter  # labels: reason
    text_refused: Counter          # labels: reason
    llm_request: Histogram         # labels: provider; seconds
    llm_errors: Counter            # labels: kind
    llm_circuit_open: Gauge
    # -- gateway (webhooks in) -----------------------------------------------------------
    gateway_requests: Counter      # labels: app, status
    gateway_signature_failures: Counter  # labels: app, reason
    gateway_request: Histogram     # labels: app; seconds
    gateway_forwarded_bytes: Counter  # labels: app
    gateway_in_flight: Gauge
    # -- sender and receipts --------------------------------------------------------
    sends: Counter                 # labels: app, result
    send_errors: Counter           # labels: app, code
    send_seconds: Histogram        # labels: app; seconds
    send_limiter_wait: Histogram   # labels: app; seconds
    send_token_ok: Gauge           # labels: app, bot
    send_attempt_lookups: Counter  # labels: result
    send_attempt_read: Histogram   # seconds
    receipts: Counter              # labels: app, outcome
    # -- every stage -----------------------------------------------------------------
    records_dropped: Counter       # labels: stage, reason
    dead_letters: Counter          # labels: stage, reason
    consumer_lag: Gauge            # labels: topic, partition; messages
    last_commit: Gauge             # unix seconds
    checkpoint_seconds: Histogram  # labels: stage
    state_written_bytes: Counter   # engine.state bytes


def new_metrics() -> Metrics:
    """A fresh set of metrics in a registry of its own."""
    registry = CollectorRegistry(auto_describe=True)

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    return Metrics(
        registry=registry,
        webhooks_in=counter(
            "relance_webhooks_in_total",
            "Native webhook documents read from the raw.<app> topics.", ("app",)),
        receipts_dropped=counter(
            "relance_receipts_dropped_total",
            "Webhook entries that are not messages and belong to no follow-up (statuses, "
            "delivery and read receipts of the bot's other messages, notices), counted and "
            "dropped.", ("app",)),
        events_in=counter(
            "relance_events_in_total",
            "Canonical message events read from the messages topic.", ("app",)),
        duplicates=counter(
            "relance_duplicates_total",
            "Message events dropped because their (app, event_id) was already seen.", ("app",)),
        pairs_tracked=gauge(
            "relance_pairs_tracked",
            "(user_id, bot_id) pairs this worker holds state for."),
        decisions=counter(
            "relance_decisions_total",
            "Decisions made at a pair's due time: outcome emitted, suppressed or deferred; "
            "reason the rule that stopped it (none when emitted).", ("outcome", "reason")),
        followups_requested=counter(
            "relance_followups_requested_total",
            "Follow-up requests emitted to followups.requested.", ("app",)),
        distress_detected=counter(
            "relance_distress_detected_total",
            "Inbound messages that showed signs of distress, by word-list language.",
            ("language",)),
        timer_lag=Histogram(
            "relance_timer_lag_seconds",
            "How late a due decision ran, after its due time, in seconds.",
            registry=registry, buckets=TIMER_LAG_SECONDS_BUCKETS),
        followups_cancelled=counter(
            "relance_followups_cancelled_total",
            "Follow-up requests cancelled between the decision and the hand-over, by reason "
            "(user_returned, killed, erased, window_closed...).",
            ("app", "reason")),
        followups_generated=counter(
            "relance_followups_generated_total",
            "Follow-ups written and handed to their delivery.<app> topic.", ("app",)),
        followups_dead_lettered=counter(
            "relance_followups_dead_lettered_total",
            "Follow-ups given up on and sent to the dead-letter topic.", ("reason",)),
        text_refused=counter(
            "relance_text_refused_total",
            "Generated texts refused by the honesty checks (pressure, claims to be human, "
            "missing AI disclosure...).", ("reason",)),
        llm_request=Histogram(
            "relance_llm_request_seconds",
            "Duration of each LLM call, failed ones included, in seconds.",
            ("provider",), registry=registry, buckets=LLM_SECONDS_BUCKETS),
        llm_errors=counter(
            "relance_llm_errors_total",
            "Failed LLM calls, by kind (timeout, connection, http_5xx, http_4xx, rate_limited, "
            "bad_response, circuit_open).", ("kind",)),
        llm_circuit_open=gauge(
            "relance_llm_circuit_open",
            "1 while the LLM circuit breaker is open (calls are not attempted), else 0."),
        sends=counter(
            "relance_sends_total",
            "Send-API attempts by result: sent, unknown (the platform may have it; never "
            "repeated), failed, window_closed, and the refusals tried again (slow_down, "
            "retry, not_reached, token_refused).", ("app", "result")),
        send_errors=counter(
            "relance_send_errors_total",
            "Send-API errors by the platform's error code (a bounded set; others are other).",
            ("app", "code")),
        send_seconds=Histogram(
            "relance_send_seconds",
            "Duration of each send-API call, failed ones included, in seconds.",
            ("app",), registry=registry, buckets=SEND_SECONDS_BUCKETS),
        send_limiter_wait=Histogram(
            "relance_send_limiter_wait_seconds",
            "How long a send waited for its number's, page's or account's rate, in seconds.",
            ("app",), registry=registry, buckets=SEND_SECONDS_BUCKETS),
        send_token_ok=gauge(
            "relance_send_token_ok",
            "1 while the bot's token on that app works (or was not tried yet), 0 once the "
            "platform refused it (190) or it cannot be read: its follow-ups wait.",
            ("app", "bot")),
        send_attempt_lookups=counter(
            "relance_send_attempt_lookups_total",
            "Follow-ups whose ledger field Redis lost, looked up on followups.attempts: found "
            "(a call went out: ended unknown, never sent again) or none.", ("result",)),
        send_attempt_read=Histogram(
            "relance_send_attempt_read_seconds",
            "Reads of one followups.attempts partition, from its beginning to its end, for "
            "those lookups (shared by the lookups of the next 10 s), in seconds.",
            registry=registry, buckets=SEND_SECONDS_BUCKETS),
        receipts=counter(
            "relance_receipts_total",
            "Receipts and echoes that added a step to a follow-up's story, by outcome "
            "(sent: an unknown send settled; delivered, read, failed).", ("app", "outcome")),
        records_dropped=counter(
            "relance_records_dropped_total",
            "Records a stage dropped without a dead letter, by bounded reason (empty_value: "
            "an empty or null value, which carries nothing to keep).", ("stage", "reason")),
        gateway_requests=counter(
            "relance_gateway_requests_total",
            "HTTP requests the gateway answered, by app endpoint (other: no endpoint) and "
            "status code.", ("app", "status")),
        gateway_signature_failures=counter(
            "relance_gateway_signature_failures_total",
            "Webhook posts refused with 401: X-Hub-Signature-256 missing, or not the body's "
            "signature under any app secret.", ("app", "reason")),
        gateway_request=Histogram(
            "relance_gateway_request_seconds",
            "Time from a request's headers to its answer, Kafka's acknowledgement included, "
            "in seconds.", ("app",), registry=registry, buckets=GATEWAY_SECONDS_BUCKETS),
        gateway_forwarded_bytes=counter(
            "relance_gateway_forwarded_bytes_total",
            "Bytes of signed webhook bodies written to raw.<app> and acknowledged.", ("app",)),
        gateway_in_flight=gauge(
            "relance_gateway_requests_in_flight",
            "Requests the gateway is handling right now (reading, checking, waiting for Kafka)."),
        dead_letters=counter(
            "relance_dead_letters_total",
            "Records sent to the dead-letter topic, by stage and bounded reason.",
            ("stage", "reason")),
        consumer_lag=gauge(
            "relance_consumer_lag",
            "Messages between the consumer's position and the partition's end offset.",
            ("topic", "partition")),
        last_commit=gauge(
            "relance_last_commit_timestamp_seconds",
            "Unix time of the worker's last successful offset commit, of any of its stages."),
        checkpoint_seconds=Histogram(
            "relance_checkpoint_seconds",
            "From a checkpoint's capture to its commit (outputs, state and offsets written: one "
            "transaction for the engine), in seconds.",
            ("stage",), registry=registry, buckets=CHECKPOINT_SECONDS_BUCKETS),
        state_written_bytes=counter(
            "relance_state_written_bytes_total",
            "Bytes of decision-core state written to engine.state (each changed user whole, "
            "once per checkpoint)."),
    )


def render(metrics: Metrics) -> tuple[bytes, str]:
    """The text exposition of ``metrics``: (body, Content-Type) for a ``/metrics`` reply."""
    return generate_latest(metrics.registry), CONTENT_TYPE
