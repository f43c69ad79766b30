"""Writing a follow-up, with no network: what a writer needs, the prompt, and the offline writer.

A ``TextProvider`` turns ``PromptInputs`` into text: ``await provider.write(inputs) -> str``.
The offline writer here is one; the Chat Completions client (``streams/llm.py``) is the
other. The text either returns is not final: ``domain.honesty.finalize`` checks it and
adds the disclosure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from domain.honesty import check_text, language_of, normalize

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


# -- errors ----------------------------------------------------------------------------------
class LLMError(Exception):
    """A call to the LLM failed. ``retryable``: the same request may succeed later."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


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
