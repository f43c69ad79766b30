"""Send-API bodies and the delivery record."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from domain.delivery import TEXT_LIMITS, delivery_body, delivery_record
from domain.honesty import disclosure_line, finalize
from schemas import records
from schemas.records import FollowupRequest, InvalidRecord, parse_ts

REQUEST = FollowupRequest(
    followup_id="f-1", user_id="33612345678", bot_id="maestro", app="whatsapp",
    due_ts=parse_ts("2026-11-28T21:30:00.000Z"), last_inbound_ts=parse_ts("2026-11-28T09:30:00.000Z"),
    inbound_in_window=7,
)
GENERATED_AT = parse_ts("2026-11-28T21:30:01.250Z")


def test_whatsapp_body_is_a_cloud_api_text_message_carrying_the_followup_id():
    # spec section 9: the follow-up id travels in biz_opaque_callback_data, which statuses echo
    assert delivery_body("whatsapp", "33612345678", "Hello", "f-1") == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "33612345678",
        "type": "text", "text": {"body": "Hello", "preview_url": False}, "biz_opaque_callback_data": "f-1",
    }


@pytest.mark.parametrize("app", ["facebook", "instagram"])
def test_messenger_and_instagram_bodies_are_proactive_updates_carrying_the_followup_id(app):
    # spec section 9: the follow-up id travels in message.metadata, which the echo carries back
    assert delivery_body(app, "psid-9", "Hello", "f-1") == {
        "recipient": {"id": "psid-9"}, "messaging_type": "UPDATE", "message": {"text": "Hello", "metadata": "f-1"},
    }


def test_unknown_app_is_refused():
    with pytest.raises(ValueError, match="telegram"):
        delivery_body("telegram", "u", "Hello", "f-1")


@pytest.mark.parametrize("app", ["whatsapp", "facebook", "instagram"])
def test_text_over_the_platform_limit_is_refused(app):
    delivery_body(app, "u", "a" * TEXT_LIMITS[app], "f-1")
    with pytest.raises(ValueError, match=app):
        delivery_body(app, "u", "a" * (TEXT_LIMITS[app] + 1), "f-1")


def test_instagram_limit_counts_utf8_bytes():
    with pytest.raises(ValueError):
        delivery_body("instagram", "u", "é" * (TEXT_LIMITS["instagram"] // 2 + 1), "f-1")
    delivery_body("facebook", "u", "é" * (TEXT_LIMITS["instagram"] // 2 + 1), "f-1")


def test_record_for_a_followup_carries_the_final_text_and_its_body():
    final = finalize("I miss you!", "fr")  # refused: the safe template goes out instead
    record = delivery_record(REQUEST, final, GENERATED_AT)
    assert type(record) is records.DeliveryRecord
    assert record.ai_generated and record.replaced
    assert record.text == final.text and record.text.endswith(disclosure_line("fr"))
    assert record.body["to"] == REQUEST.user_id
    assert record.body["text"]["body"] == final.text


def test_record_json_shape_and_round_trip():
    final = finalize("Hi! Two more film scores for you?", "en")
    on_messenger = dataclasses.replace(REQUEST, user_id="psid-1", app="facebook")
    record = delivery_record(on_messenger, final, GENERATED_AT)
    document = orjson.loads(record.to_json())
    assert document == {
        "followup_id": "f-1", "user_id": "psid-1", "bot_id": "maestro", "app": "facebook",
        "text": final.text, "ai_generated": True, "disclosure": disclosure_line("en"),
        "body": {"recipient": {"id": "psid-1"}, "messaging_type": "UPDATE", "message": {"text": final.text, "metadata": "f-1"}},
        "generated_at": "2026-11-28T21:30:01.250Z", "replaced": False,
        "due_ts": "2026-11-28T21:30:00.000Z", "last_inbound_ts": "2026-11-28T09:30:00.000Z", "inbound_in_window": 7,
    }
    assert records.parse_delivery(document) == record
    assert record.request == on_messenger  # what the sender's last-moment check reads


def test_parse_delivery_requires_replaced_as_a_boolean():
    document = delivery_record(REQUEST, finalize("Hello!", "en"), GENERATED_AT).to_dict()
    with pytest.raises(InvalidRecord, match="replaced"):
        records.parse_delivery({**document, "replaced": "yes"})
    with pytest.raises(InvalidRecord, match="replaced"):
        records.parse_delivery({k: v for k, v in document.items() if k != "replaced"})


@pytest.mark.parametrize("app", ["whatsapp", "facebook", "instagram"])
def test_records_validate_against_the_delivery_schema(app):
    schema = json.loads((pathlib.Path(__file__).resolve().parents[1] / "schemas" / "delivery.schema.json").read_text())
    record = delivery_record(dataclasses.replace(REQUEST, app=app), finalize("Hello!", "pt"), GENERATED_AT)
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(orjson.loads(record.to_json()))
