"""The send-API client (streams/graphapi.py) against the project's fake Graph API
(devstack/fake_graph.py): every answer and every network fault read as spec section 9 says,
and the receipts the fake posts back are signed and name their follow-up."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac

import pytest
from aiohttp import web

from devstack.fake_graph import FakeAccount, FakeGraph, accounts_from_registry
from devstack.localstack import free_port
from domain.delivery import delivery_body
from domain.normalize import normalize_webhook
from domain.sendapi import FAILED, NOT_REACHED, RETRY, SENT, SLOW_DOWN, TOKEN_REFUSED, UNKNOWN, WINDOW_CLOSED, Token
from schemas.registry import BotRegistry, TokenRef
from streams.graphapi import GraphAPI, read_token
from tests.waiting import async_wait_for

WA, PAGE, IG = "106540352242922", "112233445566778", "17841400000000001"  # maestro's, in deploy/bots.toml
ACCOUNTS = [FakeAccount("whatsapp", WA, "wa-token"), FakeAccount("facebook", PAGE, "page-token"),
            FakeAccount("instagram", IG, "ig-token")]
TOKENS = {"whatsapp": Token("wa-token"), "facebook": Token("page-token"), "instagram": Token("ig-token")}
SECRET = "app-secret"


def body(app: str, followup_id: str = "f-1") -> dict:
    return delivery_body(app, "16505551234" if app == "whatsapp" else "6945512345678901", "Hello!", followup_id)


async def send(graph: GraphAPI, app: str, followup_id: str = "f-1"):
    account = {"whatsapp": WA, "facebook": PAGE, "instagram": IG}[app]
    return (await graph.send(app, account, TOKENS[app], body(app, followup_id))).verdict


@contextlib.asynccontextmanager
async def fake_and_client(**options):
    """The fake and a client of it, made in the test's own event loop."""
    async with FakeGraph(ACCOUNTS, **{"slow_delay": 1.0, **options}) as fake:
        graph = GraphAPI(fake.base_url, "v26.0", timeout_s=0.5)
        try:
            yield fake, graph
        finally:
            await graph.close()


@pytest.mark.parametrize("app", ["whatsapp", "facebook", "instagram"])
async def test_an_accepted_message_comes_back_with_a_real_shaped_id(app):
    async with fake_and_client() as (fake, graph):
        verdict = await send(graph, app)
    assert verdict.kind == SENT
    prefix = {"whatsapp": "wamid.", "facebook": "m_", "instagram": "aWdf"}[app]
    assert verdict.message_id.startswith(prefix)
    assert fake.accepted == {"f-1": 1}
    path = f"/v26.0/{WA}/messages" if app == "whatsapp" else "/v26.0/me/messages"
    assert list(fake.received) == [(path, body(app))]


@pytest.mark.parametrize("mode, whatsapp, messenger", [
    ("throughput", (SLOW_DOWN, "130429"), (SLOW_DOWN, "613")),
    ("pair_rate", (RETRY, "131056"), (SLOW_DOWN, "613")),
    ("too_many", (SLOW_DOWN, "130429"), (SLOW_DOWN, "80007")),
    ("server_error", (RETRY, "2"), (RETRY, "2")),
    ("window_closed", (WINDOW_CLOSED, "131047"), (WINDOW_CLOSED, "10")),
    ("undeliverable", (FAILED, "131026"), (FAILED, "551")),
    ("token_invalid", (TOKEN_REFUSED, "190"), (TOKEN_REFUSED, "190")),
])
async def test_each_fault_is_an_error_code_the_sender_tells_apart(mode, whatsapp, messenger):
    async with fake_and_client(mode=mode) as (fake, graph):
        for app, expected in (("whatsapp", whatsapp), ("facebook", messenger), ("instagram", messenger)):
            verdict = await send(graph, app)
            assert (verdict.kind, verdict.code) == expected, app
    assert fake.accepted == {}


async def test_a_retry_hint_is_read_from_the_answer():
    async with fake_and_client(mode="too_many") as (fake, graph):
        assert (await send(graph, "instagram")).retry_after_ms == 1000


async def test_an_answer_lost_after_the_platform_took_the_message_is_unknown():
    async with fake_and_client(mode="drop") as (fake, graph):
        assert (await send(graph, "whatsapp")).kind == UNKNOWN
        fake.set_mode("slow")  # 1 s, past the client's 0.5 s: accepted, never heard
        assert (await send(graph, "facebook", "f-2")).kind == UNKNOWN
        await async_wait_for(lambda: fake.accepted == {"f-1": 1, "f-2": 1}, 5, "both accepted at the fake")


async def test_a_platform_that_cannot_be_reached_was_not_reached():
    graph = GraphAPI(f"http://127.0.0.1:{free_port()}", "v26.0", timeout_s=0.5)
    try:
        assert (await send(graph, "whatsapp")).kind == NOT_REACHED
    finally:
        await graph.close()


async def test_an_unknown_token_is_refused_and_a_fault_can_end_after_n_times():
    async with fake_and_client() as (fake, graph):
        assert (await graph.send("whatsapp", WA, Token("stolen"), body("whatsapp"))).verdict.kind == TOKEN_REFUSED
        fake.set_mode("server_error", fail_times=2)
        assert [(await send(graph, "whatsapp", f"f-{i}")).kind for i in range(3)] == [RETRY, RETRY, SENT]


async def test_the_fake_counts_requests_per_account_and_second_and_keeps_its_own_limit():
    async with FakeGraph(ACCOUNTS, limits={"whatsapp": 5}) as fake:
        graph = GraphAPI(fake.base_url, "v26.0", timeout_s=2)
        try:
            verdicts = await asyncio.gather(*(send(graph, "whatsapp", f"f-{i}") for i in range(12)))
        finally:
            await graph.close()
    kinds = [verdict.kind for verdict in verdicts]
    assert kinds.count(SENT) <= 10 and SLOW_DOWN in kinds  # at most 5 in each of at most two seconds
    assert sum(n for (app, account, _), n in fake.per_second.items() if account == WA) == 12
    assert fake.max_per_second("whatsapp", WA) >= 6


def test_tokens_are_read_from_the_environment_or_a_file_when_sending(tmp_path):
    path = tmp_path / "page-token"
    path.write_text("EAAG-file-token\n")
    assert read_token(TokenRef("file", str(path))).bearer() == "Bearer EAAG-file-token"
    path.write_text("EAAG-rotated")
    assert read_token(TokenRef("file", str(path))).bearer() == "Bearer EAAG-rotated"  # no restart needed
    assert read_token(TokenRef("env", "WA_TOKEN"), {"WA_TOKEN": "EAAG-env"}).bearer() == "Bearer EAAG-env"
    assert read_token(TokenRef("env", "WA_TOKEN"), {}) is None
    assert read_token(TokenRef("file", str(tmp_path / "missing"))) is None
    assert read_token(None) is None


# -- receipts back ---------------------------------------------------------------------------

class Receiver:
    """Where the fake posts its webhooks: keeps each signed body, refuses a bad signature."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/webhooks/{app}", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()  # the spec's words
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            self.refused += 1
            return web.Response(status=401)
        self.bodies.append((request.match_info["app"], raw))
        return web.Response(status=200)

    async def stop(self) -> None:
        await self._runner.cleanup()


@pytest.mark.parametrize("app, kinds", [
    ("whatsapp", ["sent", "delivered", "read"]),
    ("facebook", ["sent", "delivered", "read"]),
    ("instagram", ["sent", "read"]),
])
async def test_the_fake_posts_signed_receipts_that_normalize_to_the_followup(app, kinds):
    registry = BotRegistry.load("deploy/bots.toml")
    receiver = await Receiver().start()
    try:
        async with FakeGraph(ACCOUNTS, callback_url=receiver.url, app_secret=SECRET, receipt_delay=0.01) as fake:
            graph = GraphAPI(fake.base_url, "v26.0", timeout_s=2)
            try:
                verdict = await send(graph, app, "f-42")
            finally:
                await graph.close()
            await async_wait_for(lambda: len(receiver.bodies) == len(kinds), 10, "the receipts")
    finally:
        await receiver.stop()
    assert receiver.refused == 0
    receipts = [receipt for posted_app, raw in receiver.bodies for receipt in normalize_webhook(posted_app, raw, registry).receipts]
    assert [r.kind for r in receipts] == kinds
    assert {r.bot_id for r in receipts} == {"maestro"} and {r.app for r in receipts} == {app}
    # Each names the follow-up: by the echoed id, or by the message id / watermark the sender keeps.
    for receipt in receipts:
        assert receipt.followup_id == "f-42" or verdict.message_id in receipt.mids or receipt.watermark is not None


def test_the_fake_knows_the_tokens_the_registry_names(tmp_path):
    registry = BotRegistry.from_document({"bot": [{
        "id": "maestro", "name": "M", "persona": "p", "language": "en", "whatsapp": [WA, "2"], "facebook": [PAGE],
        "tokens": {"whatsapp": "env:WA_TOKEN", "facebook": f"file:{tmp_path / 'page'}"}}]})
    (tmp_path / "page").write_text("page-token\n")
    assert accounts_from_registry(registry, {"WA_TOKEN": "wa-token"}) == [
        FakeAccount("whatsapp", WA, "wa-token"), FakeAccount("facebook", PAGE, "page-token")]
