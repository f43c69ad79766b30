"""Native webhooks to canonical message events (spec section 5). Pure: no Kafka, no I/O.

``normalize_webhook(app, document, registry)`` turns one webhook document, as the
platform posted it, into a ``NormalizeResult``:

- ``events``: one ``MessageEvent`` per usable message, in document order;
- ``receipts``: what the platform says of messages the bot sent, when it could concern
  a follow-up (spec section 9, "Receipts back"): WhatsApp ``statuses`` that carry a
  ``biz_opaque_callback_data``, Messenger/Instagram ``delivery`` and ``read`` items, and
  echoes that carry a ``message.metadata`` (an echo is also an outbound event);
- ``dropped``: other entries that are not messages (statuses of the bot's other
  messages, non-message changes, postbacks, reactions, unsent-message notices,
  ``standby`` and ``changes`` items, receipts too broken to use);
- ``errors``: one ``InvalidRecord`` per message that could not be used, its reason
  prefixed by where it sits in the document (``entry[0].messaging[2]: ...``).

A document that is not JSON, or whose envelope (``object``, ``entry``, ``changes``,
``value``, ``messages``, ``messaging``) has the wrong shape, raises ``InvalidRecord``:
then the number of messages it holds is unknown, and the whole document must go to the
dead-letter topic. Otherwise every message slot ends as exactly one event or one error.

Every event is checked exactly as ``schemas.records.parse_message`` checks a canonical
event (ids, text length, time range), inline, because this is the ingest hot path.

``normalize_encoded(app, document, registry)``, what the ingest stage calls, gives the
same result with each event already as it is written to ``messages`` (key, JSON): the
documents of the common shapes (nearly all of them) are decoded and checked by msgspec
into Structs and encoded at once, no dict and no ``MessageEvent`` in between; every
other document goes through ``normalize_webhook``. A property test holds the two
together on generated webhooks of every app and shape, valid and invalid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping, NamedTuple, Protocol

import msgspec
import orjson

from schemas.records import (
    APPS,
    MAX_ID_LENGTH,
    MAX_TS_MS,
    MAX_TEXT_LENGTH,
    RECEIPT_KINDS,
    InvalidRecord,
    MessageEvent,
    Receipt,
    loads,
    message_fields,
    parse_ts,
)
from schemas.registry import ACCOUNT_KIND

__all__ = ["NormalizeResult", "normalize_webhook", "decode_webhook", "OBJECT_BY_APP", "EncodedResult",
           "normalize_encoded", "compiled_normalize"]

# The webhook's top-level ``object`` on each app: a document posted to the wrong raw
# topic is refused instead of being matched against the wrong app's account ids.
OBJECT_BY_APP = {"whatsapp": "whatsapp_business_account", "facebook": "page", "instagram": "instagram"}
# WhatsApp message types whose media object can carry a caption (the Cloud API has no
# caption on audio or stickers).
_CAPTIONED = ("image", "video", "document")
# Entry-level lists of Messenger/Instagram that are not ``messaging``: handover-protocol
# standby events and feed/comment changes. Counted and dropped.
_OTHER_ENTRY_LISTS = ("standby", "changes")
# WhatsApp epoch seconds fit in 12 digits until year 33658; longer strings are garbage,
# and capping the length keeps int() cheap on hostile input.
_MAX_SECONDS_DIGITS = 12


class AccountOwners(Protocol):
    def owners(self, app: str) -> Mapping[str, str]: ...


@dataclass(slots=True)
class NormalizeResult:
    events: list[MessageEvent] = field(default_factory=list)
    dropped: int = 0
    errors: list[InvalidRecord] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def messages(self) -> int:
        """Message slots found in the document: each became one event or one error."""
        return len(self.events) + len(self.errors)


def decode_webhook(document: bytes | str | dict) -> dict:
    """The decoded document, checked to be a JSON object."""
    body = document if isinstance(document, dict) else loads(document)
    if type(body) is not dict:
        raise InvalidRecord(f"a webhook must be a JSON object, got {_json_type(body)}", "not_object")
    return body


def normalize_webhook(app: str, document: bytes | str | dict, registry: AccountOwners) -> NormalizeResult:
    """Canonical events of one native webhook document; see the module docstring."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}: expected one of {', '.join(APPS)}")
    entries = _entries(app, decode_webhook(document))
    owners = registry.owners(app)
    if app == "whatsapp":
        return _whatsapp(entries, owners)
    return _messaging(app, entries, owners)


# -- envelope --------------------------------------------------------------------------

def _entries(app: str, body: dict) -> list:
    kind = body.get("object")
    if kind is not None and kind != OBJECT_BY_APP[app]:
        raise InvalidRecord(f"object is {str(kind)[:40]!r}, not a {app} webhook ({OBJECT_BY_APP[app]!r})")
    return _list(body, "entry", "the webhook", required=True)


def _list(container: dict, key: str, where: str, required: bool = False) -> list:
    value = container.get(key)
    if type(value) is list:
        return value
    if value is None and not required:
        return []
    shown = "missing" if value is None else f"a {_json_type(value)}"
    raise InvalidRecord(f"{where}.{key} must be a list, is {shown}")


def _object(value: Any, where: str) -> dict:
    if type(value) is not dict:
        raise InvalidRecord(f"{where} must be an object, is a {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# -- WhatsApp Business Cloud API -------------------------------------------------------

def _whatsapp(entries: list, owners: Mapping[str, str]) -> NormalizeResult:
    result = NormalizeResult()
    for i, entry in enumerate(entries):
        changes = _list(_object(entry, f"entry[{i}]"), "changes", f"entry[{i}]")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            value = _object(change, where).get("value")
            if value is None:
                result.dropped += 1
                continue
            _whatsapp_value(_object(value, where + ".value"), where + ".value", owners, result)
    return result


def _whatsapp_value(value: dict, where: str, owners: Mapping[str, str], result: NormalizeResult) -> None:
    messages = _list(value, "messages", where)
    statuses = _list(value, "statuses", where)
    bot_id, no_bot = _whatsapp_bot(value, owners) if messages or statuses else ("", "")
    for status in statuses:
        receipt = None if no_bot else _whatsapp_receipt(status, bot_id)
        if receipt is None:
            result.dropped += 1
        else:
            result.receipts.append(receipt)
    if not messages:
        if not statuses:
            result.dropped += 1  # account, template or quality notices: not messages
        return
    for k, message in enumerate(messages):
        try:
            if no_bot:
                raise no_bot
            result.events.append(_whatsapp_event(message, bot_id))
        except InvalidRecord as exc:
            result.errors.append(exc.located(f"{where}.messages[{k}]"))


def _whatsapp_bot(value: dict, owners: Mapping[str, str]) -> tuple[str, InvalidRecord | None]:
    """(bot id, None) or ("", why not): every message of one ``value`` shares its number."""
    metadata = value.get("metadata")
    number = metadata.get("phone_number_id") if type(metadata) is dict else None
    if type(number) is not str or not number:
        return "", InvalidRecord("metadata.phone_number_id is missing, so the bot is unknown", "unknown_bot")
    bot_id = owners.get(number)
    if bot_id is None:
        return "", InvalidRecord(f"no bot in the registry owns {ACCOUNT_KIND['whatsapp']} {number[:MAX_ID_LENGTH]}", "unknown_bot")
    return bot_id, None


def _whatsapp_receipt(status: Any, bot_id: str) -> Receipt | None:
    """A status of a follow-up (it carries the follow-up id the send gave it), else None."""
    if type(status) is not dict:
        return None
    followup_id, kind = status.get("biz_opaque_callback_data"), status.get("status")
    if type(followup_id) is not str or not 0 < len(followup_id) <= MAX_ID_LENGTH or kind not in RECEIPT_KINDS:
        return None
    user_id, message_id = status.get("recipient_id"), status.get("id")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_LENGTH:
        return None
    try:
        ts = _epoch_seconds(status.get("timestamp"))
    except InvalidRecord:
        return None
    return Receipt(app="whatsapp", kind=kind, user_id=user_id, bot_id=bot_id, ts=ts, followup_id=followup_id,
                   mids=(message_id,) if type(message_id) is str else (),
                   error_code=_first_error_code(status) if kind == "failed" else None)


def _first_error_code(status: dict) -> str | None:
    errors = status.get("errors")
    first = errors[0] if type(errors) is list and errors else None
    code = first.get("code") if type(first) is dict else None
    return str(code) if type(code) is int else None


def _whatsapp_event(message: Any, bot_id: str) -> MessageEvent:
    if type(message) is not dict:
        raise InvalidRecord(f"a message must be an object, is a {_json_type(message)}")
    return MessageEvent(
        event_id=_identifier(message.get("id"), "id"),
        app="whatsapp",
        user_id=_identifier(message.get("from"), "from"),
        bot_id=bot_id,
        direction="inbound",  # the Cloud API posts only what users send
        ts=_epoch_seconds(message.get("timestamp")),
        text=_text(_whatsapp_text(message)),
    )


def _whatsapp_text(message: dict) -> Any:
    text = message.get("text")
    if text is not None:
        if type(text) is not dict:
            raise InvalidRecord("text must be an object with a body")
        return text.get("body")
    for kind in _CAPTIONED:
        media = message.get(kind)
        if type(media) is dict:
            return media.get("caption")
    return None


def _epoch_seconds(value: Any) -> int:
    if type(value) is str and 0 < len(value) <= _MAX_SECONDS_DIGITS and value.isascii() and value.isdigit():
        return parse_ts(int(value) * 1000, "timestamp")
    if type(value) is int:  # not the documented form, but unambiguous
        return parse_ts(value * 1000, "timestamp")
    if value is None:
        raise InvalidRecord("missing timestamp")
    raise InvalidRecord(f"timestamp {str(value)[:40]!r} is not epoch seconds")


# -- Messenger Platform and Instagram Messaging ------------------------------------------

def _messaging(app: str, entries: list, owners: Mapping[str, str]) -> NormalizeResult:
    result = NormalizeResult()
    for i, entry in enumerate(entries):
        entry = _object(entry, f"entry[{i}]")
        for key in _OTHER_ENTRY_LISTS:
            other = entry.get(key)
            if type(other) is list:
                result.dropped += len(other)
        for k, item in enumerate(_list(entry, "messaging", f"entry[{i}]")):
            try:
                event = _messaging_event(app, item, owners)
            except InvalidRecord as exc:
                result.errors.append(exc.located(f"entry[{i}].messaging[{k}]"))
                continue
            if event is not None:
                result.events.append(event)
                if event.direction == "outbound":
                    _echo_receipt(item, event, result)
                continue
            receipt = _messaging_receipt(app, item, owners)
            if receipt is None:
                result.dropped += 1
            else:
                result.receipts.append(receipt)
    return result


def _echo_receipt(item: dict, echo: MessageEvent, result: NormalizeResult) -> None:
    """An echo of a follow-up (its ``metadata`` is the follow-up id): the platform has it."""
    followup_id = item["message"].get("metadata")
    if type(followup_id) is str and 0 < len(followup_id) <= MAX_ID_LENGTH:
        result.receipts.append(Receipt(app=echo.app, kind="sent", user_id=echo.user_id, bot_id=echo.bot_id,
                                       ts=echo.ts, followup_id=followup_id, mids=(echo.event_id,)))


def _messaging_receipt(app: str, item: Any, owners: Mapping[str, str]) -> Receipt | None:
    """A ``delivery`` or ``read`` item, sent by the user to the page or account, else None:
    it names message ids (``mids``, Instagram's ``read.mid``) or a ``watermark``."""
    if type(item) is not dict:
        return None
    kind = "delivery" if type(item.get("delivery")) is dict else "read" if type(item.get("read")) is dict else None
    if kind is None:
        return None
    body = item[kind]
    mids = body.get("mids") if kind == "delivery" else [body.get("mid")]
    mids = tuple(mid for mid in mids if type(mid) is str and 0 < len(mid) <= MAX_ID_LENGTH) if type(mids) is list else ()
    watermark = body.get("watermark")
    if not mids and (type(watermark) is not int or watermark < 0):
        return None
    try:
        user_id, account_id = _party(item, "sender"), _party(item, "recipient")
        ts = _epoch_millis(item.get("timestamp", watermark))
    except InvalidRecord:
        return None
    bot_id = owners.get(account_id)
    if bot_id is None:
        return None
    return Receipt(app=app, kind="delivered" if kind == "delivery" else "read", user_id=user_id, bot_id=bot_id,
                   ts=ts, mids=mids, watermark=watermark if not mids else None)


def _messaging_event(app: str, item: Any, owners: Mapping[str, str]) -> MessageEvent | None:
    """The event of one ``messaging[]`` item, or None when the item is not a message."""
    if type(item) is not dict:
        raise InvalidRecord(f"a messaging item must be an object, is a {_json_type(item)}")
    message = item.get("message")
    if message is None:
        return None  # delivery, read, postback, reaction, referral, optin ...
    if type(message) is not dict:
        raise InvalidRecord(f"message must be an object, is a {_json_type(message)}")
    if message.get("is_deleted") is True:
        return None  # the user unsent an earlier message: not a new message
    echo = message.get("is_echo", False)
    if type(echo) is not bool:
        raise InvalidRecord("message.is_echo must be true or false")
    sender = _party(item, "sender")
    recipient = _party(item, "recipient")
    # An echo is the bot's own message: the page/account sent it to the user.
    user_id, account_id = (recipient, sender) if echo else (sender, recipient)
    event_id = _identifier(message.get("mid"), "message.mid")
    ts = _epoch_millis(item.get("timestamp"))
    text = _text(message.get("text"))
    bot_id = owners.get(account_id)
    if bot_id is None:
        raise InvalidRecord(f"no bot in the registry owns {ACCOUNT_KIND[app]} {account_id}", "unknown_bot")
    return MessageEvent(
        event_id=event_id, app=app, user_id=user_id, bot_id=bot_id,
        direction="outbound" if echo else "inbound", ts=ts, text=text,
    )


def _party(item: dict, name: str) -> str:
    party = item.get(name)
    if type(party) is not dict:
        raise InvalidRecord(f"{name} must be an object with an id")
    return _identifier(party.get("id"), f"{name}.id")


def _epoch_millis(value: Any) -> int:
    if type(value) is int:
        return parse_ts(value, "timestamp")
    if value is None:
        raise InvalidRecord("missing timestamp")
    raise InvalidRecord(f"timestamp {str(value)[:40]!r} is not epoch milliseconds")


# -- the checks of a canonical event -----------------------------------------------------

def _identifier(value: Any, name: str) -> str:
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if value is None:
        raise InvalidRecord(f"missing {name}")
    if type(value) is str:
        shown = "empty" if not value else f"{len(value)} characters long, more than {MAX_ID_LENGTH}"
        raise InvalidRecord(f"{name} is {shown}")
    raise InvalidRecord(f"{name} must be a string, is a {_json_type(value)}")


def _text(value: Any) -> str:
    if value is None:
        return ""  # a photo, a sticker, a location: a message with no words
    if type(value) is not str:
        raise InvalidRecord(f"the message text must be a string, is a {_json_type(value)}")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidRecord(f"text is {len(value)} characters long, more than {MAX_TEXT_LENGTH}")
    return value


# -- the compiled path: the common shapes, decoded and checked by msgspec, encoded at once --
#
# The documented shapes a webhook nearly always has, as msgspec Structs that refuse any
# field they do not name (``forbid_unknown_fields``) and any value of another type: a
# document they accept is decoded and type-checked in one compiled pass, no dict in
# between, every byte of it read (so whatever orjson refuses, they refuse too: invalid
# UTF-8, numbers out of range). Whatever they refuse, and whatever is rarer (receipts of
# follow-ups, unsent messages, unknown bots, every invalid message), takes
# ``normalize_webhook``, which says what is wrong. A property test holds the two together.

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]


class _Shape(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A part of a webhook on the compiled path: exactly these fields, of these types."""


class _WaProfile(_Shape):
    name: str = ""


class _WaContact(_Shape):
    profile: _WaProfile | None = None
    wa_id: str = ""


class _WaBody(_Shape):
    body: _Text | None = None
    preview_url: bool = False


class _WaMedia(_Shape):
    id: str = ""
    mime_type: str = ""
    sha256: str = ""
    caption: _Text | None = None
    filename: str = ""
    animated: bool = False
    voice: bool = False


class _WaContext(_Shape):
    id: str = ""
    # the JSON key is "from"; a Struct field cannot be named so
    sender: str = msgspec.field(default="", name="from")


class _WaMessage(_Shape):
    sender: _Id = msgspec.field(name="from")
    id: _Id
    timestamp: str
    type: str = ""
    text: _WaBody | None = None
    image: _WaMedia | None = None
    video: _WaMedia | None = None
    document: _WaMedia | None = None
    audio: _WaMedia | None = None
    sticker: _WaMedia | None = None
    context: _WaContext | None = None


class _WaStatus(msgspec.Struct, gc=False):
    """A status: dropped unless it names a follow-up (``biz_opaque_callback_data``), which
    the general path reads as a receipt. The platform's other fields (``conversation``,
    ``pricing``, ``errors``) are allowed: a status of no follow-up is dropped whatever
    they hold, as ``_whatsapp_receipt`` drops it."""
    id: str = ""
    status: str = ""
    timestamp: str = ""
    recipient_id: str = ""
    biz_opaque_callback_data: Any = None


class _WaMetadata(_Shape):
    phone_number_id: str
    display_phone_number: str = ""


class _WaValue(_Shape):
    metadata: _WaMetadata | None = None
    messaging_product: str = ""
    contacts: list[_WaContact] = []
    messages: list[_WaMessage] = []
    statuses: list[_WaStatus] = []


class _WaChange(_Shape):
    value: _WaValue | None = None
    field: str = ""


class _WaEntry(_Shape):
    id: str = ""
    changes: list[_WaChange] = []


class _WaWebhook(_Shape):
    entry: list[_WaEntry]
    object: str | None = None


class _Party(_Shape):
    id: _Id


class _Payload(_Shape):
    url: str | None = None


class _Attachment(_Shape):
    type: str = ""
    payload: _Payload | None = None


class _QuickReply(_Shape):
    payload: str = ""


class _ReplyTo(_Shape):
    mid: str = ""


class _Message(_Shape):
    mid: _Id
    text: _Text | None = None
    is_echo: bool = False
    metadata: str | None = None
    attachments: list[_Attachment] = []
    quick_reply: _QuickReply | None = None
    reply_to: _ReplyTo | None = None


class _Item(_Shape):
    sender: _Party
    recipient: _Party
    timestamp: int
    message: _Message


class _Entry(_Shape):
    id: str = ""
    time: int | None = None
    messaging: list[_Item] = []


class _MessagingWebhook(_Shape):
    entry: list[_Entry]
    object: str | None = None


_DECODERS = {"whatsapp": msgspec.json.Decoder(_WaWebhook).decode,
             "facebook": msgspec.json.Decoder(_MessagingWebhook).decode,
             "instagram": msgspec.json.Decoder(_MessagingWebhook).decode}


class EncodedResult(NamedTuple):
    """``NormalizeResult`` with each event already as the ingest stage writes it:
    ``(key, value)``, the user id in UTF-8 and the event's ``to_json()``."""

    events: tuple[tuple[bytes, bytes], ...]
    dropped: int
    errors: tuple[InvalidRecord, ...]
    receipts: tuple[Receipt, ...]


def normalize_encoded(app: str, document: bytes, registry: AccountOwners) -> EncodedResult:
    """``normalize_webhook`` with its events encoded: the common shapes on the compiled
    path, everything else through ``normalize_webhook`` itself."""
    compiled = compiled_normalize(app, document, registry)
    if compiled is not None:
        return compiled
    result = normalize_webhook(app, document, registry)
    return EncodedResult(tuple((event.user_id.encode(), event.to_json()) for event in result.events),
                         result.dropped, tuple(result.errors), tuple(result.receipts))


def compiled_normalize(app: str, document: bytes, registry: AccountOwners) -> EncodedResult | None:
    """The compiled path alone: the result of a document of the common shapes, else None."""
    decode = _DECODERS.get(app)
    if decode is None:
        raise ValueError(f"unknown app {app!r}: expected one of {', '.join(APPS)}")
    try:
        webhook = decode(document)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included
        return None
    if webhook.object is not None and webhook.object != OBJECT_BY_APP[app]:
        return None
    owners = registry.owners(app)
    return _whatsapp_encoded(webhook, owners) if app == "whatsapp" else _messaging_encoded(app, webhook, owners)


def _canonical(event_id: str, app: str, user_id: str, bot_id: str, direction: str, ms: int, text: str
               ) -> tuple[bytes, bytes]:
    """(key, value) of one event: ``MessageEvent(...).to_json()``'s bytes, without the record."""
    return user_id.encode(), orjson.dumps(message_fields(event_id, app, user_id, bot_id, direction, ms, text))


def _whatsapp_encoded(webhook: _WaWebhook, owners: Mapping[str, str]) -> EncodedResult | None:
    """The events of a WhatsApp webhook whose messages are all usable, else None."""
    events, dropped = [], 0
    for entry in webhook.entry:
        for change in entry.changes:
            value = change.value
            if value is None:
                dropped += 1
                continue
            messages, statuses = value.messages, value.statuses
            if not messages and not statuses:
                dropped += 1  # account, template or quality notices: not messages
                continue
            metadata = value.metadata
            bot_id = owners.get(metadata.phone_number_id) if metadata is not None else None
            if bot_id is None:
                return None
            if any(status.biz_opaque_callback_data is not None for status in statuses):
                return None  # a receipt, perhaps: the general path reads it
            dropped += len(statuses)
            for message in messages:
                seconds = message.timestamp  # _epoch_seconds's test, inline: the hot path
                if not (0 < len(seconds) <= _MAX_SECONDS_DIGITS and seconds.isascii() and seconds.isdigit()):
                    return None
                ms = int(seconds) * 1000
                if ms > MAX_TS_MS:
                    return None
                text = message.text
                if text is not None:
                    words = text.body
                else:
                    media = message.image or message.video or message.document
                    words = media.caption if media is not None else None
                events.append(_canonical(message.id, "whatsapp", message.sender, bot_id, "inbound", ms, words or ""))
    return EncodedResult(tuple(events), dropped, (), ())


def _messaging_encoded(app: str, webhook: _MessagingWebhook, owners: Mapping[str, str]) -> EncodedResult | None:
    """The events of a Messenger or Instagram webhook whose items are all usable messages, else None."""
    events, receipts = [], []
    for entry in webhook.entry:
        for item in entry.messaging:
            message = item.message
            ms = item.timestamp
            if not 0 <= ms <= MAX_TS_MS:  # parse_ts's range, inline: the hot path
                return None
            echo = message.is_echo
            user_id, account_id = (item.recipient.id, item.sender.id) if echo else (item.sender.id, item.recipient.id)
            bot_id = owners.get(account_id)
            if bot_id is None:
                return None
            events.append(_canonical(message.mid, app, user_id, bot_id, "outbound" if echo else "inbound", ms,
                                     message.text or ""))
            followup_id = message.metadata
            if echo and followup_id is not None and 0 < len(followup_id) <= MAX_ID_LENGTH:
                receipts.append(Receipt(app=app, kind="sent", user_id=user_id, bot_id=bot_id, ts=ms,
                                        followup_id=followup_id, mids=(message.mid,)))
    return EncodedResult(tuple(events), 0, (), tuple(receipts))
