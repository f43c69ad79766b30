"""The last-moment check (spec section 3): why a follow-up must not leave now, if anything.

Between the decision and the hand-over (to a delivery topic, or to an app's send API), a
request is cancelled when anything that would have stopped it happened in between. The
generator asks before and after writing the text; the sender asks right before the send.
What the stores say of the pair at that moment is a ``PairNow``; reading it is the
plumbing's job (``streams/lastcheck.py``), deciding is this module's.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.records import FollowupRequest


@dataclass(frozen=True, slots=True)
class PairNow:
    """The pair as the stores hold it right now."""

    published: bool                 # the ledger still has the request: the user was not erased
    killed: bool                    # a kill switch covers the bot, the app, or everything
    last_inbound_ts: int | None     # the pair's latest inbound message, if any is known


def cancel_reason(request: FollowupRequest, pair: PairNow, now: int | None, messaging_window: int) -> str | None:
    """The reason to cancel (a ``schemas.records.CANCEL_REASONS`` word), or None to go on,
    for a follow-up that would leave at ``now`` (wall ms). Erasure first: once erased,
    nothing else about the user may be read or said.

    ``now`` is None in event mode (replays, simulations): the stream's clock lives in the
    engine, so only the decision judged M there; the wall clock would close every window."""
    if not pair.published:
        return "erased"
    if pair.killed:
        return "killed"
    if pair.last_inbound_ts is not None and pair.last_inbound_ts > request.due_ts:
        return "user_returned"
    if now is not None and now - request.last_inbound_ts > messaging_window:  # after an outage or a long retry
        return "window_closed"
    return None
