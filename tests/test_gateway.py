"""The gateway through a real broker (spec section 9, "Webhooks in"): what is signed lands on
raw.<app> byte for byte; what is not never reaches a topic, and gets the status the spec names."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import GatewayProcess
from gatewaykit import (
    APPS, NEXT_SECRET, SECRET, TOKEN, gateway_settings, post, read_raw, running_gateway, signature, signed, url,
)

pytestmark = pytest.mark.kafka

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
RELANCE = str(Path(sys.executable).with_name("relance"))
MAX_BODY = 4096


def fixture_bodies(app: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob(f"{app}_*.json"))]


def sentinel(app: str) -> bytes:
    return orjson.dumps({"object": "sentinel", "app": app})


async def test_signed_posts_land_on_their_apps_topic_byte_for_byte(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix)
    # Bodies as the platforms post them, and bytes no serializer would write back the same:
    # unescaped and escaped unicode, odd spacing, even bytes that are not JSON (ingest's business).
    odd = ['{"object" :  "page", "text": "café \\u00e9 ☕"}\n'.encode(), b"\x00\xff not json \r\n"]
    sent = {app: fixture_bodies(app) + odd for app in APPS}
    async with running_gateway(settings), aiohttp.ClientSession() as session:
        for app in APPS:
            for index, body in enumerate(sent[app]):
                secret = NEXT_SECRET if index % 2 else SECRET  # during a rotation, both are accepted
                assert await post(session, settings, f"/webhooks/{app}", body, signed(body, secret)) == 200
    for app in APPS:
        assert await read_raw(stack.bootstrap, topic_prefix, app, until=sent[app][-1]) == sent[app]


async def test_unsigned_wrongly_signed_oversized_and_misaddressed_posts_never_reach_a_topic(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix, gateway_max_body=MAX_BODY)
    body = fixture_bodies("whatsapp")[0]
    tampered = bytearray(body)
    tampered[len(body) // 2] ^= 0x01
    big = b"x" * (MAX_BODY + 1)
    refused = [
        ("/webhooks/whatsapp", body, {}, 401),                                                   # unsigned
        ("/webhooks/whatsapp", body, signed(body, "not-the-app-secret"), 401),                   # another secret
        ("/webhooks/whatsapp", bytes(tampered), signed(body), 401),                              # one byte changed
        ("/webhooks/facebook", body, {"X-Hub-Signature": "sha1=" + "0" * 40}, 401),              # only the old SHA-1 header
        ("/webhooks/facebook", body, {"X-Hub-Signature-256": signature(body)[:-1]}, 401),        # cut short
        ("/webhooks/instagram", b"", {}, 401),                                                   # nothing at all
        ("/webhooks/instagram", big, signed(big), 413),                                          # over the limit
        ("/webhooks/telegram", body, signed(body), 404),                                         # no such app
        ("/webhooks/whatsapp/", body, signed(body), 404),
        ("/webhooks", body, signed(body), 404),
        ("/", body, signed(body), 404),
    ]
    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        for path, sent, headers, status in refused:
            assert await post(session, settings, path, sent, headers) == status, path
        # Two signature headers, one right and one wrong: which one would count? Neither.
        async with session.post(url(settings, "/webhooks/whatsapp"), data=body,
                                headers=[("X-Hub-Signature-256", signature(body)),
                                         ("X-Hub-Signature-256", signature(body, "x"))]) as response:
            assert response.status == 401
        async with session.put(url(settings, "/webhooks/whatsapp"), data=body, headers=signed(body)) as response:
            assert response.status == 405
        # Over the limit without a Content-Length (chunked): refused while reading.
        async def chunks():
            for _ in range(MAX_BODY // 1000 + 2):
                yield b"y" * 1000
        async with session.post(url(settings, "/webhooks/whatsapp"), data=chunks(),
                                headers=signed(b"y" * 1000 * (MAX_BODY // 1000 + 2))) as response:
            assert response.status == 413
        for app in APPS:
            assert await post(session, settings, f"/webhooks/{app}", sentinel(app), signed(sentinel(app))) == 200
        metrics = await scrape(session, gateway.settings.web_port)
    for app in APPS:
        assert await read_raw(stack.bootstrap, topic_prefix, app, until=sentinel(app)) == [sentinel(app)]
    failures = metrics["relance_gateway_signature_failures_total"]
    assert failures[(("app", "whatsapp"), ("reason", "missing"))] == 1
    assert failures[(("app", "whatsapp"), ("reason", "mismatch"))] == 3   # another secret, tampered, two headers
    assert failures[(("app", "instagram"), ("reason", "missing"))] == 1
    requests = metrics["relance_gateway_requests_total"]
    assert requests[(("app", "whatsapp"), ("status", "401"))] == 4
    assert requests[(("app", "other"), ("status", "404"))] == 4
    assert requests[(("app", "whatsapp"), ("status", "413"))] == 1
    assert sum(metrics["relance_gateway_forwarded_bytes_total"].values()) == sum(len(sentinel(a)) for a in APPS)


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, dict[tuple, float]]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    metrics: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metrics.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return metrics


async def test_the_handshake_echoes_the_challenge_only_for_the_verify_token(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix)
    async with running_gateway(settings), aiohttp.ClientSession() as session:
        for app in APPS:
            query = {"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "1158201444"}
            async with session.get(url(settings, f"/webhooks/{app}"), params=query) as response:
                assert (response.status, await response.text()) == (200, "1158201444")
        for query in ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
                      {"hub.mode": "unsubscribe", "hub.verify_token": TOKEN, "hub.challenge": "1"},
                      {"hub.verify_token": TOKEN, "hub.challenge": "1"},
                      {"hub.mode": "subscribe", "hub.challenge": "1"}):
            async with session.get(url(settings, "/webhooks/whatsapp"), params=query) as response:
                assert response.status == 403 and "1" not in await response.text()


async def test_without_a_verify_token_every_handshake_is_refused(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix, verify_token="")
    async with running_gateway(settings), aiohttp.ClientSession() as session:
        for token in ("", "None", "null"):
            query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "7"}
            async with session.get(url(settings, "/webhooks/facebook"), params=query) as response:
                assert response.status == 403


async def test_a_client_too_slow_with_its_body_or_its_headers_is_cut_off_and_nothing_is_forwarded(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix, gateway_read_timeout="1s")
    body = fixture_bodies("facebook")[0]
    async with running_gateway(settings, idle_timeout=2.0), aiohttp.ClientSession() as session:
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.gateway_port)
        writer.write(b"POST /webhooks/facebook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"X-Hub-Signature-256: %s\r\n\r\n" % (len(body), signature(body).encode()) + body[:10])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)   # read timeout 1 s, with room
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        writer.close()
        # Headers that never end: the connection is closed after the idle timeout (2 s here).
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.gateway_port)
        writer.write(b"POST /webhooks/facebook HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 8) == b""
        writer.close()
        assert await post(session, settings, "/webhooks/facebook", sentinel("facebook"), signed(sentinel("facebook"))) == 200
    assert await read_raw(stack.bootstrap, topic_prefix, "facebook", until=sentinel("facebook")) == [sentinel("facebook")]


async def test_health_is_live_and_ready_when_kafka_answers(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix)
    async with running_gateway(settings), aiohttp.ClientSession() as session:
        for path, expected in (("/health/live", {"live": True}), ("/health/ready", {"ready": True}),
                               ("/health", {"live": True, "ready": True})):
            async with session.get(f"http://127.0.0.1:{settings.web_port}{path}") as response:
                assert (response.status, await response.json()) == (200, expected)
        # Health and metrics are not served on the public port.
        async with session.get(url(settings, "/metrics")) as response:
            assert response.status == 404


def test_the_gateway_process_takes_secrets_from_files_and_never_logs_them(stack, topic_prefix, tmp_path):
    (tmp_path / "app-secret").write_text(f"{SECRET},{NEXT_SECRET}\n")
    (tmp_path / "verify-token").write_text(TOKEN + "\n")
    gateway = GatewayProcess(tmp_path, broker=stack.bootstrap, topic_prefix=topic_prefix,
                             app_secret_file=tmp_path / "app-secret", verify_token_file=tmp_path / "verify-token")
    try:
        gateway.start()
        gateway.wait_ready(60)
        body = fixture_bodies("instagram")[0]
        assert http_post(gateway.url + "/webhooks/instagram", body, signed(body, NEXT_SECRET)) == 200
        assert http_post(gateway.url + "/webhooks/instagram", body, signed(body, "wrong")) == 401
        assert http_get(gateway.url + f"/webhooks/instagram?hub.mode=subscribe&hub.verify_token={TOKEN}x&hub.challenge=5") == 403
        assert http_get(gateway.url + f"/webhooks/instagram?hub.mode=subscribe&hub.verify_token={TOKEN}&hub.challenge=5") == 200
    finally:
        gateway.stop(timeout=20)
    assert gateway.process.returncode == 0, gateway.log_tail()   # SIGTERM: a clean, bounded stop
    log = gateway.log_path.read_text()
    assert "gateway listening" in log
    for secret in (SECRET, NEXT_SECRET, TOKEN):
        assert secret not in log


def test_the_gateway_refuses_to_start_without_an_app_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "RELANCE_VERIFY_TOKEN": TOKEN}
    done = subprocess.run([RELANCE, "gateway"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "RELANCE_APP_SECRET" in done.stderr and TOKEN not in done.stderr + done.stdout


def http_post(address: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(address, data=body, headers=headers, method="POST")
    return _status(request)


def http_get(address: str) -> int:
    return _status(urllib.request.Request(address))


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_simulated_webhooks_posted_through_the_gateway_land_as_generated(stack, topic_prefix):
    from devstack.traffic import TrafficShape, bot_accounts, generate, webhook_of
    from schemas.registry import BotRegistry

    registry = BotRegistry.load(Path(__file__).resolve().parent.parent / "deploy" / "bots.toml")
    shape = TrafficShape(users=20, days=1.0, bots=tuple(bot.id for bot in registry))
    accounts = bot_accounts(registry)
    expected: dict[str, list[bytes]] = {app: [] for app in APPS}
    for record in generate(shape, seed=4):
        posted = None if "type" in record else webhook_of(record, accounts)
        if posted is not None:
            expected[posted[0]].append(orjson.dumps(posted[1]))
    assert all(expected.values())
    settings = gateway_settings(stack.bootstrap, topic_prefix)
    async with running_gateway(settings):
        simulate = await asyncio.create_subprocess_exec(
            RELANCE, "simulate", "--days", "1", "--users", "20", "--seed", "4", "--format", "webhooks",
            "--gateway", f"http://127.0.0.1:{settings.gateway_port}", "--broker", stack.bootstrap,
            "--topic-prefix", topic_prefix, env={"PATH": "/usr/bin:/bin", "RELANCE_APP_SECRET": SECRET},
            stderr=asyncio.subprocess.PIPE)
        try:
            _, errors = await asyncio.wait_for(simulate.communicate(), 120)
        finally:
            if simulate.returncode is None:
                simulate.kill()
                await simulate.wait()
        assert simulate.returncode == 0, errors.decode()[-2000:]
    for app in APPS:
        assert await read_raw(stack.bootstrap, topic_prefix, app, until=expected[app][-1]) == expected[app]
