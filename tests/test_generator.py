"""The generator's and the context stage's helpers: pure functions, and their Redis scripts
run on the real Redis of the test stack."""
from __future__ import annotations

import random

import orjson
import pytest

from agents.context import ContextWriter, parse_entries, read_context, usable_record
from agents.generator import error_kind, refusal_labels, retry_delay_ms, wait_ms
from domain.lastcheck import PairNow, cancel_reason
from domain.honesty import check_text
from domain.writing import LLMError
from streams.llm import CircuitOpen
from foundation.settings import Settings
from schemas.records import (
    Erase, FollowupAttempt, FollowupOutcome, FollowupRequest, InvalidRecord, MessageEvent, OptOut, Tick, parse_attempt,
)
from streams.rediskeys import context_bots_key, context_key, last_inbound_key

REQUEST = FollowupRequest("f-1", "u-1", "maestro", "whatsapp", due_ts=1_000_000, last_inbound_ts=900_000, inbound_in_window=5)
WINDOW_MS = 14 * 86_400_000


# -- pure helpers -----------------------------------------------------------------------

def test_retry_delay_doubles_with_jitter_and_is_capped():
    rng = random.Random(3)
    for tries, ceiling in ((1, 1000), (2, 2000), (3, 4000)):
        delays = [retry_delay_ms(tries, 1000, rng) for _ in range(200)]
        assert ceiling // 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered, not one value
    assert retry_delay_ms(30, 1000, rng) <= 60_000


def test_wait_is_bounded_and_never_negative():
    assert wait_ms(None, 5) == 0
    assert wait_ms(1000, 2000) == 0
    assert wait_ms(3000, 2000) == 1000
    assert wait_ms(10**12, 0) == 60_000


def test_attempt_round_trips_through_its_json():
    attempt = FollowupAttempt(REQUEST, tries=2, not_before=1_795_856_400_000)
    assert parse_attempt(orjson.loads(attempt.to_json())) == attempt
    fresh = parse_attempt(orjson.loads(REQUEST.to_json()))
    assert (fresh.tries, fresh.not_before) == (0, None)
    for bad in (-1, "2", True):
        with pytest.raises(InvalidRecord, match="tries"):
            parse_attempt({**REQUEST.to_dict(), "tries": bad})


def test_outcome_record_fields():
    body = orjson.loads(FollowupOutcome.of(REQUEST, "cancelled", "user_returned", 1, 1_795_856_400_000).to_json())
    assert body == {"followup_id": "f-1", "user_id": "u-1", "bot_id": "maestro", "app": "whatsapp",
                    "outcome": "cancelled", "reason": "user_returned", "tries": 1, "at": "2026-11-28T09:00:00.000Z"}


@pytest.mark.parametrize("pair, reason", [
    (PairNow(published=True, killed=False, last_inbound_ts=None), None),
    (PairNow(published=True, killed=False, last_inbound_ts=1_000_000), None),  # inbound exactly at the due time: not after it
    (PairNow(published=True, killed=False, last_inbound_ts=1_000_001), "user_returned"),
    (PairNow(published=True, killed=True, last_inbound_ts=None), "killed"),
    (PairNow(published=False, killed=True, last_inbound_ts=2_000_000), "erased"),  # erasure wins: nothing else may be read
])
def test_cancel_reason(pair, reason):
    assert cancel_reason(REQUEST, pair, now=REQUEST.due_ts, messaging_window=WINDOW_MS) == reason


def test_a_follow_up_that_can_no_longer_leave_within_m_of_the_last_inbound_is_cancelled():
    # Spec section 3: cancelled when it could no longer go out within M of the pair's
    # latest inbound message. M = 24 h; the request's last inbound is at 900_000 ms.
    pair, m = PairNow(published=True, killed=False, last_inbound_ts=900_000), 86_400_000
    assert cancel_reason(REQUEST, pair, now=900_000 + m, messaging_window=m) is None
    assert cancel_reason(REQUEST, pair, now=900_000 + m + 1, messaging_window=m) == "window_closed"


@pytest.mark.parametrize("exc, kind", [
    (CircuitOpen(3.0), "circuit_open"),
    (LLMError("HTTP 429", retryable=True, status=429), "rate_limited"),
    (LLMError("HTTP 503", retryable=True, status=503), "http_5xx"),
    (LLMError("HTTP 401", retryable=False, status=401), "http_4xx"),
    (LLMError("LLM call failed after 3 attempt(s): no answer within 20.0s", retryable=True), "timeout"),
    (LLMError("LLM call failed after 1 attempt(s): connection error: ClientConnectorError", retryable=True), "connection"),
    (LLMError("LLM call failed after 3 attempt(s): not a chat completion: {", retryable=True), "bad_response"),
])
def test_error_kind(exc, kind):
    assert error_kind(exc) == kind


def test_refusal_labels_are_bounded_words():
    reasons = check_text("I miss you so much! Honestly, I'm a real person, not a bot.", "en")
    assert refusal_labels(reasons) == {"pressure", "claims_to_be_human"}
    assert refusal_labels(["too long: 900 characters, more than 360", "empty"]) == {"too_long", "empty"}


def test_usable_record_keeps_messages_erasures_and_what_changes_safety_facts_or_the_clock():
    message = b'{"event_id":"e1","app":"whatsapp","user_id":"u-1","bot_id":"maestro","direction":"inbound","ts":5,"text":"hi"}'
    assert isinstance(usable_record(message), MessageEvent)
    assert usable_record(b'{"type":"erase","user_id":"u-1"}') == Erase("u-1")
    assert usable_record(b'{"type":"opt_out","user_id":"u-1","bot_id":null}') == OptOut("u-1", None)
    assert usable_record(b'{"type":"tick","ts":5}') == Tick(5)
    for other in (b"", None, b'{"type":"kill","scope":"all","on":true}'):
        assert usable_record(other) is None
    for invalid in (b"not json", b'{"app":"whatsapp"}'):
        with pytest.raises(InvalidRecord):
            usable_record(invalid)


def test_context_entries_come_back_oldest_first():
    raw = [orjson.dumps({"direction": d, "text": t, "ts": ts, "app": "whatsapp", "event_id": t})
           for d, t, ts in (("inbound", "b", 20), ("outbound", "a", 10))]
    assert [entry.text for entry in parse_entries(raw)] == ["a", "b"]


# -- the context stage on Redis ---------------------------------------------------------

def message(event_id: str, ts: int, direction: str = "inbound", bot: str = "maestro", app: str = "whatsapp") -> bytes:
    return orjson.dumps({"event_id": event_id, "app": app, "user_id": "u-1", "bot_id": bot,
                         "direction": direction, "ts": ts, "text": f"text {event_id}"})


@pytest.mark.kafka
async def test_context_is_trimmed_deduplicated_and_keeps_the_latest_inbound(redis_client):
    writer = ContextWriter(redis_client, Settings.from_mapping({"context_messages": 3, "window": WINDOW_MS // 1000}))
    batch = [message("e1", 100), message("e2", 300), message("e3", 200, "outbound"), message("e4", 250)]
    await writer.apply(batch)
    await writer.apply(batch + [message("e2", 300)])  # a re-delivered batch and a re-sent webhook
    context = await read_context(redis_client, "u-1", "maestro")
    assert [entry.event_id for entry in context] == ["e3", "e4", "e2"]
    assert await redis_client.hget(last_inbound_key("u-1"), "maestro") == b"300"  # not the later-arriving 250
    assert await redis_client.smembers(context_bots_key("u-1")) == {b"maestro"}
    assert 0 < await redis_client.pttl(context_key("u-1", "maestro")) <= WINDOW_MS


@pytest.mark.kafka
async def test_erase_in_a_batch_deletes_what_came_before_it_only(redis_client):
    writer = ContextWriter(redis_client, Settings.from_mapping({"context_messages": 10, "window": WINDOW_MS // 1000}))
    await writer.apply([message("e1", 100), message("e2", 200, bot="chef-lucie"),
                        b'{"type":"erase","user_id":"u-1"}', message("e3", 300)])
    assert await redis_client.keys("*") != []
    assert [entry.event_id for entry in await read_context(redis_client, "u-1", "maestro")] == ["e3"]
    assert await redis_client.exists(context_key("u-1", "chef-lucie")) == 0
    await writer.erase("u-1")
    assert await redis_client.keys("*") == []




@pytest.mark.kafka
async def test_what_the_context_stage_skips_is_counted_by_its_reason_and_the_batch_goes_on(redis_client):
    """Nothing vanishes (issue 14): an invalid record, an unreadable clock stamp or an empty
    value is skipped with a named count, and the records after it are still applied."""
    dropped = []
    writer = ContextWriter(redis_client, Settings.from_mapping({"context_messages": 10, "window": WINDOW_MS // 1000}),
                           on_dropped=dropped.append)
    await writer.apply([b"not json", message("e1", 100), b"", None, b"", message("e2", 200), message("e3", 300)],
                       [(0, None), (0, None), (0, None), (0, None), (0, 150), None, (0, None)])
    assert sorted(dropped) == ["empty_value", "empty_value", "invalid_header", "not_json"]  # the stamped empty one is the clock's
    assert [entry.event_id for entry in await read_context(redis_client, "u-1", "maestro")] == ["e1", "e3"]
