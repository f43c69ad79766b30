"""Native webhooks to canonical events: the spec section 5 mapping, and nothing lost."""
from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.normalize import NormalizeResult, normalize_webhook
from schemas.records import InvalidRecord, MessageEvent, Receipt, parse_message, parse_ts
from schemas.registry import BotRegistry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
REGISTRY = BotRegistry.load(ROOT / "deploy" / "bots.toml")


def fixture(name: str) -> dict:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


def normalize(app: str, document) -> NormalizeResult:
    return normalize_webhook(app, document, REGISTRY)


def reasons(result: NormalizeResult) -> list[str]:
    return [str(error) for error in result.errors]


def ms(text: str) -> int:
    return parse_ts(text)


# -- WhatsApp ------------------------------------------------------------------------

def test_whatsapp_text_message_maps_every_field():
    result = normalize("whatsapp", fixture("whatsapp_text"))
    assert result.errors == [] and result.dropped == 0
    assert result.events == [MessageEvent(
        event_id="wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        app="whatsapp", user_id="16505551234", bot_id="maestro", direction="inbound",
        ts=ms("2026-11-28T09:30:00Z"), text="Any film music tips?",
    )]


def test_whatsapp_media_takes_the_caption_and_captionless_media_is_empty_text():
    result = normalize("whatsapp", fixture("whatsapp_media"))
    assert [e.text for e in result.events] == [
        "Ma tarte tatin, trop cuite ?", "", "La recette de ma grand-mère", "",
    ]
    assert {e.bot_id for e in result.events} == {"chef-lucie"}
    assert [e.ts for e in result.events] == [1795858260000, 1795858270000, 1795858280000, 1795858290000]


def test_whatsapp_statuses_of_other_messages_are_counted_and_dropped():
    result = normalize("whatsapp", fixture("whatsapp_statuses"))  # no biz_opaque_callback_data: not a follow-up
    assert (result.events, result.errors, result.dropped, result.receipts) == ([], [], 2, [])


def test_whatsapp_statuses_of_a_followup_are_receipts_naming_it():
    # spec section 9: statuses echo the biz_opaque_callback_data the send carried
    document = fixture("whatsapp_statuses")
    delivered, read = document["entry"][0]["changes"][0]["value"]["statuses"]
    delivered["biz_opaque_callback_data"] = read["biz_opaque_callback_data"] = "f-1"
    failed = {**delivered, "status": "failed", "errors": [{"code": 131026, "title": "Message undeliverable"}]}
    document["entry"][0]["changes"][0]["value"]["statuses"].append(failed)
    result = normalize("whatsapp", document)
    wamid = delivered["id"]
    assert (result.events, result.errors, result.dropped) == ([], [], 0)
    assert result.receipts == [
        Receipt("whatsapp", "delivered", "16505551234", "maestro", 1795858300000, "f-1", (wamid,)),
        Receipt("whatsapp", "read", "16505551234", "maestro", 1795858320000, "f-1", (wamid,)),
        Receipt("whatsapp", "failed", "16505551234", "maestro", 1795858300000, "f-1", (wamid,), error_code="131026"),
    ]


@pytest.mark.parametrize("change", [{"status": "deleted"}, {"recipient_id": None}, {"timestamp": "soon"},
                                    {"biz_opaque_callback_data": ""}, {"biz_opaque_callback_data": 7}])
def test_a_followup_status_too_broken_to_use_is_dropped_not_an_error(change):
    document = fixture("whatsapp_statuses")
    status = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    status.update({"biz_opaque_callback_data": "f-1", **change})
    result = normalize("whatsapp", document)
    assert (result.errors, result.dropped, len(result.receipts)) == ([], 2, 0)


def test_whatsapp_many_messages_entries_and_numbers_in_one_webhook():
    result = normalize("whatsapp", fixture("whatsapp_multi"))
    assert [(e.user_id, e.bot_id) for e in result.events] == [
        ("16505551234", "maestro"), ("16505559876", "maestro"), ("34612345678", "coach-mateo"),
    ]
    assert result.events[1].text == "This scene's music!"  # a video's caption
    assert result.dropped == 2  # one status, one phone-number quality notice
    assert result.errors == []


def test_whatsapp_unknown_phone_number_id_is_an_error_for_that_message():
    result = normalize("whatsapp", fixture("whatsapp_unknown_number"))
    assert result.events == []
    assert reasons(result) == [
        "entry[0].changes[0].value.messages[0]: no bot in the registry owns whatsapp phone_number_id 123"
    ]
    assert result.errors[0].kind == "unknown_bot"  # the bounded word the dead-letter metric carries


def test_whatsapp_missing_metadata_fails_every_message_of_that_value_only():
    document = fixture("whatsapp_multi")
    del document["entry"][0]["changes"][0]["value"]["metadata"]
    result = normalize("whatsapp", document)
    assert [e.bot_id for e in result.events] == ["coach-mateo"]
    assert len(result.errors) == 2 and all("phone_number_id" in str(reason) for reason in result.errors)


@pytest.mark.parametrize("timestamp", ["12:30", "", "-5", "1.5", "\u0661\u0662\u0663", "9" * 13, None, 1.5, True, [1]])
def test_whatsapp_bad_timestamp_fails_only_its_message(timestamp):
    document = fixture("whatsapp_multi")
    document["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = timestamp
    result = normalize("whatsapp", document)
    assert len(result.events) == 2
    assert len(result.errors) == 1
    assert str(result.errors[0]).startswith("entry[0].changes[0].value.messages[0]: ")
    assert "timestamp" in str(result.errors[0])


def test_whatsapp_timestamp_is_seconds_times_1000_and_an_integer_is_accepted():
    document = fixture("whatsapp_text")
    document["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = 1795858200
    assert normalize("whatsapp", document).events[0].ts == 1795858200000


def test_whatsapp_timestamp_beyond_year_9999_is_an_error():
    document = fixture("whatsapp_text")
    document["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = "253402300800"
    result = normalize("whatsapp", document)
    assert result.events == [] and "out of range" in str(result.errors[0])


# -- Messenger and Instagram -------------------------------------------------------------

def test_messenger_text_message_maps_every_field():
    result = normalize("facebook", fixture("facebook_text"))
    assert result.events == [MessageEvent(
        event_id="m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P",
        app="facebook", user_id="6945512345678901", bot_id="maestro", direction="inbound",
        ts=1795858200123, text="Which composer should I try after Ennio Morricone?",
    )]


@pytest.mark.parametrize("app, name, user_id, bot_id", [
    ("facebook", "facebook_echo", "6945512345678901", "maestro"),
    ("instagram", "instagram_echo", "1234567890123456", "coach-mateo"),
])
def test_echo_is_outbound_from_the_sender_page_to_the_recipient_user(app, name, user_id, bot_id):
    [event] = normalize(app, fixture(name)).events
    assert (event.direction, event.user_id, event.bot_id) == ("outbound", user_id, bot_id)


def test_messenger_delivery_and_read_are_receipts_by_message_id_and_watermark():
    result = normalize("facebook", fixture("facebook_receipts"))
    assert (result.events, result.errors, result.dropped) == ([], [], 0)
    mid = "m_Bx9Kp3Vr8uvxOFiYgZZLk9nKFN_RQqa6kdDL59QoLBkTekgjqryrNwL9nb7BD9gqmxmrMQ_6dhYJcv8J4sCO1Q"
    assert result.receipts == [
        Receipt("facebook", "delivered", "6945512345678901", "maestro", 1795858269000, mids=(mid,)),
        Receipt("facebook", "read", "6945512345678901", "maestro", 1795858270000, watermark=1795858260456),
    ]


def test_an_echo_carrying_metadata_is_both_an_outbound_event_and_a_sent_receipt():
    # spec section 9: message.metadata comes back in the echo
    result = normalize("facebook", fixture("facebook_echo"))
    [event] = result.events
    assert result.receipts == [Receipt("facebook", "sent", event.user_id, "maestro", event.ts,
                                       followup_id="relance:reply", mids=(event.event_id,))]
    document = fixture("facebook_echo")
    del document["entry"][0]["messaging"][0]["message"]["metadata"]
    assert normalize("facebook", document).receipts == []


def test_a_receipt_for_a_page_no_bot_owns_is_dropped():
    document = fixture("facebook_receipts")
    for item in document["entry"][0]["messaging"]:
        item["recipient"]["id"] = "999"
    result = normalize("facebook", document)
    assert (result.receipts, result.errors, result.dropped) == ([], [], 2)


def test_messenger_batch_keeps_messages_and_drops_postbacks_and_reactions():
    result = normalize("facebook", fixture("facebook_multi"))
    assert [(e.text, e.bot_id) for e in result.events] == [
        ("", "maestro"),  # an image attachment has no text
        ("More like this", "maestro"),
        ("Une idée de dessert sans four ?", "chef-lucie"),
    ]
    assert result.dropped == 2 and result.errors == []


def test_instagram_text_message_maps_every_field():
    [event] = normalize("instagram", fixture("instagram_text")).events
    assert (event.app, event.user_id, event.bot_id, event.direction, event.ts) == (
        "instagram", "1234567890123456", "coach-mateo", "inbound", 1795858200456,
    )


def test_instagram_keeps_reads_as_receipts_and_drops_unsends_and_comment_changes():
    result = normalize("instagram", fixture("instagram_mixed"))
    assert [e.text for e in result.events] == ["", "Como se diz 'saudade' em inglês?"]
    assert {e.bot_id for e in result.events} == {"professora-ana"}
    assert result.dropped == 2 and result.errors == []
    [read] = result.receipts
    assert (read.kind, read.user_id, read.bot_id, read.ts) == ("read", "2345678901234567", "professora-ana", 1795858400300)
    assert read.mids[0].startswith("aWdf") and read.watermark is None


def test_an_account_id_is_looked_up_on_the_webhooks_own_app_only():
    document = fixture("instagram_text")
    # maestro's Facebook page id, arriving as an Instagram recipient, is nobody's.
    document["entry"][0]["messaging"][0]["recipient"]["id"] = "112233445566778"
    result = normalize("instagram", document)
    assert result.events == []
    assert reasons(result) == [
        "entry[0].messaging[0]: no bot in the registry owns instagram account id 112233445566778"
    ]


@pytest.mark.parametrize("timestamp", ["1795858200123", 1795858200.5, True, -1, None, 253_402_300_800_000])
def test_messenger_bad_timestamp_fails_only_its_message(timestamp):
    document = fixture("facebook_multi")
    document["entry"][0]["messaging"][1]["timestamp"] = timestamp
    result = normalize("facebook", document)
    assert len(result.events) == 2
    assert len(result.errors) == 1 and str(result.errors[0]).startswith("entry[0].messaging[1]: ")


# -- the canonical event's limits --------------------------------------------------------

def test_text_of_8192_characters_passes_and_8193_is_an_error():
    document = fixture("facebook_multi")
    messaging = document["entry"][0]["messaging"]
    messaging[1]["message"]["text"] = "a" * 8192
    messaging[0]["message"]["text"] = "a" * 8193
    result = normalize("facebook", document)
    assert [len(e.text) for e in result.events if e.text.startswith("a")] == [8192]
    assert reasons(result) == ["entry[0].messaging[0]: text is 8193 characters long, more than 8192"]


@pytest.mark.parametrize("field, value, reason", [
    ("from", "", "from is empty"),
    ("from", 16505551234, "from must be a string, is a number"),
    ("id", "w" * 257, "id is 257 characters long, more than 256"),
    ("id", None, "missing id"),
])
def test_whatsapp_bad_ids_are_errors(field, value, reason):
    document = fixture("whatsapp_text")
    document["entry"][0]["changes"][0]["value"]["messages"][0][field] = value
    result = normalize("whatsapp", document)
    assert result.events == [] and str(result.errors[0]).endswith(reason)


def test_every_event_passes_the_canonical_parser_unchanged():
    for path in sorted(FIXTURES.glob("*.json")):
        app = path.name.split("_")[0]
        for event in normalize(app, path.read_bytes()).events:
            assert parse_message(orjson.loads(event.to_json())) == event


# -- whole documents ---------------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    (b"not json", "not JSON"),
    (b'{"object": "page", "entry": [', "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"entry"', "must be a JSON object"),
    (b'{"object": "page"}', "entry must be a list, is missing"),
    (b'{"object": "page", "entry": {}}', "entry must be a list, is a object"),
    (b'{"object": "instagram", "entry": []}', "not a facebook webhook"),
    (b'{"object": "page", "entry": [7]}', "entry[0] must be an object"),
    (b'{"object": "page", "entry": [{"messaging": "x"}]}', "entry[0].messaging must be a list"),
])
def test_a_document_of_the_wrong_shape_is_refused_whole(line, reason):
    with pytest.raises(InvalidRecord, match=None) as caught:
        normalize("facebook", line)
    assert reason in str(caught.value)


def test_bytes_text_and_decoded_documents_give_the_same_result():
    raw = (FIXTURES / "whatsapp_multi.json").read_bytes()
    results = [normalize("whatsapp", form) for form in (raw, raw.decode(), orjson.loads(raw))]
    assert results[0] == results[1] == results[2]


def test_the_document_is_not_modified():
    document = fixture("facebook_multi")
    before = copy.deepcopy(document)
    normalize("facebook", document)
    assert document == before


def test_an_unknown_app_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown app"):
        normalize("telegram", fixture("facebook_text"))


# -- nothing lost, whatever comes in ------------------------------------------------------

def message_slots(app: str, document: dict) -> int:
    """Messages in a document the normaliser accepted, counted independently of it."""
    count = 0
    for entry in document.get("entry") or []:
        if app == "whatsapp":
            for change in entry.get("changes") or []:
                value = change.get("value")
                if isinstance(value, dict):
                    count += len(value.get("messages") or [])
            continue
        for item in entry.get("messaging") or []:
            if not isinstance(item, dict):
                count += 1  # not readable: it cannot be told apart from a message
                continue
            message = item.get("message")
            unsent = isinstance(message, dict) and message.get("is_deleted") is True
            count += message is not None and not unsent
    return count


FIXTURE_DOCUMENTS = [(path.name.split("_")[0], orjson.loads(path.read_bytes())) for path in sorted(FIXTURES.glob("*.json"))]
ODD_VALUES = [None, 0, -1, 1.5, True, "", "x", "9" * 20, [], {}, [{}], "a" * 9000, 10**20]


def paths_of(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths_of(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths_of(child, prefix + (index,))


def mutate(document, path, replacement, delete):
    if not path:
        return replacement
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


@st.composite
def mutated_documents(draw):
    app, original = draw(st.sampled_from(FIXTURE_DOCUMENTS))
    document = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(paths_of(document))
        path = draw(st.sampled_from(paths))
        replacement = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))  # never share ODD_VALUES
        document = mutate(document, path, replacement, delete=bool(path) and draw(st.booleans()))
    return app, document


def assert_accounted_for(app: str, document) -> None:
    """The document ends as a refusal, or each of its messages as one event or one error."""
    try:
        result = normalize(app, document)
    except InvalidRecord as exc:
        assert str(exc)  # a reason a person can read
        return
    decoded = document if isinstance(document, dict) else orjson.loads(document)
    assert len(result.events) + len(result.errors) == message_slots(app, decoded)
    assert result.dropped >= 0
    for event in result.events:
        assert parse_message(orjson.loads(event.to_json())) == event


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_webhooks_end_as_events_errors_or_a_refusal(case):
    app, document = case
    assert_accounted_for(app, document)


@settings(max_examples=200)
@given(st.sampled_from(["whatsapp", "facebook", "instagram"]), st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_normaliser(app, data):
    try:
        normalize(app, data)
    except InvalidRecord:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["object", "entry", "changes", "value", "messages", "messaging", "message", "statuses",
                         "metadata", "phone_number_id", "id", "from", "timestamp", "text", "body", "mid",
                         "sender", "recipient", "is_echo", "is_deleted", "caption", "image"]),
        children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400)
@given(st.sampled_from(["whatsapp", "facebook", "instagram"]), json_values)
def test_arbitrary_json_is_accounted_for(app, value):
    assert_accounted_for(app, value)
    assert_accounted_for(app, orjson.dumps(value))  # the same through the bytes path
