"""The send APIs' answers read by their error codes (domain/sendapi.py): spec section 9,
"Errors are read by their code"; and the token gate that stops a bot's sends."""
from __future__ import annotations

import random

import pytest

from domain.sendapi import (
    FAILED, RETRY, SENT, SLOW_DOWN, TOKEN_REFUSED, WINDOW_CLOSED, Token, TokenGate, backoff_ms, code_label, read_answer,
    retry_delay_ms, send_path, send_rate,
)
from foundation.settings import Settings


def error(code: int, subcode: int | None = None) -> dict:
    body = {"message": f"(#{code})", "type": "OAuthException", "code": code, "fbtrace_id": "Axyz"}
    if subcode is not None:
        body["error_subcode"] = subcode
    return {"error": body}


@pytest.mark.parametrize("app, status, payload, kind", [
    # the 24-hour window closed: window_closed
    ("whatsapp", 400, error(131047), WINDOW_CLOSED),
    ("facebook", 400, error(10, 2018278), WINDOW_CLOSED),
    ("instagram", 400, error(10, 2018278), WINDOW_CLOSED),
    # throughput and pair rate limits: slowed down and retried
    ("whatsapp", 400, error(130429), SLOW_DOWN),
    ("whatsapp", 400, error(131056), RETRY),
    ("facebook", 400, error(4), SLOW_DOWN),
    ("facebook", 400, error(613), SLOW_DOWN),
    ("instagram", 429, error(80007), SLOW_DOWN),
    # undeliverable recipient: failed
    ("whatsapp", 400, error(131026), FAILED),
    ("facebook", 400, error(551), FAILED),
    # invalid or expired token
    ("whatsapp", 401, error(190), TOKEN_REFUSED),
    ("facebook", 400, error(190), TOKEN_REFUSED),
    # platform trouble: retried
    ("whatsapp", 503, error(2), RETRY),
    ("facebook", 500, error(1), RETRY),
    ("whatsapp", 502, "<html>bad gateway</html>", RETRY),
    ("facebook", 429, None, SLOW_DOWN),
    # anything else the platform refuses will not change by itself
    ("facebook", 400, error(10), FAILED),  # code 10 alone is a permission error, not the window
    ("whatsapp", 400, error(100), FAILED),
    ("whatsapp", 403, None, FAILED),
])
def test_errors_are_read_by_their_code(app, status, payload, kind):
    assert read_answer(app, status, payload).kind == kind


def test_an_accepted_send_keeps_the_platforms_message_id():
    whatsapp = {"messaging_product": "whatsapp", "contacts": [{"input": "1", "wa_id": "1"}],
                "messages": [{"id": "wamid.HBgL", "message_status": "accepted"}]}
    assert read_answer("whatsapp", 200, whatsapp) == read_answer("whatsapp", 200, whatsapp)
    assert read_answer("whatsapp", 200, whatsapp).message_id == "wamid.HBgL"
    assert read_answer("facebook", 200, {"recipient_id": "1", "message_id": "m_1"}).message_id == "m_1"
    # A 2xx whose body was lost: the platform took it; receipts still find it by the echoed id.
    lost_body = read_answer("instagram", 200, None)
    assert (lost_body.kind, lost_body.message_id) == (SENT, None)


def test_a_retry_hint_is_kept_and_honoured():
    verdict = read_answer("instagram", 429, error(80007), retry_after_ms=7000)
    assert verdict.retry_after_ms == 7000
    assert retry_delay_ms(verdict, 1, 1000, 300_000, random.Random(1)) == 7000
    assert 500 <= retry_delay_ms(read_answer("whatsapp", 503, None), 1, 1000, 300_000, random.Random(1)) <= 1000


def test_backoff_doubles_with_jitter_up_to_its_ceiling():
    rng = random.Random(7)
    for tries in range(1, 12):
        ceiling = min(60_000, 1000 * 2 ** (tries - 1))
        assert ceiling / 2 <= backoff_ms(tries, 1000, 60_000, rng) <= ceiling


def test_error_code_labels_are_a_bounded_set():
    assert [code_label(c) for c in ("131047", "190", "613", "999999", "http_429", "http_5xx", "http_404", None)] == \
        ["131047", "190", "613", "other", "http_429", "http_5xx", "http_4xx", "none"]


def test_send_paths_are_the_spec_endpoints():
    assert send_path("v26.0", "whatsapp", "106540352242922") == "/v26.0/106540352242922/messages"
    assert send_path("v26.0", "facebook", "112233445566778") == "/v26.0/me/messages"
    assert send_path("v26.0", "instagram", "17841400000000001") == "/v26.0/me/messages"


def test_rates_are_the_platforms_defaults_unless_set_per_account():
    settings = Settings.from_mapping({"send_rates": "106540352242922=250"})
    assert send_rate(settings, "whatsapp", "106540352242922") == 250
    assert send_rate(settings, "whatsapp", "106540352242923") == 80  # spec section 9
    assert send_rate(settings, "facebook", "112233445566778") == 300
    assert send_rate(settings, "instagram", "17841400000000001") == 300


def test_a_token_never_shows_itself():
    token = Token("EAAG-secret-value")
    assert "secret" not in repr(token) and "secret" not in str(token) and "secret" not in f"{token}"
    assert token.bearer() == "Bearer EAAG-secret-value"
    assert Token("EAAG-secret-value").fingerprint == token.fingerprint != Token("other").fingerprint


def test_the_gate_stops_a_refused_bot_and_probes_it_now_and_then():
    gate, old, new = TokenGate(probe_ms=60_000), Token("old"), Token("new")
    assert gate.may_send("maestro", "whatsapp", old, 0)
    gate.refused("maestro", "whatsapp", old, 1000)
    assert not gate.may_send("maestro", "whatsapp", old, 2000)
    assert gate.may_send("maestro", "facebook", old, 2000)  # another app's token
    assert gate.may_send("chef-lucie", "whatsapp", old, 2000)  # another bot
    assert gate.may_send("maestro", "whatsapp", old, 61_000)  # one probe a minute with the same token
    assert not gate.may_send("maestro", "whatsapp", old, 61_001)
    assert gate.may_send("maestro", "whatsapp", new, 61_002)  # a rotated token: tried at once, once
    assert not gate.may_send("maestro", "whatsapp", new, 61_003)
    gate.accepted("maestro", "whatsapp")
    assert gate.may_send("maestro", "whatsapp", new, 61_004) and not gate.is_closed("maestro", "whatsapp")


def test_a_send_that_passed_the_gate_before_a_refusal_does_not_leave_after_it():
    # Section 9: a refused token (190) stops sends for that bot; calls run concurrently, so
    # one may have passed the gate just before another learned of the refusal.
    gate, token = TokenGate(probe_ms=60_000), Token("old")
    assert gate.may_send("maestro", "whatsapp", token, 1000)
    assert not gate.refused_since("maestro", "whatsapp", 1000)
    gate.refused("maestro", "whatsapp", token, 1500)
    assert gate.refused_since("maestro", "whatsapp", 1000)
    assert not gate.refused_since("maestro", "facebook", 1000)
    assert gate.may_send("maestro", "whatsapp", token, 61_500)  # the probe passed after it
    assert not gate.refused_since("maestro", "whatsapp", 61_500)
    gate.accepted("maestro", "whatsapp")
    assert not gate.refused_since("maestro", "whatsapp", 0)
