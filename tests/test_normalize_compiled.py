"""The ingest stage's compiled path (``normalize_encoded``) against ``normalize_webhook``.

``normalize_webhook`` is the oracle: its own tests (tests/test_normalize.py) hold it to
the spec. Whatever the document, ``normalize_encoded`` must give the same events (as
``MessageEvent.to_json()``, keyed by user id), the same count of dropped entries, the
same errors (reason and kind), the same receipts, or refuse the document whole with the
same reason and kind. The documents: generated webhooks of every app and shape (text,
media, echoes with and without a follow-up id, statuses, deliveries, reads, postbacks,
unsent messages, notices), each field valid or odd; the fixtures, mutated; the
benchmark's traffic; arbitrary JSON and bytes; and bytes that JSON readers tell apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.normalize import compiled_normalize, normalize_encoded, normalize_webhook
from schemas.records import InvalidRecord
from schemas.registry import BotRegistry
from tests.test_normalize import FIXTURE_DOCUMENTS, json_values, mutated_documents

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = BotRegistry.load(ROOT / "deploy" / "bots.toml")
APPS = ("whatsapp", "facebook", "instagram")
# Account ids of deploy/bots.toml, and one no bot owns.
WHATSAPP_NUMBER = next(iter(REGISTRY.owners("whatsapp")))
PAGE = next(iter(REGISTRY.owners("facebook")))
INSTAGRAM_ACCOUNT = next(iter(REGISTRY.owners("instagram")))


def _outcome(run) -> object:
    try:
        return run()
    except InvalidRecord as exc:
        return ("refused", str(exc), exc.kind)


def oracle(app: str, data: bytes) -> object:
    """What ``normalize_webhook`` makes of the document, in ``normalize_encoded``'s terms."""
    def run():
        result = normalize_webhook(app, data, REGISTRY)
        return ([(event.user_id.encode(), event.to_json()) for event in result.events], result.dropped,
                [(str(error), error.kind) for error in result.errors], list(result.receipts))
    return _outcome(run)


def encoded(app: str, data: bytes) -> object:
    def run():
        result = normalize_encoded(app, data, REGISTRY)
        return (list(result.events), result.dropped, [(str(error), error.kind) for error in result.errors],
                list(result.receipts))
    return _outcome(run)


def assert_agree(app: str, document) -> None:
    """The same outcome, from compact and from ASCII-escaped bytes of the document."""
    for data in (json.dumps(document, ensure_ascii=False).encode(), json.dumps(document).encode()):
        assert encoded(app, data) == oracle(app, data), data


# -- generated webhooks of every app and shape ---------------------------------------------

ODD = st.one_of(st.none(), st.integers(-2, 2**64), st.floats(allow_nan=False), st.booleans(), st.just(""),
               st.just("x" * 257), st.just([]), st.just({}))


def odd(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field's valid value; in half the documents, one time in sixteen, a value that may
    break it instead: many documents are all valid, many have a few odd fields."""
    roll = st.sampled_from(range(16)).flatmap(lambda roll: ODD if roll == 0 else valid)
    return st.shared(st.booleans(), key="all valid").flatmap(lambda clean: valid if clean else roll)


def sometimes(draw, eighths: int) -> bool:
    """True ``eighths`` times in eight (``st.booleans`` leans to False)."""
    return draw(st.sampled_from(range(8))) < eighths


def mostly(valid: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` seven times in eight, else ``rare``."""
    return st.sampled_from(range(8)).flatmap(lambda roll: rare if roll == 0 else valid)


ids = mostly(st.sampled_from(["u1", "u00016", "wamid.1", "m_1", "😀" * 256]), st.just("😀" * 257))
texts = mostly(st.one_of(st.sampled_from(["hello", "", "y" * 8192, "é\u2028\x00\"\\/", None]), st.text(max_size=12)),
               st.just("y" * 8193))
seconds = mostly(st.integers(0, 253_402_300_799).map(str), st.sampled_from(["", "-5", "1.5", "\u0661\u0662", "9" * 13]))
millis = mostly(st.integers(0, 253_402_300_799_999), st.sampled_from([-1, 253_402_300_800_000]))


def optional(draw, document: dict, key: str, values: st.SearchStrategy) -> None:
    """Set ``key`` to a drawn value one time in eight, else leave it out."""
    if sometimes(draw, 1):
        document[key] = draw(values)


def usual(draw, document: dict, key: str, values: st.SearchStrategy) -> None:
    """Set ``key`` to a drawn value seven times in eight, else leave it out."""
    if sometimes(draw, 7):
        document[key] = draw(values)


@st.composite
def whatsapp_messages(draw) -> dict:
    message = {"from": draw(odd(ids)), "id": draw(odd(ids)), "timestamp": draw(odd(seconds))}
    kind = draw(st.sampled_from(["text", "image", "video", "document", "audio", "sticker", "location"]))
    usual(draw, message, "type", odd(st.just(kind)))
    body = {"body": draw(odd(texts))} if sometimes(draw, 6) else {}
    if kind == "text":
        message["text"] = draw(odd(st.just(body)))
    elif kind != "location":
        media = {"id": "m1", "mime_type": "image/jpeg"}
        optional(draw, media, "caption", odd(texts))
        message[kind] = draw(odd(st.just(media)))
    else:
        message["location"] = {"latitude": 1.5, "longitude": 2}
    optional(draw, message, "context", st.just({"from": "u1", "id": "wamid.0"}))
    return message


@st.composite
def whatsapp_statuses(draw) -> dict:
    status = {"id": draw(odd(ids)), "status": draw(odd(st.sampled_from(["sent", "delivered", "read", "failed", "deleted"]))),
              "timestamp": draw(odd(seconds)), "recipient_id": draw(odd(ids))}
    optional(draw, status, "biz_opaque_callback_data", odd(st.sampled_from(["f-1", "f-2"])))
    optional(draw, status, "errors", st.just([{"code": 131026, "title": "undeliverable"}]))
    optional(draw, status, "conversation", st.just({"id": "c1", "origin": {"type": "service"}}))
    return status


@st.composite
def whatsapp_webhooks(draw) -> dict:
    entries = []
    for _ in range(draw(st.integers(1, 2))):
        changes = []
        for _ in range(draw(st.integers(1, 2))):
            value = {"messaging_product": "whatsapp"}
            usual(draw, value, "metadata", odd(st.fixed_dictionaries({
                "display_phone_number": st.just("15550000000"),
                "phone_number_id": odd(st.just(WHATSAPP_NUMBER if sometimes(draw, 7) else "999"))})))
            optional(draw, value, "contacts", st.just([{"profile": {"name": "A"}, "wa_id": "u1"}]))
            usual(draw, value, "messages", odd(st.lists(odd(whatsapp_messages()), min_size=1, max_size=3)))
            optional(draw, value, "statuses", odd(st.lists(odd(whatsapp_statuses()), max_size=3)))
            optional(draw, value, "event", st.just("VERIFIED_ACCOUNT"))
            change = {"field": "messages"}
            usual(draw, change, "value", odd(st.just(value)))
            changes.append(draw(odd(st.just(change))))
        entry = {"id": "102290129340398"}
        usual(draw, entry, "changes", odd(st.just(changes)))
        entries.append(draw(odd(st.just(entry))))
    document = {"entry": draw(odd(st.just(entries)))}
    usual(draw, document, "object", odd(st.just("whatsapp_business_account" if sometimes(draw, 7) else "page")))
    return document


@st.composite
def messaging_items(draw, account: str) -> dict:
    user, echo = draw(odd(ids)), sometimes(draw, 3)
    parties = [{"id": account if sometimes(draw, 7) else "999"}, {"id": user}]
    sender, recipient = parties if echo else parties[::-1]
    item = {"sender": draw(odd(st.just(sender))), "recipient": draw(odd(st.just(recipient))),
            "timestamp": draw(odd(millis))}
    kind = draw(st.sampled_from(["message"] * 5 + ["delivery", "read", "postback", "reaction"]))
    if kind == "message":
        message = {"mid": draw(odd(ids))}
        usual(draw, message, "text", odd(texts))
        optional(draw, message, "is_echo", odd(st.just(echo)))
        usual(draw, message, "metadata", odd(st.sampled_from(["f-1", "", "x" * 257])))
        optional(draw, message, "is_deleted", odd(st.just(True)))
        optional(draw, message, "attachments", st.just([{"type": "image", "payload": {"url": "https://a.invalid/p"}}]))
        optional(draw, message, "quick_reply", st.just({"payload": "YES"}))
        item["message"] = draw(odd(st.just(message)))
    elif kind == "delivery":
        item["delivery"] = {"mids": draw(odd(st.lists(odd(ids), max_size=2))), "watermark": draw(odd(millis))}
    elif kind == "read":
        item["read"] = {"watermark": draw(odd(millis))}
        optional(draw, item["read"], "mid", odd(ids))
    else:
        item[kind] = {"payload": "GO"}
    return item


@st.composite
def messaging_webhooks(draw, app: str) -> dict:
    account = PAGE if app == "facebook" else INSTAGRAM_ACCOUNT
    entries = []
    for _ in range(draw(st.integers(1, 2))):
        entry = {"id": account}
        usual(draw, entry, "time", odd(millis))
        usual(draw, entry, "messaging", odd(st.lists(odd(messaging_items(account)), min_size=1, max_size=3)))
        optional(draw, entry, "standby", st.just([{"sender": {"id": "u1"}}]))
        optional(draw, entry, "changes", st.just([{"field": "comments"}]))
        entries.append(draw(odd(st.just(entry))))
    document = {"entry": draw(odd(st.just(entries)))}
    own = "page" if app == "facebook" else "instagram"
    usual(draw, document, "object", odd(st.just(own if sometimes(draw, 7) else "whatsapp_business_account")))
    return document


webhooks_of_every_app = st.one_of(
    st.tuples(st.just("whatsapp"), whatsapp_webhooks()),
    st.tuples(st.just("facebook"), messaging_webhooks("facebook")),
    st.tuples(st.just("instagram"), messaging_webhooks("instagram")),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(webhooks_of_every_app)
def test_generated_webhooks_of_every_app_and_shape_give_the_same_result(case):
    assert_agree(*case)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_fixtures_give_the_same_result(case):
    assert_agree(*case)


@settings(max_examples=300)
@given(st.sampled_from(APPS), json_values)
def test_arbitrary_json_gives_the_same_result(app, value):
    assert_agree(app, value)


@settings(max_examples=300)
@given(st.sampled_from(APPS), st.binary(max_size=200))
def test_arbitrary_bytes_give_the_same_result(app, data):
    assert encoded(app, data) == oracle(app, data)


# -- bytes that JSON readers tell apart ------------------------------------------------------

FACEBOOK_TEXT = (b'{"object":"page","entry":[{"id":"%s","time":1795868806537,"messaging":[{"sender":{"id":"u1"},'
                 b'"recipient":{"id":"%s"},"timestamp":1795868806537,"message":{"mid":"m_1","text":"hi"%s}}]}]}')


def facebook_text(extra: bytes = b"") -> bytes:
    return FACEBOOK_TEXT % (PAGE.encode(), PAGE.encode(), extra)


@pytest.mark.parametrize("data", [
    facebook_text(),
    facebook_text(b',"text":"again"'),                       # a repeated key: the last one, as orjson
    facebook_text(b',"seq":1e400'),                          # a number orjson refuses, in a field no one reads
    facebook_text(b',"seq":123456789012345678901234567890'),  # an integer past 64 bits
    facebook_text(b',"seq":"\xff"'),                         # invalid UTF-8 where no one reads
    facebook_text(b',"seq":"\\ud800"'),                      # a lone surrogate
    facebook_text(b',"seq":' + b"[" * 1100 + b"]" * 1100),   # nesting past orjson's limit
    facebook_text(b',"seq":' + b"[" * 500 + b"]" * 500),
    facebook_text(b',"\\u0074ext":"escaped key"'),
    facebook_text(b',"is_echo":false,"is_deleted":false'),
    facebook_text(b',"text":null'),
    facebook_text().replace(b'"hi"', b'"hi\\u0000\\n\\"/\xc3\xa9"'),
    facebook_text().replace(b'1795868806537,"message"', b'1795868806537.0,"message"'),
    facebook_text().replace(b'"object":"page"', b'"object":null'),
    facebook_text() + b" trailing", b"\xef\xbb\xbf" + facebook_text(), b" \n" + facebook_text() + b"\n",
    b"", b"{}", b"[]", b"null", b'{"entry":[]}', b'{"entry":null}', b'{"object":"page","entry":[{}]}',
])
def test_bytes_that_json_readers_tell_apart_give_the_same_result(data):
    for app in ("facebook", "instagram", "whatsapp"):
        assert encoded(app, data) == oracle(app, data), (app, data)


def test_the_benchmarks_traffic_takes_the_compiled_path_and_gives_the_same_result():
    """The documents the simulator posts (devstack.traffic) are the common shapes: each one
    is read by the compiled path, not only by the general one."""
    from bench.ingest_bench import webhooks
    documents = webhooks(3000, seed=3)
    assert {app for app, _ in documents} == set(APPS)
    for app, data in documents:
        assert compiled_normalize(app, data, REGISTRY) is not None, data
        assert encoded(app, data) == oracle(app, data)


def test_the_fixtures_give_the_same_result():
    for app, document in FIXTURE_DOCUMENTS:
        assert_agree(app, document)


def test_an_unknown_app_is_a_programming_error_on_the_compiled_path_too():
    with pytest.raises(ValueError, match="unknown app"):
        normalize_encoded("telegram", facebook_text(), REGISTRY)


def test_a_status_of_no_follow_up_as_the_platform_sends_it_takes_the_compiled_path():
    """A status with the fields Cloud API statuses carry (conversation, pricing) and no
    follow-up id is dropped (spec section 9: only a follow-up's receipts are read) on the
    compiled path; one that names a follow-up is left to the general path, a receipt."""
    status = {"id": "wamid.HBgL", "status": "delivered", "timestamp": "1767225600", "recipient_id": "15551234567",
              "conversation": {"id": "c1", "origin": {"type": "service"}},
              "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}}

    def webhook(*statuses: dict) -> bytes:
        value = {"messaging_product": "whatsapp", "statuses": list(statuses),
                 "metadata": {"display_phone_number": "15550000000", "phone_number_id": WHATSAPP_NUMBER}}
        return orjson.dumps({"object": "whatsapp_business_account",
                             "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})

    plain = compiled_normalize("whatsapp", webhook(status), REGISTRY)
    assert plain is not None and (plain.events, plain.dropped, plain.receipts) == ((), 1, ())
    receipt = webhook(status, {**status, "biz_opaque_callback_data": "f-1"})
    assert compiled_normalize("whatsapp", receipt, REGISTRY) is None
    assert [r.followup_id for r in normalize_encoded("whatsapp", receipt, REGISTRY).receipts] == ["f-1"]
