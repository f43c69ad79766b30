"""The send APIs' answers, read by their error codes (spec section 9). Pure: no network.

The sender (``agents/sender.py``) posts a delivery record's body and hands what came back
here; ``read_answer`` says what it means for the follow-up:

| verdict | when | what the sender does |
| --- | --- | --- |
| ``sent`` | a 2xx, with the message id the platform gave it | done |
| ``window_closed`` | WhatsApp 131047; Messenger 10 with subcode 2018278 | cancelled, ``window_closed`` |
| ``slow_down`` | throughput limits: 130429, 4, 613, 80007, or a 429 without a code | the account waits, then a retry |
| ``retry`` | WhatsApp's pair rate 131056, codes 1 and 2, any 5xx | a retry with backoff |
| ``token_refused`` | 190 | the bot's sends stop until its token works again |
| ``failed`` | 131026, 551, and every other refusal | failed, reason the code |

A 429 or 5xx is the platform refusing the request, so retrying it cannot send twice. What
the network did (refused before the request left, or lost after) is the transport's to
say (``streams/graphapi.py``): only a request that never left may be retried.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from foundation.settings import Settings

SENT, WINDOW_CLOSED, SLOW_DOWN, RETRY, TOKEN_REFUSED, FAILED = (
    "sent", "window_closed", "slow_down", "retry", "token_refused", "failed")
# What the transport says when no answer came: the request never left (safe to try
# again), or it left and its fate is unknown (never repeated).
NOT_REACHED, UNKNOWN = "not_reached", "unknown"

WHATSAPP_WINDOW_CLOSED = 131047
MESSENGER_WINDOW_CLOSED = (10, 2018278)        # code, error_subcode
THROUGHPUT_CODES = frozenset({130429, 4, 613, 80007})
PAIR_RATE_CODES = frozenset({131056})          # one user messaged too often: that send only
UNDELIVERABLE_CODES = frozenset({131026, 551})
TOKEN_CODES = frozenset({190})
TEMPORARY_CODES = frozenset({1, 2})            # "API unknown", "API service": platform trouble
# The codes the metrics name; any other becomes "other" (a bounded label set).
KNOWN_CODES = frozenset({WHATSAPP_WINDOW_CLOSED, MESSENGER_WINDOW_CLOSED[0]}) | THROUGHPUT_CODES \
    | PAIR_RATE_CODES | UNDELIVERABLE_CODES | TOKEN_CODES | TEMPORARY_CODES | frozenset({100})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an answer of a send API means. ``code``: the platform's error code, or
    ``http_<status>`` when it gave none. ``message_id``: the accepted message's id.
    ``retry_after_ms``: the platform's own hint, when it gave one."""

    kind: str
    code: str | None = None
    message_id: str | None = None
    retry_after_ms: int | None = None


def read_answer(app: str, status: int, payload: Any, retry_after_ms: int | None = None) -> Verdict:
    """The verdict of one HTTP answer: its status and its decoded JSON body (anything)."""
    if 200 <= status < 300:
        return Verdict(SENT, message_id=message_id(app, payload))
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if type(code) is not int:
        return _without_code(status, retry_after_ms)
    subcode = error.get("error_subcode")
    shown = str(code)
    if code in TOKEN_CODES:
        return Verdict(TOKEN_REFUSED, shown)
    if code == WHATSAPP_WINDOW_CLOSED or (code, subcode) == MESSENGER_WINDOW_CLOSED:
        return Verdict(WINDOW_CLOSED, shown)
    if code in THROUGHPUT_CODES:
        return Verdict(SLOW_DOWN, shown, retry_after_ms=retry_after_ms)
    if code in PAIR_RATE_CODES or code in TEMPORARY_CODES or status >= 500:
        return Verdict(RETRY, shown, retry_after_ms=retry_after_ms)
    return Verdict(FAILED, shown)


def _without_code(status: int, retry_after_ms: int | None) -> Verdict:
    if status == 429:
        return Verdict(SLOW_DOWN, "http_429", retry_after_ms=retry_after_ms)
    if status >= 500:
        return Verdict(RETRY, "http_5xx", retry_after_ms=retry_after_ms)
    return Verdict(FAILED, f"http_{status}")


def message_id(app: str, payload: Any) -> str | None:
    """The accepted message's id: WhatsApp ``messages[0].id``, Messenger/Instagram ``message_id``."""
    if not isinstance(payload, dict):
        return None
    if app == "whatsapp":
        messages = payload.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        found = first.get("id") if isinstance(first, dict) else None
    else:
        found = payload.get("message_id")
    return found if isinstance(found, str) and found else None


def code_label(code: str | None) -> str:
    """The metric label of an error code: the known codes by number, ``http_*``, else ``other``."""
    if code is None:
        return "none"
    if code.startswith("http_"):
        return code if code in ("http_429", "http_5xx") else "http_4xx"
    return code if code.isdigit() and int(code) in KNOWN_CODES else "other"


def backoff_ms(tries: int, base_ms: int, ceiling_ms: int, rng: random.Random) -> int:
    """Exponential backoff after ``tries`` failed tries, with jitter (half to all of it),
    so that the requests of one outage do not all come back at once."""
    ceiling = min(ceiling_ms, base_ms * 2 ** max(0, tries - 1))
    return int(ceiling * (0.5 + rng.random() / 2))


def retry_delay_ms(verdict: Verdict, tries: int, base_ms: int, ceiling_ms: int, rng: random.Random) -> int:
    """How long a refused send waits: the platform's hint when it gave one, else the backoff."""
    if verdict.retry_after_ms is not None:
        return max(verdict.retry_after_ms, 0)
    return backoff_ms(tries, base_ms, ceiling_ms, rng)


def send_path(version: str, app: str, account_id: str) -> str:
    """The send endpoint's path: WhatsApp ``/{version}/{phone_number_id}/messages``,
    Messenger and Instagram ``/{version}/me/messages`` (the token names the page or account)."""
    return f"/{version}/{account_id}/messages" if app == "whatsapp" else f"/{version}/me/messages"


def send_rate(settings: Settings, app: str, account_id: str) -> float:
    """Messages a second the account may send: its own setting, else its app's standard."""
    own = dict(settings.send_rates).get(account_id)
    if own is not None:
        return own
    return {"whatsapp": settings.whatsapp_send_rate, "facebook": settings.facebook_send_rate,
            "instagram": settings.instagram_send_rate}[app]


def rate_window(rate: float, slack_ms: int) -> tuple[int, int]:
    """(sends, window ms) for the shared limiter: ``floor(rate)`` sends per second plus the
    slack; below one a second, one send per ``1/rate`` seconds plus the slack."""
    if rate >= 1:
        return int(rate), 1000 + slack_ms
    return 1, math.ceil(1000 / rate) + slack_ms


class Token:
    """A bot's access token, read when sending. Its repr never shows it; ``fingerprint``
    tells two tokens apart (a rotated one) without keeping the secret around."""

    __slots__ = ("_value", "fingerprint")

    def __init__(self, value: str) -> None:
        self._value = value
        self.fingerprint = hashlib.sha256(value.encode()).hexdigest()[:16]

    def bearer(self) -> str:
        return f"Bearer {self._value}"

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__


class _Closed(NamedTuple):
    """A (bot, app) whose token the platform refused: which token, the last probe, and when."""

    refused: str            # fingerprint of the refused token
    probed: str | None      # fingerprint of the token of the last probe
    probed_at: int
    refused_at: int


class TokenGate:
    """Which bots' tokens a platform refused (190), so that their sends stop until it works.

    A refusal closes the gate of its (bot, app) and remembers the refused token's
    fingerprint. While it is closed, one send at a time goes out as a probe: at once when
    the token is no longer the refused one (rotated in its file or variable), else once
    every ``probe_ms`` (the platform may have restored it). An accepted send opens it.
    Everything else waits, and nothing is lost: the caller keeps those sends for later.
    A send that passed the gate before a refusal must not leave with the refused token
    after it (``refused_since``): calls run concurrently, and the refusal may come while
    one waits for its rate slot.
    """

    def __init__(self, probe_ms: int) -> None:
        self.probe_ms = probe_ms
        self._closed: dict[tuple[str, str], _Closed] = {}

    def may_send(self, bot_id: str, app: str, token: Token, now_ms: int) -> bool:
        closed = self._closed.get((bot_id, app))
        if closed is None:
            return True
        fresh = token.fingerprint not in (closed.refused, closed.probed)
        if not fresh and now_ms - closed.probed_at < self.probe_ms:
            return False
        self._closed[(bot_id, app)] = closed._replace(probed=token.fingerprint, probed_at=now_ms)
        return True

    def refused(self, bot_id: str, app: str, token: Token, now_ms: int) -> None:
        self._closed[(bot_id, app)] = _Closed(token.fingerprint, token.fingerprint, now_ms, now_ms)

    def accepted(self, bot_id: str, app: str) -> None:
        self._closed.pop((bot_id, app), None)

    def refused_since(self, bot_id: str, app: str, passed_ms: int) -> bool:
        """Whether the platform refused the token at or after ``passed_ms``, when a send
        passed the gate (the same millisecond counts: the send waits, nothing is lost)."""
        closed = self._closed.get((bot_id, app))
        return closed is not None and closed.refused_at >= passed_ms

    def is_closed(self, bot_id: str, app: str) -> bool:
        return (bot_id, app) in self._closed
