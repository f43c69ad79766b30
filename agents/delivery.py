"""What goes to the delivery topics: the platform's send-API body and the record around it.

Pure functions and data: no network. A sender (outside Relance, or a later stage) posts
``body`` to the app's send endpoint:

- WhatsApp Cloud API: ``POST /{phone-number-id}/messages``.
- Messenger Send API: ``POST /{page-id}/messages``.
- Instagram Messaging: ``POST /{page-id or ig-user-id}/messages``, the same body shape.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from agents.honesty import FinalText
from schemas import records
from schemas.records import APPS, FollowupRequest

__all__ = ["DeliveryRecord", "delivery_body", "TEXT_LIMITS"]

# What each platform accepts in one text message (Instagram counts UTF-8 bytes).
TEXT_LIMITS = {"whatsapp": 4096, "facebook": 2000, "instagram": 1000}

# Messenger and Instagram know three messaging types: RESPONSE (a reply to the user's
# message), UPDATE (sent on the business's own initiative, inside the standard 24-hour
# messaging window) and MESSAGE_TAG (outside the window, only for the listed tags such as
# HUMAN_AGENT or ACCOUNT_UPDATE, none of which covers re-engagement). A follow-up is sent
# on the bot's own initiative and the rule keeps it within `messaging_window` (24h) of the
# user's last message, so it is an UPDATE. With a messaging_window above 24h the
# platforms would refuse it: there is no tag for this, by design.
_MESSENGER_MESSAGING_TYPE = "UPDATE"


def delivery_body(app: str, user_id: str, text: str) -> dict:
    """The JSON body of the app's send API for one text message to ``user_id``."""
    _check_fits(app, text)
    if app == "whatsapp":
        # Free-form text is allowed inside WhatsApp's 24-hour customer service window,
        # which the rule guarantees; outside it only approved templates would be.
        return {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": user_id,
            "type": "text", "text": {"body": text, "preview_url": False},
        }
    return {
        "recipient": {"id": user_id}, "messaging_type": _MESSENGER_MESSAGING_TYPE,
        "message": {"text": text},
    }


def _check_fits(app: str, text: str) -> None:
    if app not in APPS:
        raise ValueError(f"app {app!r} is not one of {', '.join(APPS)}")
    size = len(text.encode("utf-8")) if app == "instagram" else len(text)
    if size > TEXT_LIMITS[app]:
        raise ValueError(f"a {app} text holds at most {TEXT_LIMITS[app]}, this one is {size}")


@dataclass(frozen=True, slots=True)
class DeliveryRecord(records.DeliveryRecord):
    """The delivery topics' record (``schemas.records.DeliveryRecord``, which
    ``delivery.schema.json`` describes), plus ``replaced``: the generated text was refused
    by the honesty check and the safe template went out instead. Extra fields are allowed
    by the schema, so readers that do not know ``replaced`` still accept the record."""

    replaced: bool = False

    @classmethod
    def for_followup(cls, request: FollowupRequest, final: FinalText, generated_at: int) -> "DeliveryRecord":
        return cls(
            followup_id=request.followup_id, user_id=request.user_id, bot_id=request.bot_id,
            app=request.app, text=final.text, disclosure=final.disclosure,
            body=delivery_body(request.app, request.user_id, final.text),
            generated_at=generated_at, replaced=final.replaced,
        )

    @classmethod
    def from_dict(cls, obj: Any) -> "DeliveryRecord":
        """Validated by ``schemas.records.parse_delivery``; raises InvalidRecord."""
        base = records.parse_delivery(obj)
        replaced = obj.get("replaced", False)
        if not isinstance(replaced, bool):
            raise records.InvalidRecord("replaced must be true or false")
        return cls(**{name: getattr(base, name) for name in _BASE_FIELDS}, replaced=replaced)

    def to_dict(self) -> dict:
        # Named base class: zero-argument super() fails in a slots dataclass on 3.11.
        return {**records.DeliveryRecord.to_dict(self), "replaced": self.replaced}


_BASE_FIELDS = tuple(f.name for f in fields(records.DeliveryRecord))
