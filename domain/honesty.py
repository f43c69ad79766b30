"""Honest text (spec section 6): every follow-up says an AI wrote it and how to stop, and
is refused when it pressures the user or claims to be human.

Phrases are matched on normalised text (accents removed, case folded, curly apostrophes
straightened) as whole phrases between word boundaries. Every language's phrases are
checked whatever the language asked for, because a model may answer in another language.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

__all__ = [
    "EMPTY", "HUMAN_CLAIM", "LANGUAGES", "PRESSURE", "STOP_WORDS", "TOO_LONG", "FinalText",
    "check_text", "disclosure_line", "finalize", "language_of", "max_length", "normalize",
    "safe_template",
]

LANGUAGES = ("en", "fr", "es", "pt")
FALLBACK_LANGUAGE = "en"

# The words that opt a user out (spec section 6); the engine's stop-word rule and the
# disclosure line must name the same ones.
STOP_WORDS = {"en": "STOP", "fr": "ARRÊTER", "es": "PARAR", "pt": "PARAR"}

_DISCLOSURES = {
    "en": "(Written by an AI. Reply STOP to get no more messages like this.)",
    "fr": "(Message écrit par une IA. Répondez ARRÊTER pour ne plus en recevoir.)",
    "es": "(Mensaje escrito por una IA. Responde PARAR para no recibir más mensajes como este.)",
    "pt": "(Mensagem escrita por uma IA. Responda PARAR para não receber mais mensagens como esta.)",
}

# Used when a generated text is refused: warm, neutral, nothing about time away.
_SAFE_TEMPLATES = {
    "en": "Hi! If you feel like chatting again, I'm here and happy to pick things up. Have a lovely day!",
    "fr": "Bonjour ! Si vous avez envie de reprendre la conversation, je suis là avec plaisir. Belle journée !",
    "es": "¡Hola! Si te apetece seguir conversando, aquí estoy con gusto. ¡Que tengas un buen día!",
    "pt": "Olá! Se quiser continuar a conversa, estou por aqui com prazer. Tenha um ótimo dia!",
}

# One short message. Romance languages need about 15% more characters than English for
# the same sentence, so the limit follows the language.
_MAX_LENGTH = {"en": 360, "fr": 420, "es": 420, "pt": 420}

PRESSURE = "pressure"
HUMAN_CLAIM = "claims to be human"
TOO_LONG = "too long"
EMPTY = "empty"

# Regex fragments on normalised text; a space matches any run of spaces and an apostrophe
# may be left out ("dont", "im"). Accents may be written: patterns are normalised too.
_PRESSURE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        # neediness and guilt
        r"i miss you", r"i(?:'ve| have)? missed you", r"miss you so much",
        r"why did you (?:leave|go|stop|disappear)", r"why (?:did|do)n't you (?:answer|reply|write|respond)",
        r"why (?:have|haven't) you (?:not )?(?:answered|replied|written|responded)",
        r"you forgot (?:about )?me", r"(?:have|did) you forg[eo]t(?:ten)? (?:about )?me",
        r"don't (?:leave|forget|ignore) me", r"please don't go", r"you(?:'ve| have)? (?:been )?ignor(?:ed|ing) me",
        r"i(?:'ve| have) been waiting", r"i was waiting for you", r"i(?:'m| am) (?:so )?lonely",
        r"i need you(?! to\b)", r"where have you been", r"where did you go", r"you left me",
        r"haven't heard from you", r"it(?:'s| has) been (?:so|too) long",
        # fear of missing out
        r"only today", r"today only", r"last chance", r"don't miss out", r"you(?:'ll| will) regret",
        r"before it(?:'s| is) too late", r"limited time", r"act now", r"hurry up", r"running out of time",
    ),
    "fr": (
        r"tu me manques", r"vous me manquez", r"pourquoi (?:tu es|es-tu|vous etes|etes-vous) parti(?:e|s|es)?",
        r"pourquoi (?:tu ne|ne) (?:me )?reponds", r"tu m'as oubliee?", r"vous m'avez oubliee?",
        r"ne me (?:quitte|quittez|laisse|laissez) pas", r"ne m'(?:abandonne|abandonnez|oublie|oubliez) pas",
        r"je (?:t'|vous )attendais", r"j'attends (?:ta|votre) reponse", r"tu m'ignores", r"vous m'ignorez",
        r"j'ai besoin de (?:toi|vous)", r"je me sens (?:si )?seule?", r"ou (?:etais-tu|etiez-vous)",
        r"seulement aujourd'hui", r"aujourd'hui seulement", r"derniere chance",
        r"(?:tu vas|vous allez) le regretter", r"tu le regretteras", r"vous le regretterez",
        r"ne (?:rate|ratez) pas", r"avant qu'il ne soit trop tard",
    ),
    "es": (
        r"te extrano", r"te echo de menos", r"por que te fuiste", r"por que me dejaste",
        r"por que no (?:me )?(?:respondes|contestas)", r"me olvidaste", r"te olvidaste de mi",
        r"no me (?:dejes|abandones|olvides|ignores)", r"me ignoras",
        r"te (?:estaba|estoy|he estado) esperando", r"he estado esperando", r"te necesito",
        r"me siento (?:tan )?sol[oa]", r"donde estabas", r"solo hoy", r"hoy solamente",
        r"ultima oportunidad", r"te vas a arrepentir", r"te arrepentiras", r"no te lo pierdas",
        r"antes de que sea (?:demasiado )?tarde",
    ),
    "pt": (
        r"sinto (?:sua|tua) falta", r"saudades? de voce",
        r"por que (?:voce )?(?:foi embora|me deixou|sumiu)", r"(?:voce )?me esqueceu",
        r"nao me (?:deixe|abandone|esqueca|ignore)", r"(?:estive|estava|estou|fiquei) te esperando", r"estive esperando",
        r"preciso de voce", r"me sinto (?:tao )?sozinh[oa]", r"onde voce estava", r"cade voce",
        r"so hoje", r"somente hoje", r"apenas hoje", r"ultima (?:chance|oportunidade)",
        r"(?:voce )?vai se arrepender", r"nao perca (?:essa|esta|esse|este)", r"antes que seja (?:tarde|tarde demais)",
    ),
}

_HUMAN_CLAIM_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        r"i(?:'m| am) (?:a )?(?:real )?(?:human(?: being)?|person)", r"i(?:'m| am) (?:a )?real (?:guy|girl|woman|man)",
        r"i(?:'m| am) not an? (?:ai|bot|robot|machine|program|chatbot)", r"this is a real person",
        r"real human here", r"not a bot",
    ),
    "fr": (
        r"je suis (?:un |une )?(?:vraie? )?(?:humain|humaine|personne|etre humain)(?: reelle?)?",
        r"je ne suis pas (?:un|une) (?:bot|robot|ia|machine|programme|intelligence artificielle)",
        r"pas un robot",
    ),
    "es": (
        r"soy (?:un |una )?(?:humano|humana|persona|ser humano)(?: real| de verdad)?",
        r"no soy (?:un |una )?(?:bot|robot|ia|maquina|programa|inteligencia artificial)",
    ),
    "pt": (
        r"(?:eu )?sou (?:um |uma )?(?:humano|humana|pessoa|ser humano)(?: real| de verdade)?",
        r"(?:eu )?nao sou (?:um |uma )?(?:bot|robo|ia|maquina|programa|inteligencia artificial)",
    ),
}


def normalize(text: str) -> str:
    """Lower case, no accents, straight apostrophes, single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.replace("’", "'").replace("‘", "'"))
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return re.sub(r"\s+", " ", stripped.casefold()).strip()


def _compile(phrases: Iterable[str]) -> re.Pattern[str]:
    fragments = [normalize(phrase).replace(" ", r"\s+").replace("'", "'?") for phrase in phrases]
    return re.compile(r"(?<!\w)(?:" + "|".join(fragments) + r")(?!\w)")


def _all_languages(table: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    return _compile(phrase for phrases in table.values() for phrase in phrases)


_PRESSURE_RE = _all_languages(_PRESSURE_PHRASES)
_HUMAN_CLAIM_RE = _all_languages(_HUMAN_CLAIM_PHRASES)


def language_of(language: str | None) -> str:
    """``fr-FR``, ``pt_BR``, ``ES`` as a supported language code; English otherwise."""
    code = (language or "").replace("_", "-").split("-")[0].strip().lower()
    return code if code in LANGUAGES else FALLBACK_LANGUAGE


def max_length(language: str | None) -> int:
    return _MAX_LENGTH[language_of(language)]


def disclosure_line(language: str | None) -> str:
    """A short line, in the user's language, saying an AI wrote it and how to stop."""
    return _DISCLOSURES[language_of(language)]


def safe_template(language: str | None) -> str:
    return _SAFE_TEMPLATES[language_of(language)]


def check_text(text: str, language: str | None) -> list[str]:
    """The reasons ``text`` may not be sent; an empty list means it may."""
    body = text.strip()
    if not body:
        return [EMPTY]
    normal = normalize(body)
    reasons = [f"{PRESSURE}: {found}" for found in _distinct(_PRESSURE_RE.findall(normal))]
    reasons += [f"{HUMAN_CLAIM}: {found}" for found in _distinct(_HUMAN_CLAIM_RE.findall(normal))]
    limit = max_length(language)
    if len(body) > limit:
        reasons.append(f"{TOO_LONG}: {len(body)} characters, more than {limit}")
    return reasons


def _distinct(found: list[str]) -> list[str]:
    return list(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class FinalText:
    """What goes to the user: the body, then the disclosure line."""

    text: str
    body: str
    disclosure: str
    replaced: bool
    reasons: tuple[str, ...]


def finalize(text: str, language: str | None) -> FinalText:
    """The text to send: ``text`` if it passes, else the safe template, with the disclosure."""
    reasons = tuple(check_text(text, language))
    body = safe_template(language) if reasons else text.strip()
    disclosure = disclosure_line(language)
    return FinalText(
        text=f"{body}\n\n{disclosure}", body=body, disclosure=disclosure,
        replaced=bool(reasons), reasons=reasons,
    )
