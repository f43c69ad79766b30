"""The Chat Completions client against a real local HTTP server, and the offline writer."""
from __future__ import annotations

import asyncio
import pathlib
import random
import sys
import time
from dataclasses import dataclass

import aiohttp
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from domain.honesty import LANGUAGES, check_text
from domain.writing import LLMError, OfflineWriter, PromptInputs, build_prompt, topic_of
from streams.llm import ChatCompletionsClient, CircuitBreaker, CircuitOpen, LLMConfig, make_writer
from foundation.settings import Settings
from schemas.records import MessageEvent
from tests.fake_llm import HUMAN_TEXT, OK_TEXT, PRESSURE_TEXT, FakeLLM


@dataclass(frozen=True)
class Bot:
    id: str = "maestro"
    name: str = "Maestro of Movie Magic"
    persona: str = "A warm film-music lover who suggests soundtracks and composers."
    language: str = "en"


@dataclass(frozen=True)
class Said:
    direction: str
    text: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FixedRandom(random.Random):
    """Full jitter draws ``fraction * cap``: a fixed fraction makes the waits exact."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


class RecordedSleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


CONTEXT = [Said("inbound", "Hi!"), Said("outbound", "Hello! What shall we talk about?"),
           Said("inbound", "Any film music tips?")]


def client_for(fake: FakeLLM, **options) -> ChatCompletionsClient:
    extra = {name: options.pop(name) for name in ("clock", "rng", "sleep") if name in options}
    config = dict(base_url=fake.base_url, model="test-model", timeout=2.0, attempts=3,
                  backoff_base=0.001, backoff_max=0.01, breaker_threshold=100)
    config.update(options)
    return ChatCompletionsClient(LLMConfig(**config), **extra)


async def write(client: ChatCompletionsClient) -> str:
    return await client.write(PromptInputs(bot=Bot(), context=CONTEXT))


async def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


# -- requests and answers ----------------------------------------------------------------

async def test_sends_standard_fields_and_returns_the_content():
    async with FakeLLM("ok", include_usage=False) as fake, client_for(fake, api_key="sk-test") as client:
        assert await write(client) == OK_TEXT
    body = fake.last_body
    assert set(body) == {"model", "messages", "max_tokens", "temperature"}
    assert body["model"] == "test-model"
    assert body["messages"][0]["role"] == "system"
    assert "Maestro of Movie Magic" in body["messages"][0]["content"]
    assert fake.last_headers["Authorization"] == "Bearer sk-test"


async def test_no_authorization_header_without_a_key():
    async with FakeLLM("ok") as fake, client_for(fake) as client:
        await write(client)
    assert "Authorization" not in fake.last_headers


async def test_quotes_around_the_whole_answer_are_removed():
    async with FakeLLM("ok", reply="“Hello there!”") as fake, client_for(fake) as client:
        assert await write(client) == "Hello there!"


@pytest.mark.parametrize("mode,text", [("pressure", PRESSURE_TEXT), ("human", HUMAN_TEXT)])
async def test_bad_texts_come_back_unchanged_for_the_honesty_check(mode, text):
    async with FakeLLM(mode) as fake, client_for(fake) as client:
        written = await write(client)
    assert written == text and check_text(written, "en")


# -- retries -------------------------------------------------------------------------------

async def test_server_errors_are_retried_until_success():
    async with FakeLLM("error500", fail_times=2) as fake, client_for(fake, attempts=3) as client:
        assert await write(client) == OK_TEXT
    assert fake.requests == 3


async def test_flaky_fails_then_answers():
    async with FakeLLM("flaky", fail_times=1) as fake, client_for(fake, attempts=2) as client:
        assert await write(client) == OK_TEXT
    assert fake.requests == 2


async def test_rate_limit_waits_for_retry_after_then_succeeds():
    sleeps = RecordedSleeps()
    async with FakeLLM("rate429", fail_times=1, retry_after="3") as fake, client_for(fake, sleep=sleeps) as client:
        assert await write(client) == OK_TEXT
    assert sleeps == [3.0]
    assert fake.requests == 2


async def test_retry_after_longer_than_allowed_ends_the_call_at_once():
    async with FakeLLM("rate429", retry_after="120") as fake, client_for(fake, max_retry_after=30) as client:
        with pytest.raises(LLMError) as caught:
            await write(client)
    assert caught.value.retryable and caught.value.status == 429 and caught.value.retry_after == 120
    assert fake.requests == 1


async def test_backoff_is_full_jitter_under_an_exponential_cap():
    sleeps = RecordedSleeps()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=4, backoff_base=0.5, backoff_max=1.5, rng=FixedRandom(0.5), sleep=sleeps,
    ) as client:
        with pytest.raises(LLMError) as caught:
            await write(client)
    # caps 0.5, 1.0, then 2.0 held to backoff_max 1.5; half of each with the fixed draw
    assert sleeps == [0.25, 0.5, 0.75]
    assert caught.value.retryable and caught.value.status == 500
    assert fake.requests == 4


async def test_client_errors_are_not_retried():
    async with FakeLLM("bad_request") as fake, client_for(fake, attempts=3) as client:
        with pytest.raises(LLMError) as caught:
            await write(client)
    assert not caught.value.retryable and caught.value.status == 400
    assert fake.requests == 1


@pytest.mark.parametrize("mode", ["garbage", "no_choices"])
async def test_garbage_is_a_retryable_error(mode):
    async with FakeLLM(mode) as fake, client_for(fake, attempts=2) as client:
        with pytest.raises(LLMError, match="not a chat completion") as caught:
            await write(client)
    assert caught.value.retryable
    assert fake.requests == 2


async def test_slow_answer_hits_the_timeout():
    async with FakeLLM("slow", slow_delay=10) as fake, client_for(fake, timeout=0.2, attempts=2) as client:
        started = time.monotonic()
        with pytest.raises(LLMError, match="no answer within"):
            await write(client)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0  # two attempts of 0.2s, not the server's 10s
    assert fake.requests == 2


async def test_connection_refused_is_a_retryable_error():
    fake = FakeLLM()
    await fake.start()
    await fake.stop()  # the port is now closed
    async with client_for(fake, attempts=2) as client:
        with pytest.raises(LLMError, match="connection error") as caught:
            await write(client)
    assert caught.value.retryable


# -- circuit breaker -------------------------------------------------------------------------

async def test_circuit_opens_after_consecutive_failures_and_fails_fast():
    clock = FakeClock()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=1, breaker_threshold=3, breaker_cooldown=30, clock=clock,
    ) as client:
        for _ in range(3):
            with pytest.raises(LLMError) as caught:
                await write(client)
            assert not isinstance(caught.value, CircuitOpen)
        clock.now += 29
        with pytest.raises(CircuitOpen) as opened:
            await write(client)
    assert opened.value.retry_in == pytest.approx(1.0)
    assert fake.requests == 3  # the refused call never reached the server


async def test_half_open_trial_success_closes_the_circuit():
    clock = FakeClock()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=1, breaker_threshold=2, breaker_cooldown=30, clock=clock,
    ) as client:
        for _ in range(2):
            with pytest.raises(LLMError):
                await write(client)
        fake.set_mode("ok")
        clock.now += 30
        assert client.breaker.state == "half-open"
        assert await write(client) == OK_TEXT
        assert client.breaker.state == "closed"
        assert await write(client) == OK_TEXT
    assert fake.requests == 4


async def test_half_open_trial_failure_opens_the_circuit_again():
    clock = FakeClock()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=1, breaker_threshold=2, breaker_cooldown=30, clock=clock,
    ) as client:
        for _ in range(2):
            with pytest.raises(LLMError):
                await write(client)
        clock.now += 30
        with pytest.raises(LLMError) as trial:
            await write(client)
        assert not isinstance(trial.value, CircuitOpen)
        with pytest.raises(CircuitOpen):
            await write(client)
    assert fake.requests == 3  # one failure opened it again at once


async def test_half_open_lets_exactly_one_trial_through():
    clock = FakeClock()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=1, breaker_threshold=1, breaker_cooldown=30, clock=clock,
    ) as client:
        with pytest.raises(LLMError):
            await write(client)
        fake.set_mode("ok")
        fake.ok_delay = 0.2  # the trial is still in flight when the second call starts
        clock.now += 30
        results = await asyncio.gather(write(client), write(client), return_exceptions=True)
    assert sorted(type(result).__name__ for result in results) == ["CircuitOpen", "str"]
    assert fake.requests == 2


async def test_open_circuit_fails_fast_without_waiting_for_a_busy_slot():
    clock = FakeClock()
    async with FakeLLM("error500") as fake, client_for(
        fake, attempts=1, concurrency=1, breaker_threshold=1, breaker_cooldown=30, clock=clock,
    ) as client:
        with pytest.raises(LLMError):
            await write(client)
        fake.set_mode("ok")
        fake.ok_delay = 1.0
        clock.now += 30
        trial = asyncio.create_task(write(client))
        await wait_until(lambda: fake.in_flight == 1)
        with pytest.raises(CircuitOpen):
            await write(client)
        assert fake.in_flight == 1  # refused while the trial still held the only slot
        assert await trial == OK_TEXT
    assert fake.requests == 2


def test_breaker_gives_the_half_open_trial_to_one_caller_until_it_ends():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    assert breaker.before_attempt() is False  # closed: not a trial
    breaker.record_failure()
    with pytest.raises(CircuitOpen):
        breaker.before_attempt()
    clock.now += 10
    assert breaker.before_attempt() is True
    with pytest.raises(CircuitOpen):
        breaker.before_attempt()  # a second caller, queued behind a slot, is refused
    breaker.abandon_trial()  # the trial was cancelled: another caller may try
    assert breaker.before_attempt() is True
    breaker.record_success()
    assert breaker.state == "closed"


def test_breaker_counts_only_consecutive_failures():
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=FakeClock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


async def test_circuit_opening_stops_the_retries_of_a_call():
    async with FakeLLM("error500") as fake, client_for(fake, attempts=5, breaker_threshold=2) as client:
        # It made calls, so it is a failed try (counted), not a refusal by the open breaker.
        with pytest.raises(LLMError, match="then the circuit opened") as stopped:
            await write(client)
        assert not isinstance(stopped.value, CircuitOpen)
        with pytest.raises(CircuitOpen):  # the next one makes none
            await write(client)
    assert fake.requests == 2


# -- concurrency -------------------------------------------------------------------------------

async def test_concurrency_bound_holds_on_the_server():
    # Each answer takes 0.1s: without the bound all six would be in flight together.
    async with FakeLLM("ok", ok_delay=0.1) as fake, client_for(fake, concurrency=2) as client:
        texts = await asyncio.gather(*(write(client) for _ in range(6)))
    assert texts == [OK_TEXT] * 6
    assert fake.max_in_flight == 2


# -- the fake as a process, for end-to-end tests ----------------------------------------

async def test_fake_runs_as_a_process_and_switches_mode():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fake_llm", "--port", "0", "--mode", "flaky", "--fail-times", "1",
        cwd=pathlib.Path(__file__).resolve().parents[1], stdout=asyncio.subprocess.PIPE,
    )
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), timeout=15)
        assert ready.startswith(b"ready http://127.0.0.1:")
        config = LLMConfig(base_url=ready.split()[1].decode(), model="m", backoff_base=0.001)
        async with ChatCompletionsClient(config) as client:
            assert await write(client) == OK_TEXT  # after one 500
            control = config.base_url.removesuffix("/v1") + "/_control"
            async with aiohttp.ClientSession() as session, session.post(control, json={"mode": "human"}) as switched:
                assert (await switched.json())["requests"] == 2
            assert await write(client) == HUMAN_TEXT
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


# -- the prompt ----------------------------------------------------------------------------------

def test_prompt_holds_persona_rules_and_alternating_turns():
    context = [Said("outbound", "Welcome!"), Said("inbound", "Hi"), Said("inbound", "Any tips?"),
               Said("outbound", "Try Morricone."), Said("inbound", ""), Said("outbound", "Or Hisaishi.")]
    messages = build_prompt(Bot(), context, "fr")
    system = messages[0]["content"]
    assert Bot.persona in system and "French" in system
    for rule in ("One short message", "No pressure", "Never claim to be human", "never mention time away"):
        assert rule in system
    turns = messages[1:]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"] == "Hi\nAny tips?"  # the bot's greeting before the user is dropped
    assert turns[1]["content"] == "Try Morricone.\nOr Hisaishi."
    assert turns[2]["content"].startswith("[Relance")


def test_prompt_ends_with_the_task_in_the_last_user_turn():
    messages = build_prompt(Bot(), CONTEXT, "en")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"].startswith("Any film music tips?\n\n[Relance")


def test_prompt_bounds_each_turn():
    messages = build_prompt(Bot(), [Said("inbound", "x" * 8192)], "en")
    assert len(messages[1]["content"]) < 1200


def test_provider_is_offline_without_a_base_url_and_the_client_with_one():
    writer, label = make_writer(Settings())
    assert isinstance(writer, OfflineWriter) and label == "offline"
    client, label = make_writer(Settings(llm_base_url="http://127.0.0.1:1/v1", llm_timeout=5000, llm_concurrency=3))
    assert isinstance(client, ChatCompletionsClient) and label == "openai"
    assert client.url == "http://127.0.0.1:1/v1/chat/completions"
    assert (client.config.timeout, client.config.concurrency) == (5.0, 3)


# -- the offline writer -------------------------------------------------------------------------

TOPIC_CONTEXTS = {
    "en": ("Any film music tips?", "film music tips"),
    "fr": ("Tu as des conseils de musique de film ?", "conseils de musique de film"),
    "es": ("¿Me recomiendas bandas sonoras de ciencia ficción?", "bandas sonoras de ciencia ficción"),
    "pt": ("Você conhece trilhas sonoras de faroeste?", "conhece trilhas sonoras de faroeste"),
}


@pytest.mark.parametrize("language", LANGUAGES)
async def test_offline_writer_uses_the_topic_and_the_name_and_passes_the_check(language):
    said, topic = TOPIC_CONTEXTS[language]
    context = [Said("inbound", "Hello"), Said("outbound", "Hi!"), Said("inbound", said)]
    text = await OfflineWriter().write(PromptInputs(bot=Bot(language=language), context=context))
    assert topic in text and Bot.name in text
    assert check_text(text, language) == []


@pytest.mark.parametrize("language", LANGUAGES)
async def test_offline_writer_without_a_topic_still_writes_a_passing_text(language):
    context = [Said("inbound", "ok 👍"), Said("outbound", "Great!")]
    text = await OfflineWriter().write(PromptInputs(bot=Bot(language=language), context=context))
    assert Bot.name in text and check_text(text, language) == []


async def test_offline_writer_never_repeats_pressure_from_the_users_words():
    context = [Said("inbound", "Is this my last chance?")]
    assert topic_of(context) == "last chance"
    text = await OfflineWriter().write(PromptInputs(bot=Bot(), context=context))
    assert check_text(text, "en") == [] and Bot.name in text


def test_topic_leaves_out_links_handles_and_numbers():
    said = "Call me at 555 1234 or see https://example.com/x about @bob jazz piano"
    assert topic_of([MessageEvent("e", "whatsapp", "u", "b", "inbound", 0, said)]) == "jazz piano"


@pytest.mark.parametrize("said", ["haha", "lol ok", "jajaja vale", "mdr", "kkkk beleza"])
def test_laughter_and_filler_are_no_topic(said):
    # "I had a few more thoughts about «haha»" reads as a bot that did not listen.
    assert topic_of([Said("inbound", said)]) == ""


def test_topic_comes_from_the_last_inbound_message_and_sentence():
    context = [Said("inbound", "I like rock."), Said("inbound", "Thanks! What about jazz piano?"),
               Said("outbound", "Great question about Coltrane.")]
    assert topic_of(context) == "jazz piano"


@hypothesis_settings(max_examples=300, deadline=None)
@given(language=st.sampled_from(LANGUAGES), said=st.text(max_size=300),
       name=st.sampled_from(["Maestro of Movie Magic", "Chef Lou", "Ana"]))
async def test_offline_writer_is_never_refused(language, said, name):
    bot = Bot(name=name, language=language)
    text = await OfflineWriter().write(PromptInputs(bot=bot, context=[Said("inbound", said)]))
    assert check_text(text, language) == []
