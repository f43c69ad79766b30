"""Writing a follow-up: an OpenAI-compatible Chat Completions client, and an offline writer.

Both are ``TextProvider``s: ``await provider.write(PromptInputs(...)) -> str``. The text
they return is not final: ``agents.honesty.finalize`` checks it and adds the disclosure.

The client speaks only the standard fields (``model``, ``messages``, ``max_tokens``,
``temperature``; ``choices[0].message.content`` back, ``usage`` optional), so it works
with OpenAI, vLLM, Ollama and the llama.cpp server alike.
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Protocol, Sequence

import aiohttp
import orjson

from agents.honesty import check_text, language_of, normalize

__all__ = [
    "BotPersona", "ChatCompletionsClient", "CircuitBreaker", "CircuitOpen", "ContextMessage",
    "LLMConfig", "LLMError", "OfflineWriter", "PromptInputs", "TextProvider", "build_prompt",
    "make_provider", "topic_of",
]


# -- what a writer needs -----------------------------------------------------------------

class BotPersona(Protocol):
    """The part of a registry entry a writer reads (``schemas.registry`` has the real one)."""

    id: str
    name: str
    persona: str
    language: str


class ContextMessage(Protocol):
    """One message of the pair's recent conversation; ``MessageEvent`` is one."""

    direction: str  # "inbound" (the user wrote it) or "outbound" (the bot did)
    text: str


@dataclass(frozen=True, slots=True)
class PromptInputs:
    bot: BotPersona
    context: Sequence[ContextMessage]  # oldest first
    language: str | None = None  # the bot's language when None

    @property
    def reply_language(self) -> str:
        return language_of(self.language or self.bot.language)


class TextProvider(Protocol):
    async def write(self, prompt_inputs: PromptInputs) -> str:
        """The follow-up text, before the honesty check and the disclosure line."""


# -- the prompt ----------------------------------------------------------------------------

_LANGUAGE_NAMES = {"en": "English", "fr": "French", "es": "Spanish", "pt": "Portuguese"}
# Keeps the prompt bounded: a context message may hold 8192 characters.
_MAX_TURN_CHARS = 1000

_RULES = """\
The conversation below went quiet. Write the one message you send now, on your own initiative.
Rules:
- One short message: one to three sentences, no more than 300 characters.
- Write in {language}.
- Be warm and stay in character. Pick up something the user cared about.
- No pressure: no guilt, no fear of missing out, no urgency, no neediness.
- Never say you miss the user, never ask why they left or went quiet, never mention time away.
- Never claim to be human; you are an AI character.
- Write only the message text: no quotes, no notes, no sign-off with your name."""

_TASK = "[Relance, not the user: write your one follow-up message now, following the rules.]"


def build_prompt(bot: BotPersona, context_messages: Sequence[ContextMessage], language: str | None) -> list[dict]:
    """Chat Completions messages: the persona and rules, the recent turns, then the task."""
    system = (
        f"You are {bot.name}, an AI character. Persona: {bot.persona.strip()}\n\n"
        + _RULES.format(language=_LANGUAGE_NAMES[language_of(language or bot.language)])
    )
    turns = _alternating_turns(context_messages)
    # The task goes last as a user turn: templates such as Mistral's reject two assistant
    # turns in a row or a conversation that does not end with the user.
    if turns and turns[-1]["role"] == "user":
        turns[-1]["content"] += "\n\n" + _TASK
    else:
        turns.append({"role": "user", "content": _TASK})
    return [{"role": "system", "content": system}, *turns]


def _alternating_turns(context_messages: Sequence[ContextMessage]) -> list[dict]:
    """User/assistant turns, merged where one side wrote twice, starting with the user.

    Strict chat templates (Mistral, Gemma, some llama.cpp ones) refuse roles that do not
    alternate or a first turn that is not the user's.
    """
    turns: list[dict] = []
    for message in context_messages:
        text = message.text.strip()[:_MAX_TURN_CHARS]
        role = "user" if message.direction == "inbound" else "assistant"
        if not text or (not turns and role == "assistant"):
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})
    return turns


# -- errors and the circuit breaker ------------------------------------------------------

class LLMError(Exception):
    """A call to the LLM failed. ``retryable``: the same request may succeed later."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


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
            self.breaker.raise_if_open()
            try:
                text = await self._guarded_attempt(messages)
            except _Retryable as exc:
                self.breaker.record_failure()
                delay = self._delay(attempt, exc.retry_after)
                if attempt == self.config.attempts or delay is None:
                    raise LLMError(f"LLM call failed after {attempt} attempt(s): {exc}", retryable=True,
                                   status=exc.status, retry_after=exc.retry_after) from exc
                await self._sleep(delay)
            except CircuitOpen:
                raise
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
        raise _Retryable(detail, status, _retry_after(response.headers.get("Retry-After")))
    if status >= 500:
        raise _Retryable(detail, status)
    raise LLMError(detail, retryable=False, status=status)


def _retry_after(value: str | None) -> float | None:
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


# -- the offline writer ----------------------------------------------------------------------

# Words that carry no topic, in the four languages together: a user may write in another
# language than the bot's.
_STOPWORDS = frozenset("""
a about actually after again all also am an and any anything are as at be been but by can
could did do does doing for from get got had has have having he her here hey hi hello him
his how i if im in into is it its just know let like maybe me more most my no not now of oh
ok okay on one or our out please really right say see she so some something tell than thank
thanks that the their them then there these they thing things think this to too u up us very
want was we well were what when where which who why will with would yeah yes you your
should shall might must gonna wanna haha hahaha hehe lol lmao cool nice great awesome wow yep
nope sure mdr ptdr jaja jajaja vale claro kkk kkkk beleza valeu
ai jai alors au aussi avec bonjour c ca ce cela ces cest comme comment d dans de des du elle en
est et etre fait il ils j je l la le les leur lui m ma mais me merci mes moi mon n ne nous on
ou par pas peu peux plus pour pourquoi quand que quel quelle qui quoi s sa salut se ses si son
sont sur t ta te tes toi ton tres tu un une vous y
al algo bien como con cual del el ella ellos es esta este esto estoy gracias hay hola la las
lo los mas mi muy nada para pero por porque puedes que se sin sobre su sus tambien te tengo ti
tu una uno unos y ya yo
agora ao aos as e ela ele eles em entao essa esse eu isso mais meu minha muito na nao nas no
nos o obrigada obrigado oi ola os ou pode porque quando sim sua seu tem tenho um uma voce
""".split())
_URL_OR_HANDLE = re.compile(r"(?:https?://|www\.)\S+|@\w+")
_WORD = re.compile(r"[^\W\d_][^\W\d_'’-]*")  # letters only: digits may be phone numbers
_SENTENCE_END = re.compile(r"[.!?\n]+")
_MAX_TOPIC_WORDS = 5

_OFFLINE_TEMPLATES = {
    "en": ("Hi, it's {name}! I had a few more thoughts about “{topic}”. Would you like to hear them? Only if you feel like it.",
           "Hi, it's {name}! Whenever you feel like chatting, I'm happy to pick up our conversation. Have a lovely day!"),
    "fr": ("Bonjour, c'est {name} ! J'ai eu quelques idées de plus sur « {topic} ». Voulez-vous en parler ? Seulement si ça vous dit.",
           "Bonjour, c'est {name} ! Quand vous voulez discuter, je reprends la conversation avec plaisir. Belle journée !"),
    "es": ("¡Hola, soy {name}! Se me ocurrieron algunas ideas más sobre «{topic}». ¿Te gustaría conocerlas? Solo si te apetece.",
           "¡Hola, soy {name}! Cuando te apetezca charlar, retomo la conversación con gusto. ¡Que tengas un buen día!"),
    "pt": ("Olá, é {name}! Tive mais algumas ideias sobre “{topic}”. Quer ouvi-las? Só se tiver vontade.",
           "Olá, é {name}! Quando quiser conversar, retomo a conversa com prazer. Tenha um ótimo dia!"),
}


class OfflineWriter:
    """Writes a warm follow-up from templates, with no network: the default when no LLM
    base URL is set, and what tests and replays use."""

    async def write(self, prompt_inputs: PromptInputs) -> str:
        language = prompt_inputs.reply_language
        with_topic, without_topic = _OFFLINE_TEMPLATES[language]
        name = prompt_inputs.bot.name.strip() or prompt_inputs.bot.id
        topic = topic_of(prompt_inputs.context)
        if topic:
            text = with_topic.format(name=name, topic=topic)
            # The topic is the user's own words: they may hold a phrase the honesty check
            # refuses ("last chance"), so a refused text falls back to the plain template.
            if not check_text(text, language):
                return text
        return without_topic.format(name=name)


def topic_of(context: Sequence[ContextMessage]) -> str:
    """A few words of the user's last inbound message that carry its topic, or ``""``."""
    last_inbound = next((m.text for m in reversed(context) if m.direction == "inbound" and m.text.strip()), "")
    sentences = _SENTENCE_END.split(_URL_OR_HANDLE.sub(" ", last_inbound))
    for sentence in reversed(sentences):  # the last sentence is usually the live question
        words = _WORD.findall(sentence)
        content = [i for i, word in enumerate(words) if _key(word) not in _STOPWORDS and len(word) > 1]
        if content:
            # The end of a question usually names its subject ("... about jazz piano?").
            span = words[content[0]:content[-1] + 1][-_MAX_TOPIC_WORDS:]
            while _key(span[0]) in _STOPWORDS:
                span.pop(0)
            return " ".join(span)
    return ""


def _key(word: str) -> str:
    return normalize(word).replace("'", "").replace("’", "")


# -- choosing a provider ---------------------------------------------------------------------

def make_provider(settings: Any, **client_options: Any) -> TextProvider:
    """The Chat Completions client when ``llm_base_url`` is set, else the offline writer."""
    if not settings.llm_base_url:
        return OfflineWriter()
    return ChatCompletionsClient(LLMConfig.from_settings(settings), **client_options)
