"""A local stand-in for Meta's Graph API send endpoints, with fault modes and receipts back.

It speaks the three send APIs of spec section 9 (WhatsApp Cloud API
``POST /{version}/{phone_number_id}/messages``; Messenger and Instagram
``POST /{version}/me/messages``, the page or account named by its token), answers with
real-shaped message ids and errors, and, for each message it accepts, posts the
platform's signed webhooks back (``X-Hub-Signature-256``, HMAC-SHA256 of the body under
the app secret) to ``{callback_url}/webhooks/{app}``: WhatsApp ``statuses`` (sent,
delivered, read, carrying ``biz_opaque_callback_data``), Messenger and Instagram echoes
(carrying ``message.metadata``), ``delivery`` and ``read``. The demo uses it, so that a
newcomer sees follow-ups accepted, delivered and read; the tests use its fault modes.

It counts every request it receives per account and wall-clock second, and every message
it accepts per follow-up id, so a test can check "never twice" and "never over the rate"
where the platform would. It keeps its own per-second limit per account, as the
platforms do, answering over it with their throughput error.

Modes (``POST /_control {"mode": ..., "fail_times": n}`` switches a running server; with
``fail_times`` the fault is answered n times, then ``ok``):

- ``ok``; ``slow`` (accepts, and answers after ``slow_delay`` seconds: past the sender's
  timeout the message is accepted but the sender never hears it);
- ``throughput`` (130429 / 613), ``pair_rate`` (131056), ``too_many`` (HTTP 429 with a
  ``Retry-After`` hint), ``server_error`` (HTTP 503, code 2);
- ``window_closed`` (131047 / 10 with subcode 2018278), ``undeliverable`` (131026 / 551),
  ``token_invalid`` (190);
- ``drop`` (accepts the message, then closes the connection without an answer);
- ``failed_status`` (accepts, then a WhatsApp ``failed`` status, 131026).

As a process (prints ``ready <base_url>`` once it listens)::

    python -m devstack.fake_graph --registry deploy/bots.toml --callback-url http://127.0.0.1:8080

Tokens are those the registry's references name in this process's environment; the app
secret is ``RELANCE_APP_SECRET`` (the first, during a rotation).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp
import orjson
from aiohttp import web

from devstack.loopback import LoopbackServer
from domain.signature import SIGNATURE_HEADER, sign
from schemas.registry import BotRegistry

ERROR_MODES = ("throughput", "pair_rate", "too_many", "server_error", "window_closed", "undeliverable", "token_invalid")
MODES = ("ok", "slow", "drop", "failed_status", *ERROR_MODES)
# The platforms' own throughput per account, by default (spec section 9; Meta's rate-limit pages).
DEFAULT_LIMITS = {"whatsapp": 80, "facebook": 300, "instagram": 300}
WEBHOOK_OBJECT = {"whatsapp": "whatsapp_business_account", "facebook": "page", "instagram": "instagram"}
APP_ID = 1517776481860111  # the app that sends, as echoes name it


@dataclass(frozen=True, slots=True)
class FakeAccount:
    """A WhatsApp number, page or Instagram account, and the token that may send from it."""

    app: str
    account_id: str
    token: str


def accounts_from_registry(registry: BotRegistry, environ: Mapping[str, str] = os.environ) -> list[FakeAccount]:
    """Each bot's sending account (the first listed per app) with the token its reference
    names here, read as the sender reads it (``env:`` here; ``file:`` from the file)."""
    found = []
    for bot in registry:
        for app, ref in bot.tokens.items():
            if ref.source == "env":
                token = environ.get(ref.name, "").strip()
            else:
                try:
                    with open(ref.name, encoding="utf-8") as handle:
                        token = handle.read().strip()
                except OSError:
                    token = ""
            account = bot.sending_account(app)
            if token and account:
                found.append(FakeAccount(app, account, token))
    return found


class FakeGraph(LoopbackServer):
    """The send APIs on 127.0.0.1, with counters, fault modes and webhooks back."""

    def __init__(self, accounts: list[FakeAccount], *, port: int = 0, callback_url: str | None = None,
                 app_secret: str = "", mode: str = "ok", fail_times: int | None = None, slow_delay: float = 5.0,
                 limits: Mapping[str, int] | None = None, receipt_delay: float = 0.1, retry_after: int = 1) -> None:
        super().__init__(port)
        self.callback_url = callback_url.rstrip("/") if callback_url else None
        self.app_secret = app_secret
        self.slow_delay = slow_delay
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.receipt_delay = receipt_delay
        self.retry_after = retry_after
        self.set_mode(mode, fail_times)
        # WhatsApp names the number in the path (one token may serve many); Messenger and
        # Instagram post to /me, and the page or account is the token's.
        self._whatsapp = {(account.account_id, account.token): account for account in accounts if account.app == "whatsapp"}
        self._by_token = {account.token: account for account in accounts if account.app != "whatsapp"}
        self.requests = 0
        self.accepted: collections.Counter[str] = collections.Counter()           # follow-up id -> messages
        self.per_second: collections.Counter[tuple[str, str, int]] = collections.Counter()  # (app, account, s) -> requests
        self.answers: collections.Counter[str] = collections.Counter()            # what it answered
        self.first_accepted_at: float | None = None   # wall seconds, for rates measured here
        self.last_accepted_at: float | None = None
        self.webhooks_posted = 0
        self.webhook_failures = 0
        self.received: collections.deque[tuple[str, Any]] = collections.deque(maxlen=10_000)  # (path, body)
        self._tasks: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None

    def set_mode(self, mode: str, fail_times: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}, expected one of {', '.join(MODES)}")
        self.mode = mode
        self.faults_left = fail_times  # None: the fault lasts until the mode changes

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{account}/messages", self._send)
        app.router.add_get("/_control", self._stats)
        app.router.add_post("/_control", self._control)

    async def start(self) -> None:
        await super().start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        """Stops listening; what it counted stays (``start`` again on the same port)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        await super().stop()

    # -- what tests ask ------------------------------------------------------------------

    def accepted_per_second(self) -> float:
        """Messages accepted a second, from the first to the last."""
        accepted = sum(self.accepted.values())
        span = (self.last_accepted_at or 0) - (self.first_accepted_at or 0)
        return (accepted - 1) / span if accepted > 1 and span > 0 else 0.0

    def max_per_second(self, app: str, account_id: str) -> int:
        """The most requests received for the account in one wall-clock second."""
        return max((n for (a, acct, _), n in self.per_second.items() if (a, acct) == (app, account_id)), default=0)

    def stats(self) -> dict:
        return {
            "mode": self.mode, "faults_left": self.faults_left, "requests": self.requests,
            "accepted": dict(self.accepted), "answers": dict(self.answers),
            "per_second": [[app, account, second, n] for (app, account, second), n in sorted(self.per_second.items())],
            "webhooks_posted": self.webhooks_posted, "webhook_failures": self.webhook_failures,
            "last": list(self.received)[-1:],
        }

    # -- the send APIs -------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        arrived = time.time()
        path_account = request.match_info["account"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        account = self._account(path_account, token)
        if account is None:
            return self._error("token_invalid", "facebook" if path_account == "me" else "whatsapp")
        self.per_second[(account.app, account.account_id, int(arrived))] += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        self.received.append((request.path, body))
        recipient, followup_id, text = _fields(account.app, body)
        if not recipient or not text:
            return self._error("invalid", account.app)
        mode = self._current_mode()
        if mode in ERROR_MODES:
            return self._error(mode, account.app)
        if self.per_second[(account.app, account.account_id, int(arrived))] > self.limits[account.app]:
            return self._error("throughput", account.app)
        message_id = _message_id(account, recipient)
        if followup_id:
            self.accepted[followup_id] += 1
        self.first_accepted_at = self.first_accepted_at or arrived
        self.last_accepted_at = arrived
        self._receipts_later(account, recipient, message_id, followup_id, text, int(arrived * 1000),
                             failed=mode == "failed_status")
        if mode == "drop":
            self.answers["drop"] += 1
            request.transport.close()  # accepted, and the answer lost on the way
            return web.Response()
        if mode == "slow":  # accepted, and the answer late: past the sender's timeout, never heard
            await asyncio.sleep(self.slow_delay)
        self.answers["accepted"] += 1
        if account.app == "whatsapp":
            return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                                      "messages": [{"id": message_id, "message_status": "accepted"}]})
        return web.json_response({"recipient_id": recipient, "message_id": message_id})

    def _account(self, path_account: str, token: str) -> FakeAccount | None:
        if path_account == "me":
            return self._by_token.get(token)
        return self._whatsapp.get((path_account, token))

    def _current_mode(self) -> str:
        if self.mode == "ok" or self.faults_left is None:
            return self.mode
        if self.faults_left <= 0:
            return "ok"
        self.faults_left -= 1
        return self.mode

    def _error(self, kind: str, app: str) -> web.Response:
        self.answers[kind] += 1
        whatsapp = app == "whatsapp"
        status, code, subcode, message = {
            "throughput": (400, 130429 if whatsapp else 613, None, "Rate limit hit"),
            "pair_rate": (400, 131056 if whatsapp else 613, None, "(Business Account, Consumer Account) pair rate limit hit"),
            "too_many": (429, 130429 if whatsapp else 80007, None, "Too many requests"),
            "server_error": (503, 2, None, "Service temporarily unavailable"),
            "window_closed": (400, 131047, None, "Re-engagement message") if whatsapp
            else (400, 10, 2018278, "This message is sent outside of allowed window."),
            "undeliverable": (400, 131026 if whatsapp else 551, None, "Message undeliverable"),
            "token_invalid": (401, 190, None, "Error validating access token: Session has expired"),
            "invalid": (400, 100, None, "Invalid parameter"),
        }[kind]
        error: dict[str, Any] = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code,
                                 "fbtrace_id": "A" + secrets.token_urlsafe(16)}
        if subcode is not None:
            error["error_subcode"] = subcode
        if whatsapp:
            error["error_data"] = {"messaging_product": "whatsapp", "details": message}
        headers = {"Retry-After": str(self.retry_after)} if kind == "too_many" else {}
        return web.json_response({"error": error}, status=status, headers=headers)

    # -- receipts back -------------------------------------------------------------------

    def _receipts_later(self, account: FakeAccount, recipient: str, message_id: str, followup_id: str | None,
                        text: str, at_ms: int, failed: bool) -> None:
        if self.callback_url is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._post_receipts(account, recipient, message_id, followup_id, text, at_ms, failed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_receipts(self, account: FakeAccount, recipient: str, message_id: str, followup_id: str | None,
                             text: str, at_ms: int, failed: bool) -> None:
        for step, document in enumerate(_receipt_webhooks(account, recipient, message_id, followup_id, text, at_ms, failed)):
            await asyncio.sleep(self.receipt_delay * (1 if step == 0 else 2))
            await self._post(account.app, orjson.dumps(document))

    async def _post(self, app: str, body: bytes) -> None:
        """Signed as Meta signs; tried again a few times, as Meta does, when refused."""
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self.app_secret)}
        for attempt in range(5):
            try:
                async with self._http.post(f"{self.callback_url}/webhooks/{app}", data=body, headers=headers) as answer:
                    if answer.status == 200:
                        self.webhooks_posted += 1
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2 * 2 ** attempt)
        self.webhook_failures += 1

    # -- control ---------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        order = await request.json()
        self.set_mode(order["mode"], order.get("fail_times"))
        if "slow_delay" in order:
            self.slow_delay = float(order["slow_delay"])
        return web.json_response(self.stats())


def _fields(app: str, body: Any) -> tuple[str | None, str | None, str | None]:
    """(recipient, the echoed follow-up id, text) of a send body, None where absent."""
    if not isinstance(body, dict):
        return None, None, None
    if app == "whatsapp":
        text = body.get("text")
        return body.get("to"), body.get("biz_opaque_callback_data"), text.get("body") if isinstance(text, dict) else None
    recipient, message = body.get("recipient"), body.get("message")
    if not isinstance(recipient, dict) or not isinstance(message, dict):
        return None, None, None
    return recipient.get("id"), message.get("metadata"), message.get("text")


def _message_id(account: FakeAccount, recipient: str) -> str:
    """Ids shaped like the platforms': ``wamid.HBgL...``, ``m_...``, Instagram's ``aWdf...``."""
    if account.app == "whatsapp":
        return "wamid.HBgL" + base64.b64encode(recipient.encode()[:12] + secrets.token_bytes(18)).decode().rstrip("=")
    if account.app == "facebook":
        return "m_" + base64.urlsafe_b64encode(secrets.token_bytes(62)).decode().rstrip("=")
    item = f"ig_message_item:1:IGMessageThread:{account.account_id}:{secrets.randbelow(10 ** 38)}"
    return base64.b64encode(item.encode()).decode().rstrip("=")


def _receipt_webhooks(account: FakeAccount, recipient: str, message_id: str, followup_id: str | None,
                      text: str, at_ms: int, failed: bool) -> list[dict]:
    """The webhooks the platform posts after accepting one message, in order."""
    if account.app == "whatsapp":
        kinds = ("sent", "failed") if failed else ("sent", "delivered", "read")
        return [_whatsapp_status(account, recipient, message_id, followup_id, kind, at_ms + step * 1000)
                for step, kind in enumerate(kinds)]
    echo = {"sender": {"id": account.account_id}, "recipient": {"id": recipient}, "timestamp": at_ms,
            "message": {"mid": message_id, "is_echo": True, "app_id": APP_ID, "text": text,
                        **({"metadata": followup_id} if followup_id else {})}}
    by_user = {"sender": {"id": recipient}, "recipient": {"id": account.account_id}}
    if account.app == "facebook":
        later = [{**by_user, "timestamp": at_ms + 500, "delivery": {"mids": [message_id], "watermark": at_ms}},
                 {**by_user, "timestamp": at_ms + 1500, "read": {"watermark": at_ms}}]
    else:
        later = [{**by_user, "timestamp": at_ms + 1500, "read": {"mid": message_id}}]
    return [_messaging_webhook(account, item) for item in [echo, *later]]


def _whatsapp_status(account: FakeAccount, recipient: str, message_id: str, followup_id: str | None,
                     kind: str, at_ms: int) -> dict:
    status: dict[str, Any] = {"id": message_id, "status": kind, "timestamp": str(at_ms // 1000), "recipient_id": recipient}
    if followup_id:
        status["biz_opaque_callback_data"] = followup_id
    if kind == "failed":
        status["errors"] = [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                             "error_data": {"details": "Message Undeliverable."}}]
    elif kind != "read":
        status["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}
    return {"object": WEBHOOK_OBJECT["whatsapp"], "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": account.account_id},
        "statuses": [status]}}]}]}


def _messaging_webhook(account: FakeAccount, item: dict) -> dict:
    return {"object": WEBHOOK_OBJECT[account.app],
            "entry": [{"id": account.account_id, "time": item["timestamp"], "messaging": [item]}]}


# -- as a process ----------------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> None:
    registry = BotRegistry.load(args.registry)
    secret = os.environ.get("RELANCE_APP_SECRET", "").split(",")[0].strip()
    limits = {app: getattr(args, f"{app}_limit") for app in DEFAULT_LIMITS if getattr(args, f"{app}_limit")}
    fake = FakeGraph(accounts_from_registry(registry), port=args.port, callback_url=args.callback_url,
                     app_secret=secret, mode=args.mode, slow_delay=args.slow_delay, limits=limits,
                     receipt_delay=args.receipt_delay)
    await fake.serve_until_signalled()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake of Meta's send APIs that posts receipts back.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--registry", default="deploy/bots.toml", help="bots, accounts and token references")
    parser.add_argument("--callback-url", help="where the webhooks go: {url}/webhooks/{app} (none: no receipts)")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--slow-delay", type=float, default=5.0, help="seconds the slow mode waits")
    parser.add_argument("--receipt-delay", type=float, default=0.1, help="seconds before the first receipt")
    for app, limit in DEFAULT_LIMITS.items():
        parser.add_argument(f"--{app}-limit", type=int, help=f"messages a second per {app} account (default {limit})")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
