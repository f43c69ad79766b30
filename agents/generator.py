"""The generator agents: each follow-up request written by the LLM and handed to delivery.

Requests come from ``followups.requested`` (the engine) and ``followups.retry`` (earlier
tries that failed). Every request ends here with exactly one outcome, written to
``followups.outcomes`` and into the request's field of the ledger (``streams/ledger.py``):

- ``generated``: the text went to ``delivery.<app>``;
- ``cancelled:<reason>``: any reason of the last-moment check (``domain/lastcheck.py``:
  ``erased``, ``killed``, ``user_returned``, ``opted_out``, ``minor``, ``distress``,
  ``window_closed``), checked before the LLM is called and again right before delivery
  (the user may come back, opt out or show distress meanwhile);
- ``dead_lettered``: unknown bot, or generation failed ``generation_tries`` times.

The generator runs as a batch stage (``streams/kafkaloop.py``), each record in a task of
its own; a partition's offsets are committed only up to its first record whose outcome is
not yet acknowledged by Kafka, so a crash never leaves a request without one.

The ledger field is also how duplicates are dropped and how tries survive a crash. The
first try makes the field; a copy of the request that finds its try running elsewhere goes
back to the retry topic until the lease ends, so a crashed worker's follow-up is not lost.
Effects are at-least-once: a crash between the delivery and the ledger write delivers
twice with the same ``followup_id``, which the delivery stage drops. A field erased with
its user (a tombstone newer than the request) cancels the request, and the ledger is
never re-created; a field Redis lost is made again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from functools import cached_property
from typing import Sequence

from aiokafka import ConsumerRecord

from agents.context import read_context
from domain.delivery import delivery_record
from domain.honesty import FinalText, finalize, safe_template
from domain.lastcheck import cancel_reason
from domain.sendapi import backoff_ms
from domain.writing import LLMError, PromptInputs
from streams.llm import ChatCompletionsClient, CircuitOpen, LLMConfig, make_writer
from foundation.metrics import label
from schemas.records import (
    DeliveryRecord, FollowupAttempt, FollowupOutcome, FollowupRequest, InvalidRecord, loads, parse_attempt,
)
from schemas.registry import Bot, RegistryFile
from foundation.clock import wall_ms
from streams.kafkaloop import RecordTasks
from streams.wiring import Wiring
from streams.topics import DELIVERY_BY_APP, FOLLOWUP_OUTCOMES, FOLLOWUPS_REQUESTED, FOLLOWUPS_RETRY, topic_name
from streams.ledger import (
    BUSY, CANCELLED, CLAIMED, DEAD_LETTERED, GENERATED, MISSING, Ledger, final_state, ledger_ttl_s,
)
from streams.lastcheck import pair_now

log = logging.getLogger("relance.generator")

STAGE = "generator"

MAX_RETRY_WAIT_MS = 60_000     # a retry never sleeps longer than this on one record
# Records in flight at once: fresh requests (a few per LLM slot, so one is ready when a
# slot frees), and retries (mostly asleep until their time, so many cost little).
REQUESTS_PER_LLM_SLOT = 2
RETRIES_IN_FLIGHT = 256


# -- pure decisions ----------------------------------------------------------------------

def retry_delay_ms(tries: int, base_ms: int, rng: random.Random) -> int:
    """Exponential backoff after ``tries`` failed tries, with jitter, so the requests of one
    LLM outage do not all come back at once."""
    return backoff_ms(tries, base_ms, MAX_RETRY_WAIT_MS, rng)


def wait_ms(not_before: int | None, now: int) -> int:
    return 0 if not_before is None else min(MAX_RETRY_WAIT_MS, max(0, not_before - now))


def error_kind(exc: LLMError) -> str:
    """A bounded metric label for a failed LLM call."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if exc.status == 429:
        return "rate_limited"
    if exc.status is not None:
        return "http_5xx" if exc.status >= 500 else "http_4xx"
    detail = str(exc)
    if "no answer within" in detail:
        return "timeout"
    if "connection error" in detail:
        return "connection"
    return "bad_response"


def refusal_labels(reasons: Sequence[str]) -> set[str]:
    """``pressure: i miss you`` -> ``pressure``; ``claims to be human: ...`` -> ``claims_to_be_human``."""
    return {label(reason.split(":", 1)[0].strip().replace(" ", "_")) for reason in reasons}


def try_budget_ms(config: LLMConfig) -> int:
    """The longest one try may take: every attempt's timeout and the backoffs between them."""
    return int(1000 * (config.attempts * config.timeout + (config.attempts - 1) * config.backoff_max))


# -- the generator -----------------------------------------------------------------------

class Generator:
    def __init__(self, wiring: Wiring, registry: RegistryFile, rng: random.Random | None = None) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.metrics = wiring.metrics
        self.registry = registry
        self.writer, self.provider_label = make_writer(self.settings)
        self.budget_ms = try_budget_ms(LLMConfig.from_settings(self.settings))
        self.rng = rng or random.Random()

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.wiring.redis, ledger_ttl_s(self.settings))  # first used inside the worker's event loop

    async def close(self) -> None:
        if isinstance(self.writer, ChatCompletionsClient):
            await self.writer.close()

    # -- input ---------------------------------------------------------------------

    async def handle(self, record: ConsumerRecord, from_retry: bool = False) -> None:
        try:
            attempt = parse_attempt(loads(record.value))
        except InvalidRecord as exc:
            await self.wiring.record_dead_letter(STAGE, exc.kind, str(exc), record)
            return
        if from_retry:
            await asyncio.sleep(wait_ms(attempt.not_before, wall_ms()) / 1000)
        now = wall_ms()
        # A first try's field may not exist yet: an erasure after the engine published
        # the request (its record's time) is what cancels it.
        verdict = await self.ledger.claim(attempt.request, attempt.tries, now, now + self.budget_ms + self.settings.generation_lease_margin,
                                          since=record.timestamp if attempt.tries == 0 else 0)
        if verdict == CLAIMED:
            await self._generate(record, attempt)
        elif verdict == MISSING:
            await self._settle(attempt.request, CANCELLED, "erased", attempt.tries)
        elif verdict.startswith(BUSY):
            await self._defer(attempt, int(verdict.split(":", 1)[1]))
        else:
            self.metrics.duplicates.labels(app=attempt.request.app).inc()
            log.info("duplicate follow-up request dropped", extra={"followup_id": attempt.request.followup_id, "verdict": verdict})

    # -- one try ---------------------------------------------------------------------

    async def _generate(self, record: ConsumerRecord, attempt: FollowupAttempt) -> None:
        request = attempt.request
        reason = await self._cancel_reason(request)
        if reason:
            await self._settle(request, CANCELLED, reason, attempt.tries)
            return
        bot = self.registry.current().get(request.bot_id)
        if bot is None:
            await self._give_up(record, attempt.tries, request, "unknown_bot", f"bot {request.bot_id!r} is not in the registry")
            return
        tries = attempt.tries + 1
        try:
            text = await self._write(bot, request)
        except LLMError as exc:
            await self._failed(record, request, tries, exc)
            return
        delivery = self._delivery_record(request, text, bot.language)
        reason = await self._cancel_reason(request)  # the user may have come back while the LLM wrote
        if reason:
            await self._settle(request, CANCELLED, reason, tries)
            return
        await self._send(self.wiring.topic(DELIVERY_BY_APP[request.app]), request, delivery.to_json())
        await self._settle(request, GENERATED, None, tries)

    async def _cancel_reason(self, request: FollowupRequest) -> str | None:
        pair = await pair_now(self.wiring.redis, request)
        now = wall_ms() if self.settings.clock == "wall" else None
        return cancel_reason(request, pair, now, self.settings.messaging_window)

    async def _write(self, bot: Bot, request: FollowupRequest) -> str:
        context = await read_context(self.wiring.redis, request.user_id, request.bot_id)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(self.writer.write(PromptInputs(bot=bot, context=context)), self.budget_ms / 1000)
        except asyncio.TimeoutError:
            self.metrics.llm_errors.labels(kind="timeout").inc()
            raise LLMError(f"no answer within the try's budget of {self.budget_ms} ms", retryable=True) from None
        except LLMError as exc:
            self.metrics.llm_errors.labels(kind=error_kind(exc)).inc()
            raise
        finally:
            self.metrics.llm_request.labels(provider=self.provider_label).observe(time.monotonic() - started)
            breaker = getattr(self.writer, "breaker", None)
            self.metrics.llm_circuit_open.set(1 if breaker is not None and breaker.state == "open" else 0)

    def _delivery_record(self, request: FollowupRequest, text: str, language: str) -> DeliveryRecord:
        final = finalize(text, language)
        for reason in refusal_labels(final.reasons):
            self.metrics.text_refused.labels(reason=reason).inc()
        try:
            return delivery_record(request, final, wall_ms())
        except ValueError:  # longer than the app's send API takes (Instagram counts bytes)
            self.metrics.text_refused.labels(reason="too_long").inc()
            return delivery_record(request, _safe_text(language), wall_ms())

    # -- endings -----------------------------------------------------------------------

    async def _failed(self, record: ConsumerRecord, request: FollowupRequest, tries: int, exc: LLMError) -> None:
        if isinstance(exc, CircuitOpen):
            # Refused before any call, the LLM being known down: the request waits for the
            # breaker's next trial, and the try it could not make is not counted. Only
            # calls made count, so an outage costs a follow-up at most a try per trial.
            tries -= 1
            not_before = wall_ms() + int(exc.retry_in * 1000) + self.rng.randrange(self.settings.generation_backoff + 1)
            await self._retry(request, tries, not_before, exc)
            return
        if not exc.retryable or tries >= self.settings.generation_tries:
            await self._give_up(record, tries, request, "generation_failed", f"generation failed after {tries} tries: {exc}")
            return
        await self._retry(request, tries, wall_ms() + retry_delay_ms(tries, self.settings.generation_backoff, self.rng), exc)

    async def _retry(self, request: FollowupRequest, tries: int, not_before: int, exc: LLMError) -> None:
        await self._send(self.wiring.topic(FOLLOWUPS_RETRY), request, FollowupAttempt(request, tries, not_before).to_json())
        await self.ledger.set_state(request, f"wait:{tries}")
        log.info("follow-up generation failed, will retry",
                 extra={"followup_id": request.followup_id, "tries": tries, "error": str(exc)})

    async def _defer(self, attempt: FollowupAttempt, lease_end: int) -> None:
        """Another copy's try is running: look again when its lease ends, in case it crashed."""
        retry = dataclasses.replace(attempt, not_before=lease_end)
        await self._send(self.wiring.topic(FOLLOWUPS_RETRY), attempt.request, retry.to_json())
        log.info("follow-up busy elsewhere, deferred", extra={"followup_id": attempt.request.followup_id})

    async def _give_up(self, record: ConsumerRecord, tries: int, request: FollowupRequest, reason_label: str,
                       reason: str) -> None:
        await self.wiring.record_dead_letter(STAGE, reason_label, reason, record)
        await self._settle(request, DEAD_LETTERED, reason_label, tries)

    async def _settle(self, request: FollowupRequest, outcome: str, reason: str | None, tries: int) -> None:
        """The outcome record first, then the ledger: a crash in between repeats, never loses."""
        await self._send(self.wiring.topic(FOLLOWUP_OUTCOMES), request,
                         FollowupOutcome.of(request, outcome, reason, tries, wall_ms()).to_json())
        await self.ledger.set_state(request, final_state(outcome, reason))
        if outcome == GENERATED:
            self.metrics.followups_generated.labels(app=request.app).inc()
        elif outcome == CANCELLED:
            self.metrics.followups_cancelled.labels(app=request.app, reason=label(reason)).inc()
        else:
            self.metrics.followups_dead_lettered.labels(reason=label(reason)).inc()
        log.info("follow-up %s", outcome, extra={"followup_id": request.followup_id, "reason": reason, "tries": tries})

    async def _send(self, topic, request: FollowupRequest, value: bytes) -> None:
        # force: published now and acknowledged before the ledger moves on.
        sent = await topic.send(key=request.user_id.encode(), value=value, force=True)
        await sent


def _safe_text(language: str) -> FinalText:
    final = finalize(safe_template(language), language)
    return dataclasses.replace(final, replaced=True, reasons=("too long for the app",))


def install(wiring: Wiring) -> None:
    settings = wiring.settings
    generator = Generator(wiring, RegistryFile(settings.registry))
    prefix = settings.topic_prefix
    stage = RecordTasks(STAGE, generator.handle, topic_name(FOLLOWUPS_RETRY, prefix),
                        fresh=REQUESTS_PER_LLM_SLOT * settings.llm_concurrency, retries=RETRIES_IN_FLIGHT)
    # Its records go out through the worker's Faust producer, each acknowledged as it ends.
    wiring.install_batch_stage(STAGE, [topic_name(FOLLOWUPS_REQUESTED, prefix), stage.retry_topic], stage,
                               settled=stage.unfinished.settled)

    @wiring.app.on_before_shutdown.connect
    async def close_llm_client(sender, **kwargs):
        await stage.stop()
        await generator.close()
