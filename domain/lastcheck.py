"""The last-moment check (spec section 3): why a follow-up must not leave now, if anything.

Between the decision and the hand-over (to a delivery topic, or to an app's send API), a
request is cancelled when anything that would have stopped it happened in between. The
generator asks before and after writing the text; the sender asks right before the send.
What the stores say of the pair at that moment is a ``PairNow``; reading it is the
plumbing's job (``streams/lastcheck.py``), deciding is this module's.

The user's safety facts (opt-outs, age, distress) reach the stores through a mirror the
context stage keeps from the ordered stream (``agents/context.py``), encoded here.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from domain.state import SafetyFacts
from schemas.records import FollowupRequest


@dataclass(frozen=True, slots=True)
class PairNow:
    """The pair as the stores hold it right now."""

    published: bool                 # the ledger still has the request: the user was not erased
    killed: bool                    # a kill switch covers the bot, the app, or everything
    last_inbound_ts: int | None     # the pair's latest inbound message, if any is known
    opted_out: bool = False         # the user opted out of this bot, or of all bots
    minor: bool = False             # known as a minor, or of unknown age where unknown_age is deny
    distress_until: int = -1        # the end of the user's distress cool-off (ms), -1 if none


def window_closed(last_inbound_ts: int, leaves_at: int | None, messaging_window: int) -> bool:
    """A follow-up leaving at ``leaves_at`` would be more than M after the pair's latest
    inbound message (spec section 3). ``leaves_at`` None is event mode: never here."""
    return leaves_at is not None and leaves_at - last_inbound_ts > messaging_window


def cancel_reason(request: FollowupRequest, pair: PairNow, now: int | None, messaging_window: int) -> str | None:
    """The reason to cancel (a ``schemas.records.CANCEL_REASONS`` word), or None to go on,
    for a follow-up that would leave at ``now`` (wall ms). Erasure first: once erased,
    nothing else about the user may be read or said.

    ``now`` is None in event mode (replays, simulations): the stream's clock lives in the
    engine, so the follow-up is taken to leave at its send time, and only the decision
    judged M there; the wall clock would close every window."""
    if not pair.published:
        return "erased"
    if pair.killed:
        return "killed"
    if pair.last_inbound_ts is not None and pair.last_inbound_ts > request.due_ts:
        return "user_returned"
    if pair.opted_out:
        return "opted_out"
    if pair.minor:
        return "minor"
    # Signs of distress seen since the decision: a cool-off that covers the send time the
    # engine chose (the message arrived late) or the moment it would leave now.
    leaves = request.due_ts if now is None else min(now, request.due_ts)
    if leaves < pair.distress_until:
        return "distress"
    latest_inbound = max(request.last_inbound_ts, pair.last_inbound_ts or -1)
    if window_closed(latest_inbound, now, messaging_window):  # after an outage or a long retry
        return "window_closed"
    return None


def mirror_of(facts: SafetyFacts, unknown_age: str) -> bytes:
    """A user's safety facts as the context stage stores them, with whether age stops
    follow-ups under this deployment's ``unknown_age`` (readers have no settings)."""
    return orjson.dumps({**facts.facts_dict(), "age_stops": facts.age_stops(unknown_age)})


def facts_of(mirror: bytes | None) -> tuple[SafetyFacts, bool]:
    """The facts a ``mirror_of`` holds, and whether age stops follow-ups; a user with no
    mirror has the defaults."""
    if mirror is None:
        return SafetyFacts(), False
    data = orjson.loads(mirror)
    return SafetyFacts(**SafetyFacts.facts_from(data)), data["age_stops"]


def pair_now_of(request: FollowupRequest, published: bool, killed: bool, last_inbound_ts: int | None,
                mirror: bytes | None) -> PairNow:
    """What the stores' answers mean for the request's pair."""
    facts, age_stops = facts_of(mirror)
    return PairNow(published=published, killed=killed, last_inbound_ts=last_inbound_ts,
                   opted_out=facts.opted_out(request.bot_id), minor=age_stops,
                   distress_until=facts.distress_until)
