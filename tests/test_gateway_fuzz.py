"""Arbitrary requests at the gateway (spec section 9): no 500, no crash, and nothing reaches
a topic but bodies signed with the app secret, each exactly as posted.

The gateway runs in this process against the real broker; what it forwarded is read back
from the raw topics, up to a sentinel posted last.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from contextlib import AsyncExitStack

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
import pytest

from gatewaykit import APPS, NEXT_SECRET, SECRET, TOKEN, gateway_settings, post, read_raw, running_gateway, signed

pytestmark = pytest.mark.kafka

MAX_BODY = 2048
ANSWERS = {200, 400, 401, 403, 404, 405, 408, 413}   # every status the spec and HTTP allow here
FUZZ = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'"
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=20)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
# Entries repeated and branches doubled: most requests aim at the endpoints, as a forger's would.
bodies = st.one_of(st.binary(max_size=256), st.binary(max_size=256),
                   st.binary(min_size=MAX_BODY - 4, max_size=MAX_BODY + 64))
endpoints = st.sampled_from([f"/webhooks/{app}" for app in APPS])
paths = st.one_of(
    endpoints, endpoints,
    st.sampled_from(["/", "/webhooks", "/webhooks/", "/metrics", "/health", "/webhooks/whatsapp/x",
                     "/WEBHOOKS/facebook", "/webhooks/whatsapp%2F", "/webhooks/../webhooks/whatsapp"]),
    st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="?#%"), max_size=10),
             max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
# The signature header: absent, right (with either secret), or wrong in one of the ways a forger might try.
signatures = st.sampled_from(["none", "current", "next", "other-secret", "other-body", "sha1", "garbage"])


def expected_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_header(kind: str, body: bytes, garbage: str) -> dict[str, str]:
    value = {
        "none": None, "current": expected_signature(body, SECRET), "next": expected_signature(body, NEXT_SECRET),
        "other-secret": expected_signature(body, "guessed"), "other-body": expected_signature(body + b"!", SECRET),
        "sha1": "sha1=" + hashlib.sha1(body).hexdigest(), "garbage": garbage,
    }[kind]
    return {} if value is None else {"X-Hub-Signature-256": value}


class Loop:
    """One event loop for a whole Hypothesis run (Hypothesis calls a plain function per example)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def enter(self, make_context):
        """Enter the async context ``make_context()`` makes, made inside the loop, left on close."""
        async def enter():
            return await self.stack.enter_async_context(make_context())
        return self.run(enter())

    def close(self) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.close()


def test_arbitrary_requests_get_no_500_and_only_signed_bodies_are_forwarded(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix, gateway_max_body=MAX_BODY)
    forwarded: dict[str, list[bytes]] = {app: [] for app in APPS}
    loop = Loop()
    try:
        loop.enter(lambda: running_gateway(settings))
        session = loop.enter(aiohttp.ClientSession)

        @FUZZ
        @given(method=st.sampled_from(["POST"] * 5 + ["GET"] * 2 + ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
               path=paths, body=bodies, kind=signatures, garbage=header_values,
               headers=st.dictionaries(header_names, header_values, max_size=5),
               query=st.dictionaries(st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
                                     st.one_of(st.just(TOKEN), st.just("subscribe"), header_values), max_size=3))
        def one_request(method, path, body, kind, garbage, headers, query):
            headers = {**headers, **signature_header(kind, body, garbage)}

            async def send() -> int:
                async with session.request(method, f"http://127.0.0.1:{settings.gateway_port}{path}",
                                           params=query, data=body, headers=headers) as response:
                    await response.read()
                    return response.status

            status = loop.run(send())
            assert status in ANSWERS, (status, method, path)
            signature = next((v for k, v in headers.items() if k.lower() == "x-hub-signature-256"), None)
            if status == 200 and method == "POST":
                assert signature in (expected_signature(body, SECRET), expected_signature(body, NEXT_SECRET))
                assert len(body) <= MAX_BODY
                forwarded[path.rsplit("/", 1)[1]].append(body)
            if status == 200 and method == "GET":
                assert query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == TOKEN

        one_request()
        for app in APPS:
            end = orjson.dumps({"sentinel": app})
            assert loop.run(post(session, settings, f"/webhooks/{app}", end, signed(end))) == 200
            assert loop.run(read_raw(stack.bootstrap, topic_prefix, app, until=end)) == forwarded[app] + [end]
    finally:
        loop.close()


raw_requests = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda line, rest: line + rest,
              st.sampled_from([b"POST /webhooks/whatsapp HTTP/1.1\r\n", b"GET /webhooks/facebook?hub.mode=subscribe HTTP/1.1\r\n",
                               b"POST /webhooks/instagram HTTP/1.0\r\n", b"POST / HTTP/1.1\r\n"]),
              st.binary(max_size=300)),
    st.builds(lambda length, chunks: b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n"
              + (b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length)
              + b"X-Hub-Signature-256: sha256=00\r\n\r\n" + chunks,
              st.one_of(st.none(), st.integers(-5, 3 * MAX_BODY)), st.binary(max_size=200)),
)


def test_arbitrary_bytes_on_the_socket_get_no_500_and_forward_nothing(stack, topic_prefix):
    settings = gateway_settings(stack.bootstrap, topic_prefix, gateway_max_body=MAX_BODY, gateway_read_timeout="1s")
    loop = Loop()
    try:
        loop.enter(lambda: running_gateway(settings, idle_timeout=1.0))

        @hsettings(FUZZ, max_examples=120)
        @given(request=raw_requests)
        def one_connection(request):
            async def send() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", settings.gateway_port)
                try:
                    writer.write(request)
                    writer.write_eof()   # the client is done: the server answers or closes
                    return await asyncio.wait_for(reader.read(), 10)
                finally:
                    writer.close()

            answer = loop.run(send())
            assert not answer.startswith(b"HTTP/1.1 5") and not answer.startswith(b"HTTP/1.0 5"), answer[:200]

        one_connection()
        session = loop.enter(aiohttp.ClientSession)
        for app in APPS:  # still serving, and nothing was forwarded before the sentinels
            end = orjson.dumps({"sentinel": app})
            assert loop.run(post(session, settings, f"/webhooks/{app}", end, signed(end))) == 200
            assert loop.run(read_raw(stack.bootstrap, topic_prefix, app, until=end)) == [end]
    finally:
        loop.close()
