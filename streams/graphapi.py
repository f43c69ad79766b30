"""The send APIs of Meta's Graph API (spec section 9): one HTTP call per send, read by
``domain.sendapi``. WhatsApp Cloud API ``POST {base}/{version}/{phone_number_id}/messages``;
Messenger and Instagram ``POST {base}/{version}/me/messages``; ``Authorization: Bearer``.

What the network does matters as much as what the platform answers: a request that could
not be connected never left (``not_reached``: safe to try again); one that left and got
no answer (a timeout, a dropped connection) may have been accepted (``unknown``: never
repeated). Tokens are read here, when sending, from the place the registry names.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Mapping

import aiohttp
import orjson

from domain.sendapi import NOT_REACHED, UNKNOWN, Token, Verdict, read_answer, send_path
from schemas.registry import TokenRef
from streams.llm import retry_after_seconds


def read_token(ref: TokenRef | None, environ: Mapping[str, str] = os.environ) -> Token | None:
    """The token a registry reference names, or None when it is not there (unset variable,
    missing or empty file). Read at every send: a rotated file is used at once."""
    if ref is None:
        return None
    if ref.source == "env":
        value = environ.get(ref.name, "")
    else:
        try:
            with open(ref.name, encoding="utf-8") as handle:
                value = handle.read()
        except OSError:
            return None
    value = value.strip()
    return Token(value) if value else None


@dataclass(frozen=True, slots=True)
class SendAnswer:
    verdict: Verdict
    seconds: float


class GraphAPI:
    """Posts send-API bodies with a timeout; ``close()`` when done."""

    def __init__(self, base_url: str, version: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.version = version
        # The connect phase gets half the budget, so that a connection that never opens is
        # told apart (not reached) from a request that left and got no answer (unknown).
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s / 2)
        self._session: aiohttp.ClientSession | None = None

    def url(self, app: str, account_id: str) -> str:
        return self.base_url + send_path(self.version, app, account_id)

    async def send(self, app: str, account_id: str, token: Token, body: dict) -> SendAnswer:
        headers = {"Authorization": token.bearer(), "Content-Type": "application/json"}
        started = time.monotonic()
        verdict = await self._post(app, self.url(app, account_id), orjson.dumps(body), headers)
        return SendAnswer(verdict, time.monotonic() - started)

    async def _post(self, app: str, url: str, data: bytes, headers: dict[str, str]) -> Verdict:
        try:
            async with self._client().post(url, data=data, headers=headers) as response:
                try:
                    payload = orjson.loads(await response.read())
                except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
                    payload = None  # the status says enough: a 2xx was accepted
                hint = retry_after_seconds(response.headers.get("Retry-After"))
                return read_answer(app, response.status, payload, None if hint is None else int(hint * 1000))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            return Verdict(NOT_REACHED)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return Verdict(UNKNOWN)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection limit: the sender bounds its calls in flight, and a wait for a
            # pooled connection would eat into the timeout.
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=10.0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
