"""The sender: each generated follow-up posted to its app's send API, at most once (spec section 9).

Records come from ``delivery.<app>`` (the generator) and ``delivery.retry`` (sends put off
here). For each one, in this order:

1. the bot's sending account and its token, read now from where the registry says; a bot
   whose token is missing, or was refused (190), waits on ``delivery.retry`` until it
   works again (``domain.sendapi.TokenGate``), nothing lost;
2. a slot of the account's send rate, shared by every sender (``streams/ratelimit.py``);
3. the ledger: ``sending`` is written before the call goes out (``streams/ledger.py``);
   a copy that finds another's ``sending`` waits for its lease, and one whose lease ran
   out is ``unknown``, never sent again; a field Redis lost is looked up on
   ``followups.attempts`` (``streams/attempts.py``): a call kept there is ``unknown`` too;
4. the last-moment check (``domain/lastcheck.py``), right before the call;
5. the call's record on ``followups.attempts``, acknowledged by Kafka before the call;
6. the slot again: one older than half the slack (steps 3 to 5 held up on a loaded
   machine) is given back unused for a fresh one, once, so that the call lands at the
   platform within the slack of its slot; waited for only while the call can still end within
   its ``sending`` lease, else the send is put off as not reached;
7. the call (``streams/graphapi.py``), read by its error code (``domain/sendapi.py``):
   ``sent``, ``failed``, ``cancelled:window_closed`` or ``unknown`` end the follow-up;
   a 429, a 5xx, a connection that never opened, or a refused token put it off on
   ``delivery.retry``, with backoff and jitter, while its messaging window is open.

Every ending is written ``ending`` in the ledger, published on ``followups.outcomes``,
then made final: a crash in between publishes it again, never loses it. The sender runs
on the batch loop (``streams/kafkaloop.py``'s ``RecordTasks``): a record's offset is
committed only once its outcome, or its next copy, is acknowledged by Kafka.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from functools import cached_property

from aiokafka import ConsumerRecord

from domain.lastcheck import cancel_reason, window_closed
from domain.sendapi import (
    FAILED, NOT_REACHED, SENT, SLOW_DOWN, TOKEN_REFUSED, UNKNOWN, WINDOW_CLOSED, TokenGate, Verdict, code_label,
    rate_window, retry_delay_ms, send_rate,
)
from foundation.clock import wall_ms
from foundation.metrics import label
from schemas.records import DeliveryRecord, FollowupOutcome, InvalidRecord, SendAttempt, loads, parse_send_attempt
from schemas.registry import RegistryFile
from streams.attempts import AttemptLog
from streams.graphapi import GraphAPI, read_token
from streams.lastcheck import pair_now
from streams.ledger import (
    BUSY, CANCELLED, CLAIMED, DEAD_LETTERED, ENDING, LOST, MISSING, PENDING, Ledger, ending_state, final_of,
    final_state, ledger_ttl_s, outcome_of, sending_state,
)
from streams.ratelimit import SendRateLimiter, Slot
from streams.kafkaloop import RecordTasks
from streams.topics import DELIVERY_BY_APP, DELIVERY_RETRY, FOLLOWUP_OUTCOMES, FOLLOWUPS_ATTEMPTS, topic_name
from streams.wiring import Wiring

log = logging.getLogger("relance.sender")

STAGE = "sender"
MAX_HOLD_S = 30.0          # a retry never sleeps longer on one record; a later one goes round again
# Retries in flight at once: each sleeps until its record is due, so they are many (a
# sleeping coroutine costs little) and short sends do not queue behind held ones.
RETRY_ACTORS = 256
MAX_LIMITER_WAIT_S = 5.0   # longer, and the send is put off rather than hold a sender
LEASE_MARGIN_MS = 5_000    # beyond the call's own timeout, before another copy may call it lost
PENDING_POLL_MS = 2_000    # the generator's ledger write that follows its delivery
SLOW_DOWN_MS = 1_000       # how long an account pauses after a throughput error without a hint


class Sender:
    def __init__(self, wiring: Wiring, registry: RegistryFile, rng: random.Random | None = None) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.metrics = wiring.metrics
        self.registry = registry
        self.rng = rng or random.Random()
        self.gate = TokenGate(self.settings.send_token_probe)
        self._sending = asyncio.Semaphore(self.settings.send_concurrency)
        self.graph = GraphAPI(self.settings.graph_base_url, self.settings.graph_api_version,
                              self.settings.send_timeout / 1000)

    @cached_property
    def attempts(self) -> AttemptLog:
        return AttemptLog(self.settings.broker, topic_name(FOLLOWUPS_ATTEMPTS, self.settings.topic_prefix),
                          self.wiring.kafka_security, self.wiring.producer, self.metrics)

    @cached_property
    def ledger(self) -> Ledger:
        # First used inside the worker's event loop.
        return Ledger(self.wiring.redis, ledger_ttl_s(self.settings), calls_made=self.attempts.calls_made)

    @cached_property
    def limiter(self) -> SendRateLimiter:
        return SendRateLimiter(self.wiring.redis, self.rng)

    async def close(self) -> None:
        await self.graph.close()

    # -- input ---------------------------------------------------------------------

    async def handle(self, record: ConsumerRecord, from_retry: bool = False) -> None:
        try:
            attempt = parse_send_attempt(loads(record.value))
        except InvalidRecord as exc:
            await self.wiring.record_dead_letter(STAGE, exc.kind, str(exc), record)
            return
        if from_retry and attempt.not_before is not None:
            wait_s = (attempt.not_before - wall_ms()) / 1000
            await asyncio.sleep(min(max(wait_s, 0.0), MAX_HOLD_S))
            if wait_s > MAX_HOLD_S:  # not due yet: round again
                await self._publish(DELIVERY_RETRY, attempt.delivery, attempt.to_json())
                return
        await self._try(record, attempt)

    async def _try(self, source: ConsumerRecord, attempt: SendAttempt) -> None:
        async with self._sending:
            await self._try_one(source, attempt)

    async def _try_one(self, source: ConsumerRecord, attempt: SendAttempt) -> None:
        record = attempt.delivery
        bot = self.registry.current().get(record.bot_id)
        account = bot.sending_account(record.app) if bot is not None else None
        if account is None:
            await self._dead_letter(source, attempt, f"bot {record.bot_id!r} has no {record.app} account in the registry")
            return
        token, gate_passed_at = read_token(bot.tokens.get(record.app)), wall_ms()
        if token is None or not self.gate.may_send(bot.id, record.app, token, gate_passed_at):
            self.metrics.send_token_ok.labels(app=record.app, bot=bot.id).set(0)
            await self._put_off(attempt, self.settings.send_token_probe, "token missing or refused")
            return
        slot = await self._slot(record.app, account, MAX_LIMITER_WAIT_S)
        if slot is None:
            await self._put_off(attempt, 0, "no send slot")
            return
        now = wall_ms()
        lease_end = now + self.settings.send_timeout + LEASE_MARGIN_MS
        verdict = await self.ledger.claim_send(record.request, attempt.tries, now, lease_end)
        if verdict == CLAIMED:
            await self._call(attempt, account, token, bot.id, slot, lease_end, gate_passed_at)
        else:
            await self._not_claimed(attempt, verdict, lease_end)

    async def _not_claimed(self, attempt: SendAttempt, verdict: str, lease_end: int) -> None:
        request = attempt.delivery.request
        kind, _, rest = verdict.partition(":")
        if kind == MISSING:  # erased: nothing of the user may be written again
            await self._publish_outcome(request, CANCELLED, "erased", attempt.tries)
        elif kind == PENDING:
            await self._put_off(attempt, PENDING_POLL_MS, "the generator is not done")
        elif kind == BUSY:
            await self._put_off(attempt, max(0, int(rest) - wall_ms()), "another copy is sending")
        elif kind == LOST:  # its holder died mid-call: the platform may have it
            attempt_number, final = rest.split(":", 1)
            self.metrics.sends.labels(app=request.app, result=UNKNOWN).inc()
            await self._announce(request, ending_state(lease_end, final), None, int(attempt_number))
        elif kind == ENDING:
            await self._announce(request, ending_state(lease_end, rest), None, attempt.tries)
        else:
            self.metrics.duplicates.labels(app=request.app).inc()
            log.info("duplicate delivery dropped", extra={"followup_id": request.followup_id, "verdict": verdict})

    # -- one call --------------------------------------------------------------------

    async def _slot(self, app: str, account: str, max_wait_s: float, replacing: Slot | None = None) -> Slot | None:
        limit, window_ms = rate_window(send_rate(self.settings, app, account), self.settings.send_rate_slack)
        slot = await self.limiter.acquire(app, account, limit, window_ms, max_wait_s, replacing)
        if slot is not None:
            self.metrics.send_limiter_wait.labels(app=app).observe(slot.waited)
        return slot

    async def _fresh_slot(self, app: str, account: str, slot: Slot, lease_end: int) -> bool:
        """The call may leave now, within half the slack of a slot: the other half is the
        request's way to the platform. An older slot is given back for a fresh one (no call
        used it: ``streams/ratelimit.py``), once: asking again and again would only chase
        the event loop's own lag (a loaded run that kept asking sent 8 a second). A fresh
        slot already past half the slack means the loop is that late: the call is put off
        rather than land in the platform's next second. The fresh slot is waited for only
        while the call, started now, still ends before its ``sending`` lease does: no
        other copy takes the follow-up for lost."""
        budget_s = self.settings.send_rate_slack / 2000
        if budget_s <= 0 or slot.age_s() <= budget_s:  # without slack, every slot would be too old
            return True
        left_s = (lease_end - self.settings.send_timeout - wall_ms()) / 1000
        if left_s <= 0:
            return False
        fresh = await self._slot(app, account, min(MAX_LIMITER_WAIT_S, left_s), slot)
        return fresh is not None and fresh.age_s() <= budget_s

    async def _fault_hold(self) -> None:
        """Fault injection for tests (``send_fault_hold``): a loaded machine's hold-up."""
        if self.settings.send_fault_hold and self.rng.random() < 0.5:
            await asyncio.sleep(self.settings.send_fault_hold / 1000)

    async def _call(self, attempt: SendAttempt, account: str, token, bot_id: str, slot: Slot, lease_end: int,
                    gate_passed_at: int) -> None:
        record, tries = attempt.delivery, attempt.tries + 1
        request = record.request
        sending = sending_state(tries, lease_end)
        reason = await self._cancel_reason(record)
        if reason:
            await self._end(record, sending, final_state(CANCELLED, reason), attempt.tries)
            return
        await self.attempts.record(request, tries)  # kept by Kafka before the platform may have it
        await self._fault_hold()
        if not await self._fresh_slot(record.app, account, slot, lease_end):
            # Recorded but never called: a refused try, as a 429 would be (streams/attempts.py).
            await self._retry_later(record, sending, tries, 0, Verdict(NOT_REACHED))
            return
        if self.gate.refused_since(bot_id, record.app, gate_passed_at):
            # A concurrent call learned that the token is refused while this one waited: it
            # waits with the others for the probe, as a refused try.
            await self._retry_later(record, sending, tries, self.settings.send_token_probe, Verdict(NOT_REACHED))
            return
        started = wall_ms()
        answer = await self.graph.send(record.app, account, token, record.body)
        verdict = answer.verdict
        self.metrics.send_seconds.labels(app=record.app).observe(answer.seconds)
        self.metrics.sends.labels(app=record.app, result=verdict.kind).inc()
        if verdict.code is not None:
            self.metrics.send_errors.labels(app=record.app, code=code_label(verdict.code)).inc()
        if verdict.kind != TOKEN_REFUSED and verdict.kind not in (NOT_REACHED, UNKNOWN):
            self.gate.accepted(bot_id, record.app)  # the platform took the token
            self.metrics.send_token_ok.labels(app=record.app, bot=bot_id).set(1)
        if verdict.kind == SENT:
            await self._end(record, sending, SENT, tries, verdict.message_id, started)
        elif verdict.kind == WINDOW_CLOSED:
            await self._end(record, sending, final_state(CANCELLED, WINDOW_CLOSED), tries)
        elif verdict.kind == FAILED:
            await self._end(record, sending, final_state(FAILED, verdict.code), tries)
        elif verdict.kind == UNKNOWN:
            await self._end(record, sending, UNKNOWN, tries)
        elif verdict.kind == TOKEN_REFUSED:
            self.gate.refused(bot_id, record.app, token, wall_ms())
            self.metrics.send_token_ok.labels(app=record.app, bot=bot_id).set(0)
            log.error("the platform refused the bot's token: its follow-ups wait until it works",
                      extra={"bot_id": bot_id, "app": record.app, "followup_id": request.followup_id})
            await self._retry_later(record, sending, tries, self.settings.send_token_probe, verdict)
        else:
            if verdict.kind == SLOW_DOWN:
                await self.limiter.pause(record.app, account, verdict.retry_after_ms or SLOW_DOWN_MS)
            delay = retry_delay_ms(verdict, tries, self.settings.send_backoff, self.settings.send_backoff_max, self.rng)
            await self._retry_later(record, sending, tries, delay, verdict)

    async def _cancel_reason(self, record: DeliveryRecord) -> str | None:
        request = record.request
        pair = await pair_now(self.wiring.redis, request)
        now = wall_ms() if self.settings.clock == "wall" else None
        return cancel_reason(request, pair, now, self.settings.messaging_window)

    # -- put off ---------------------------------------------------------------------

    def _window_closes_before(self, record: DeliveryRecord, moment: int) -> bool:
        leaves_at = moment if self.settings.clock == "wall" else None  # event mode: the engine judged M
        return window_closed(record.last_inbound_ts, leaves_at, self.settings.messaging_window)

    async def _retry_later(self, record: DeliveryRecord, sending: str, tries: int, delay_ms: int, verdict: Verdict) -> None:
        """Refused, so not sent: the ledger says ``retry:<tries>``, then the copy that comes back."""
        not_before = wall_ms() + delay_ms
        if self._window_closes_before(record, not_before):
            await self._end(record, sending, final_state(CANCELLED, WINDOW_CLOSED), tries)
            return
        if not await self.ledger.move(record.request, sending, f"retry:{tries}"):
            log.warning("send field moved while the call ran", extra={"followup_id": record.followup_id})
            return
        await self._publish(DELIVERY_RETRY, record, SendAttempt(record, tries, not_before).to_json())
        log.info("send put off", extra={"followup_id": record.followup_id, "verdict": verdict.kind,
                                        "code": verdict.code, "tries": tries, "delay_ms": delay_ms})

    async def _put_off(self, attempt: SendAttempt, delay_ms: int, why: str) -> None:
        """Not tried yet (no ledger move): the same attempt, back later on delivery.retry."""
        record = attempt.delivery
        not_before = wall_ms() + delay_ms
        if self._window_closes_before(record, not_before):
            await self._cancel_unclaimed(attempt)
            return
        await self._publish(DELIVERY_RETRY, record, dataclasses.replace(attempt, not_before=not_before).to_json())
        log.info("send put off", extra={"followup_id": record.followup_id, "why": why, "delay_ms": delay_ms})

    async def _cancel_unclaimed(self, attempt: SendAttempt) -> None:
        """The window closes before the send could go: claim it only to end it."""
        record = attempt.delivery
        now = wall_ms()
        lease_end = now + self.settings.send_timeout + LEASE_MARGIN_MS
        verdict = await self.ledger.claim_send(record.request, attempt.tries, now, lease_end)
        if verdict == CLAIMED:
            await self._end(record, sending_state(attempt.tries + 1, lease_end),
                            final_state(CANCELLED, WINDOW_CLOSED), attempt.tries)
        elif verdict.partition(":")[0] in (MISSING, LOST, ENDING):
            await self._not_claimed(attempt, verdict, lease_end)
        # else another copy, or the generator, holds it and ends it

    async def _dead_letter(self, source: ConsumerRecord, attempt: SendAttempt, reason: str) -> None:
        record = attempt.delivery
        now = wall_ms()
        lease_end = now + self.settings.send_timeout + LEASE_MARGIN_MS
        if await self.ledger.claim_send(record.request, attempt.tries, now, lease_end) != CLAIMED:
            return
        await self.wiring.record_dead_letter(STAGE, "unknown_bot", reason, source)
        await self._end(record, sending_state(attempt.tries + 1, lease_end),
                        final_state(DEAD_LETTERED, "unknown_bot"), attempt.tries)

    # -- endings ---------------------------------------------------------------------

    async def _end(self, record: DeliveryRecord, sending: str, final: str, tries: int,
                   message_id: str | None = None, sent_at: int = 0) -> None:
        lease_end = wall_ms() + self.settings.send_timeout + LEASE_MARGIN_MS
        ending = await self.ledger.begin_ending(record.request, sending, final, lease_end, message_id, sent_at)
        if ending is None:
            log.warning("send field moved while the call ran", extra={"followup_id": record.followup_id})
            return
        await self._announce(record.request, ending, message_id, tries)

    async def _announce(self, request, ending: str, message_id: str | None, tries: int) -> None:
        """The outcome record, then the final state: a crash in between publishes it again."""
        final = final_of(ending)
        outcome, reason = outcome_of(final)
        await self._publish_outcome(request, outcome, reason, tries)
        await self.ledger.finish(request, ending)
        log.info("follow-up %s", outcome, extra={"followup_id": request.followup_id, "reason": reason,
                                                 "tries": tries, "message_id": message_id})

    async def _publish_outcome(self, request, outcome: str, reason: str | None, tries: int) -> None:
        await self._publish(FOLLOWUP_OUTCOMES, request, FollowupOutcome.of(request, outcome, reason, tries, wall_ms()).to_json())
        if outcome == CANCELLED:
            self.metrics.followups_cancelled.labels(app=request.app, reason=label(reason)).inc()
        elif outcome == DEAD_LETTERED:
            self.metrics.followups_dead_lettered.labels(reason=label(reason)).inc()

    async def _publish(self, spec, record, value: bytes) -> None:
        # force: published now and acknowledged before the ledger moves on.
        sent = await self.wiring.topic(spec).send(key=record.user_id.encode(), value=value, force=True)
        await sent


def install(wiring: Wiring) -> None:
    settings = wiring.settings
    sender = Sender(wiring, RegistryFile(settings.registry))
    prefix = settings.topic_prefix
    stage = RecordTasks(STAGE, sender.handle, topic_name(DELIVERY_RETRY, prefix),
                        fresh=settings.send_concurrency, retries=max(RETRY_ACTORS, settings.send_concurrency))
    topics = [topic_name(spec, prefix) for spec in DELIVERY_BY_APP.values()] + [stage.retry_topic]
    # Its records go out through the worker's Faust producer, each acknowledged as it ends.
    wiring.install_batch_stage(STAGE, topics, stage, settled=stage.unfinished.settled)

    @wiring.app.on_before_shutdown.connect
    async def close_graph_client(sender_, **kwargs):
        await stage.stop()
        await sender.close()
