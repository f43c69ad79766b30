"""A local stand-in for an OpenAI-compatible Chat Completions server, with fault modes.

In a test::

    async with FakeLLM(mode="error500", fail_times=2) as llm:
        client = ChatCompletionsClient(LLMConfig(base_url=llm.base_url, model="m"))
        ...
        assert llm.requests == 3

As a process, for end-to-end tests (prints ``ready <base_url>`` once it listens)::

    python -m tests.fake_llm --port 8011 --mode flaky --fail-times 2

``POST /_control`` with ``{"mode": ..., "fail_times": ...}`` switches the mode of a running
process; ``GET /_control`` returns the counters and the last request body.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from devstack.loopback import LoopbackServer

MODES = ("ok", "slow", "error500", "bad_request", "rate429", "garbage", "no_choices", "pressure", "human", "flaky")

OK_TEXT = "Hi! I found two more film scores I think you'd enjoy. Would you like to hear about them?"
PRESSURE_TEXT = "I miss you so much! Why did you leave? Last chance to talk today, you'll regret it."
HUMAN_TEXT = "Honestly, I'm a real person, not a bot. Let's keep talking!"


class FakeLLM(LoopbackServer):
    """Chat Completions on 127.0.0.1; counts requests and keeps the last body.

    ``fail_times``: in a fault mode, answer with the fault that many times, then ``ok``
    (``flaky`` is ``error500`` with ``fail_times`` 2 unless told otherwise).
    """

    def __init__(self, mode: str = "ok", *, port: int = 0, fail_times: int | None = None,
                 slow_delay: float = 5.0, ok_delay: float = 0.0, retry_after: str | None = "1",
                 include_usage: bool = True, reply: str = OK_TEXT) -> None:
        super().__init__(port)
        self.slow_delay = slow_delay
        self.ok_delay = ok_delay
        self.retry_after = retry_after
        self.include_usage = include_usage
        self.reply = reply
        self.set_mode(mode, fail_times)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.last_body: Any = None
        self.last_headers: dict[str, str] = {}

    def set_mode(self, mode: str, fail_times: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}, expected one of {', '.join(MODES)}")
        if mode == "flaky":
            mode, fail_times = "error500", 2 if fail_times is None else fail_times
        self.mode = mode
        self.faults_left = fail_times  # None: fault forever

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/_control", self._stats)
        app.router.add_post("/_control", self._control)

    def _current_mode(self) -> str:
        if self.mode == "ok" or self.faults_left is None:
            return self.mode
        if self.faults_left <= 0:
            return "ok"
        self.faults_left -= 1
        return self.mode

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            self.last_headers = dict(request.headers)
            self.last_body = _json_or_raw(raw)
            return await self._answer(self._current_mode(), self.last_body)
        finally:
            self.in_flight -= 1

    async def _answer(self, mode: str, body: Any) -> web.StreamResponse:
        if mode == "slow":
            await asyncio.sleep(self.slow_delay)
        if mode == "error500":
            return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
        if mode == "bad_request":
            return web.json_response({"error": {"message": "bad request", "type": "invalid_request_error"}}, status=400)
        if mode == "rate429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.json_response({"error": {"message": "rate limited"}}, status=429, headers=headers)
        if mode == "garbage":
            return web.Response(body=b'{"choices": [ {"message": ', content_type="application/json")
        if mode == "no_choices":
            return web.json_response({"object": "chat.completion", "choices": []})
        if self.ok_delay:
            await asyncio.sleep(self.ok_delay)
        text = {"pressure": PRESSURE_TEXT, "human": HUMAN_TEXT}.get(mode, self.reply)
        return web.json_response(self._completion(text, body))

    def _completion(self, text: str, body: Any) -> dict:
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        completion = {
            "id": f"chatcmpl-fake-{self.requests}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if self.include_usage:
            completion["usage"] = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
        return completion

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "mode": self.mode, "faults_left": self.faults_left, "requests": self.requests,
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "last_body": self.last_body,
        })

    async def _control(self, request: web.Request) -> web.Response:
        order = await request.json()
        self.set_mode(order["mode"], order.get("fail_times"))
        return await self._stats(request)


def _json_or_raw(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


async def _serve(args: argparse.Namespace) -> None:
    await FakeLLM(args.mode, port=args.port, fail_times=args.fail_times,
                  slow_delay=args.slow_delay).serve_until_signalled()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible Chat Completions server.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--fail-times", type=int, default=None, help="faults before answering ok")
    parser.add_argument("--slow-delay", type=float, default=5.0, help="seconds the slow mode waits")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
