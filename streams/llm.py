"""The Chat Completions protocol: an OpenAI-compatible client with a circuit breaker.

The client is a ``TextProvider`` (``domain/writing.py``): ``await client.write(inputs) -> str``.
The text it returns is not final: ``domain.honesty.finalize`` checks it and adds the disclosure.

The client speaks only the standard fields (``model``, ``messages``, ``max_tokens``,
``temperature``; ``choices[0].message.content`` back, ``usage`` optional), so it works
with OpenAI, vLLM, Ollama and the llama.cpp server alike.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable

import aiohttp
import orjson

from domain.writing import LLMError, OfflineWriter, PromptInputs, TextProvider, build_prompt
from foundation.settings import Settings


# -- the circuit breaker -------------------------------------------------------------------

class CircuitOpen(LLMError):
    """The breaker is open: the call was refused without touching the network."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"LLM circuit open, next trial in {retry_in:.1f}s", retryable=True)
        self.retry_in = retry_in


class CircuitBreaker:
    """Opens after ``threshold`` failed attempts in a row; after ``cooldown`` seconds one
    trial attempt is let through (half-open): success closes it, failure opens it again."""

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown else "open"

    def raise_if_open(self) -> None:
        """Fails fast, before waiting for a concurrency slot, when no attempt could go out."""
        state = self.state
        if state == "open" or (state == "half-open" and self._trial_running):
            raise CircuitOpen(self._retry_in())

    def before_attempt(self) -> bool:
        """Raises CircuitOpen unless an attempt may go out now. True when the attempt is
        the half-open trial, whose end must be reported (success, failure or abandon)."""
        state = self.state
        if state == "closed":
            return False
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        raise CircuitOpen(self._retry_in())

    def _retry_in(self) -> float:
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def abandon_trial(self) -> None:
        """A trial that neither succeeded nor failed (cancelled) lets the next one through."""
        self._trial_running = False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._trial_running = False


# -- the HTTP client -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 20.0  # seconds, per attempt
    concurrency: int = 8
    attempts: int = 3
    backoff_base: float = 0.5  # seconds; attempt n waits up to base * 2**(n-1)
    backoff_max: float = 8.0
    max_retry_after: float = 30.0  # a longer Retry-After ends the call (the retry topic waits)
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    max_tokens: int = 120
    temperature: float = 0.7

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "LLMConfig":
        values = dict(
            base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
            timeout=settings.llm_timeout / 1000, concurrency=settings.llm_concurrency,
            attempts=settings.llm_attempts,
        )
        values.update(overrides)
        return cls(**values)


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ChatCompletionsClient:
    """``POST {base_url}/chat/completions`` with timeouts, retries, a concurrency bound and a
    circuit breaker. Use as ``async with``, or call ``close()``."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown, clock)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._slots = asyncio.Semaphore(config.concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ChatCompletionsClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def write(self, prompt_inputs: PromptInputs) -> str:
        messages = build_prompt(prompt_inputs.bot, prompt_inputs.context, prompt_inputs.reply_language)
        return await self.complete(messages)

    async def complete(self, messages: list[dict]) -> str:
        """The assistant's text; raises LLMError (CircuitOpen when the breaker is open)."""
        for attempt in range(1, self.config.attempts + 1):
            try:
                self.breaker.raise_if_open()
                text = await self._guarded_attempt(messages)
            except CircuitOpen as exc:
                if attempt == 1:  # refused before any call: the caller may wait without counting a try
                    raise
                raise LLMError(f"LLM call failed after {attempt - 1} attempt(s), then the circuit opened",
                               retryable=True) from exc
            except _Retryable as exc:
                self.breaker.record_failure()
                delay = self._delay(attempt, exc.retry_after)
                if attempt == self.config.attempts or delay is None:
                    raise LLMError(f"LLM call failed after {attempt} attempt(s): {exc}", retryable=True,
                                   status=exc.status, retry_after=exc.retry_after) from exc
                await self._sleep(delay)
            except LLMError:
                self.breaker.record_failure()
                raise
            else:
                self.breaker.record_success()
                return text
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _guarded_attempt(self, messages: list[dict]) -> str:
        async with self._slots:
            # Checked again: the breaker may have opened while this call waited for a slot.
            is_trial = self.breaker.before_attempt()
            try:
                return await self._attempt(messages)
            except asyncio.CancelledError:
                if is_trial:
                    self.breaker.abandon_trial()
                raise

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt; None when Retry-After asks too much."""
        if retry_after is not None:
            return retry_after if retry_after <= self.config.max_retry_after else None
        cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return self._rng.random() * cap  # full jitter: spreads the retries of many workers

    async def _attempt(self, messages: list[dict]) -> str:
        payload = {
            "model": self.config.model, "messages": messages,
            "max_tokens": self.config.max_tokens, "temperature": self.config.temperature,
        }
        try:
            async with self._client().post(self.url, data=orjson.dumps(payload), headers=self._headers()) as response:
                body = await response.read()
                _raise_for_status(response, body)
        except asyncio.TimeoutError:
            raise _Retryable(f"no answer within {self.config.timeout}s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"connection error: {exc.__class__.__name__}: {exc}") from None
        return _content(body)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connector limit: the semaphore is the bound, and a wait for a pooled
            # connection would eat into the per-attempt timeout.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers


def _raise_for_status(response: aiohttp.ClientResponse, body: bytes) -> None:
    status = response.status
    if status < 400:
        return
    detail = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    if status == 429:
        raise _Retryable(detail, status, retry_after_seconds(response.headers.get("Retry-After")))
    if status >= 500:
        raise _Retryable(detail, status)
    raise LLMError(detail, retryable=False, status=status)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _content(body: bytes) -> str:
    """``choices[0].message.content``; anything else is a (retryable) garbage answer."""
    try:
        document = orjson.loads(body)
        content = document["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise _Retryable(f"not a chat completion: {body[:200].decode('utf-8', 'replace')}") from None
    if not isinstance(content, str) or not content.strip():
        raise _Retryable("the chat completion has no text content")
    return _unquoted(content.strip())


def _unquoted(text: str) -> str:
    # Small models often wrap the whole message in quotes despite the rules.
    for left, right in ('""', "“”", "«»"):
        if len(text) > 2 and text[0] == left and text[-1] == right:
            return text[1:-1].strip()
    return text


def make_writer(settings: Settings) -> tuple[TextProvider, str]:
    """The text provider the settings ask for, and its metric label: the Chat Completions
    client when ``llm_base_url`` is set, else the offline writer."""
    if not settings.llm_base_url:
        return OfflineWriter(), "offline"
    config = LLMConfig.from_settings(settings, breaker_cooldown=settings.llm_breaker_cooldown / 1000)
    return ChatCompletionsClient(config), "openai"
