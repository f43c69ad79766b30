"""What goes to the delivery topics: the platform's send-API body and the record around it.

Pure functions and data: no network. A sender (outside Relance, or a later stage) posts
``body`` to the app's send endpoint:

- WhatsApp Cloud API: ``POST /{phone-number-id}/messages``.
- Messenger Send API: ``POST /{page-id}/messages``.
- Instagram Messaging: ``POST /{page-id or ig-user-id}/messages``, the same body shape.
"""
from __future__ import annotations

from domain.honesty import FinalText
from schemas import records
from schemas.records import APPS, FollowupRequest

__all__ = ["delivery_record", "delivery_body", "TEXT_LIMITS"]

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


def delivery_record(request: FollowupRequest, final: FinalText, generated_at: int) -> records.DeliveryRecord:
    """The delivery topic's record of ``request``, with the text the honesty check let out."""
    return records.DeliveryRecord(
        followup_id=request.followup_id, user_id=request.user_id, bot_id=request.bot_id,
        app=request.app, text=final.text, disclosure=final.disclosure,
        body=delivery_body(request.app, request.user_id, final.text),
        generated_at=generated_at, replaced=final.replaced,
    )
