"""Pure safety detectors used by the decision core: stop words, distress, quiet hours.

No I/O here: the same functions run in the live agents and in ``relance replay``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

# A stop is a message that is only the word (any case, accents optional, trailing
# punctuation allowed), so "stop" inside a sentence about films never opts anyone out.
STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("stop", "stopall", "unsubscribe", "cancel", "end", "quit"),
    "fr": ("arreter", "arrete", "arretez", "stop", "desabonner", "desinscrire"),
    "es": ("parar", "para", "detener", "cancelar", "baja"),
    "pt": ("parar", "pare", "cancelar", "sair"),
}
_STOP_WORD_SET = frozenset(word for words in STOP_WORDS.values() for word in words)
_TRAILING = " \t\r\n.!¡?¿;,:-"


def fold(text: str) -> str:
    """Lower case without accents, so "ARRÊTER" and "arreter" compare equal."""
    if text.isascii():  # most chat text: nothing to decompose
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def folded_stop_words() -> frozenset[str]:
    """Every stop word, folded: what ``is_stop_word`` compares a folded text with."""
    return _STOP_WORD_SET


def is_stop_word(text: str) -> bool:
    stripped = text.strip(_TRAILING)
    if not stripped or len(stripped) > 16:
        return False
    return fold(stripped) in _STOP_WORD_SET


# -- distress ----------------------------------------------------------------------------

DISTRESS_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "kill myself", "killing myself", "want to die", "wanna die", "suicide", "suicidal",
        "end my life", "take my own life", "self harm", "self-harm", "hurt myself",
        "cut myself", "no reason to live", "can't go on", "cant go on", "better off dead",
        "don't want to live", "dont want to live", "want to disappear forever",
    ),
    "fr": (
        "me suicider", "suicide", "envie de mourir", "veux mourir", "me tuer", "en finir avec la vie",
        "mettre fin a mes jours", "me faire du mal", "plus envie de vivre", "me scarifier",
    ),
    "es": (
        "suicidarme", "suicidio", "quiero morir", "quiero morirme", "matarme",
        "quitarme la vida", "hacerme dano", "no quiero vivir", "no puedo mas con la vida",
    ),
    "pt": (
        "me matar", "quero morrer", "suicidio", "suicidar", "tirar minha vida",
        "tirar a minha vida", "me machucar", "nao quero viver", "me cortar",
    ),
}


@dataclass(frozen=True, slots=True)
class Detection:
    """Signs of distress in one message, and in which language's list they were found."""

    language: str
    phrase: str


class DistressClassifier(Protocol):
    """Anything that can tell whether a message shows signs of distress or self-harm."""

    def detect(self, text: str) -> Detection | None: ...


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(fold(p)) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


class PhraseListClassifier:
    """Multilingual phrase lists: transparent, testable, and a floor for better models.

    Errs towards caution: a false alarm only costs one follow-up that was not sent.
    """

    def __init__(self, phrases: dict[str, tuple[str, ...]] = DISTRESS_PHRASES) -> None:
        # One pattern for every language (one search per message); the phrase tells which.
        self._language = {fold(p): language for language, words in reversed(phrases.items()) for p in words}
        self._pattern = _phrase_pattern(tuple(self._language))

    @property
    def folded_phrases(self) -> tuple[str, ...]:
        """What it searches for in a folded text: a text in which none occurs cannot match."""
        return tuple(self._language)

    def detect(self, text: str) -> Detection | None:
        if not text:
            return None
        match = self._pattern.search(fold(text))
        if match is None:
            return None
        return Detection(language=self._language[match.group(0)], phrase=match.group(0))


# -- quiet hours --------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _zone(name: str | None) -> ZoneInfo | timezone:
    return timezone.utc if name is None else ZoneInfo(name)


def quiet_hours_end(ts_ms: int, tz: str | None, quiet_hours: tuple[int, int] | None) -> int | None:
    """If ``ts_ms`` falls inside the quiet hours in zone ``tz``, the end of those quiet
    hours (epoch ms); else None. Quiet hours are [start, end) in local minutes."""
    if quiet_hours is None:
        return None
    start, end = quiet_hours
    minute = (ts_ms + _utc_offset_ms(tz, ts_ms)) // 60_000 % 1440
    wraps = start > end
    inside = (minute >= start or minute < end) if wraps else (start <= minute < end)
    if not inside:
        return None
    zone = _zone(tz)
    local = datetime.fromtimestamp(ts_ms / 1000, tz=zone)
    end_day = local.date()
    if wraps and minute >= start:
        end_day += timedelta(days=1)
    naive_end = datetime(end_day.year, end_day.month, end_day.day, end // 60, end % 60)
    local_end = naive_end.replace(tzinfo=zone)
    # A DST gap can swallow the end time; round-tripping through UTC lands just after it.
    return int(local_end.astimezone(timezone.utc).timestamp() * 1000)


_QUARTER_MS = 15 * 60_000


def _utc_offset_ms(tz: str | None, ts_ms: int) -> int:
    """How far ahead of UTC zone ``tz`` is at ``ts_ms``: every decision asks, so it is cached."""
    if tz is None:
        return 0
    offset = _quarter_offset_ms(tz, ts_ms // _QUARTER_MS)
    return offset if offset is not None else _offset_at(tz, ts_ms)


@lru_cache(maxsize=65_536)
def _quarter_offset_ms(tz: str, quarter: int) -> int | None:
    """The zone's offset over one quarter hour of UTC, or None if it changes inside it."""
    first = _offset_at(tz, quarter * _QUARTER_MS)
    return first if first == _offset_at(tz, (quarter + 1) * _QUARTER_MS - 1) else None


def _offset_at(tz: str, ts_ms: int) -> int:
    local = datetime.fromtimestamp(ts_ms // 1000, tz=_zone(tz))
    return int(local.utcoffset().total_seconds() * 1000)
