"""What goes to the delivery topics: the platform's send-API body and the record around it.

Pure functions and data: no network. The sender (``agents/sender.py``) posts ``body`` to
the app's send endpoint (spec section 9):

- WhatsApp Cloud API: ``POST /{version}/{phone-number-id}/messages``.
- Messenger Send API and Instagram Messaging: ``POST /{version}/me/messages``, one body shape.

Each body carries the follow-up id where the platform echoes it back, so that receipts
and echoes find their follow-up: ``biz_opaque_callback_data`` on WhatsApp (in its
``statuses`` webhooks), ``message.metadata`` on Messenger and Instagram (in the echo).
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


def delivery_body(app: str, user_id: str, text: str, followup_id: str) -> dict:
    """The JSON body of the app's send API for one text message to ``user_id``, carrying
    ``followup_id`` where the platform echoes it back."""
    _check_fits(app, text)
    if len(followup_id) > records.ECHO_FIELD_LIMIT[app]:
        raise ValueError(f"a {app} send echoes at most {records.ECHO_FIELD_LIMIT[app]} characters")
    if app == "whatsapp":
        # Free-form text is allowed inside WhatsApp's 24-hour customer service window,
        # which the rule guarantees; outside it only approved templates would be.
        return {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": user_id,
            "type": "text", "text": {"body": text, "preview_url": False},
            "biz_opaque_callback_data": followup_id,
        }
    return {
        "recipient": {"id": user_id}, "messaging_type": _MESSENGER_MESSAGING_TYPE,
        "message": {"text": text, "metadata": followup_id},
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
        body=delivery_body(request.app, request.user_id, final.text, request.followup_id),
        generated_at=generated_at, replaced=final.replaced, due_ts=request.due_ts,
        last_inbound_ts=request.last_inbound_ts, inbound_in_window=request.inbound_in_window,
    )
