"""The bot registry: which bot owns which WhatsApp number, Facebook page, Instagram account.

The registry is a TOML file (spec section 5, setting ``registry``)::

    [[bot]]
    id = "maestro"
    name = "Maestro of Movie Magic"
    persona = "A warm film-music lover who suggests soundtracks and composers."
    language = "en"
    whatsapp = ["106540352242922"]      # phone_number_id values
    facebook = ["112233445566778"]      # Facebook page ids
    instagram = ["17841400000000001"]   # Instagram professional account ids
    tokens = { whatsapp = "env:MAESTRO_WA_TOKEN", facebook = "file:/run/secrets/maestro-page" }

``tokens`` names, per app, where the sender finds the bot's access token (spec section 9):
an environment variable (``env:NAME``) or a file (``file:/path``). The registry holds
the reference, never the token; the sender reads it when it sends.

A bad file is refused as a whole with a ``RegistryError`` that names the file, the bot
and the field, because a half-loaded registry would silently send messages to the
dead-letter topic. ``RegistryFile`` reloads the file when it changes and keeps the last
good registry when the new file is bad, so a typo in production does not stop ingest.
"""
from __future__ import annotations

import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from schemas.records import APPS, MAX_ID_LENGTH

__all__ = ["Bot", "BotRegistry", "RegistryError", "RegistryFile", "TokenRef"]

_BOT_FIELDS = ("id", "name", "persona", "language")
_ALLOWED_BOT_KEYS = frozenset(_BOT_FIELDS) | frozenset(APPS) | {"tokens"}
TOKEN_SOURCES = ("env", "file")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A BCP 47 language tag such as "en", "pt-BR" or "es-419": the writer of follow-ups
# uses it to choose the language, so a free-form value would be a silent bug.
_LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
# What each app calls the account id, so error messages use the platform's own word.
ACCOUNT_KIND = {
    "whatsapp": "whatsapp phone_number_id",
    "facebook": "facebook page id",
    "instagram": "instagram account id",
}


class RegistryError(ValueError):
    """The registry file cannot be used; the message names the file, bot and field."""


@dataclass(frozen=True, slots=True)
class TokenRef:
    """Where a bot's access token is: ``env:NAME`` or ``file:/path``. Not the token itself,
    so it may be shown; the value is read by the sender (``streams/graphapi.py``)."""

    source: str   # "env" or "file"
    name: str     # the variable's name, or the file's absolute path

    @classmethod
    def parse(cls, text: str) -> "TokenRef":
        source, _, name = text.partition(":")
        if source not in TOKEN_SOURCES or not name:
            raise ValueError(f"{text[:60]!r} is not env:NAME or file:/path")
        if source == "env" and not _ENV_NAME.match(name):
            raise ValueError(f"{name[:60]!r} is not an environment variable name")
        if source == "file" and not name.startswith("/"):
            raise ValueError(f"file:{name[:60]} must be an absolute path")
        return cls(source, name)

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


@dataclass(frozen=True, slots=True)
class Bot:
    """One chatbot persona and the accounts it answers on, per app."""

    id: str
    name: str
    persona: str
    language: str
    accounts: Mapping[str, tuple[str, ...]] = field(hash=False)
    tokens: Mapping[str, TokenRef] = field(hash=False, default_factory=lambda: MappingProxyType({}))

    def accounts_on(self, app: str) -> tuple[str, ...]:
        return self.accounts.get(app, ())

    def sending_account(self, app: str) -> str | None:
        """The number, page or account follow-ups on ``app`` leave from: the first listed.
        The token of ``tokens[app]`` belongs to it (a page token names one page)."""
        accounts = self.accounts.get(app)
        return accounts[0] if accounts else None


class BotRegistry:
    """Bots by id, and the bot that owns each (app, account id)."""

    __slots__ = ("_bots", "_owner_by_app")

    def __init__(self, bots: list[Bot]):
        self._bots: dict[str, Bot] = {}
        self._owner_by_app: dict[str, dict[str, str]] = {app: {} for app in APPS}
        for bot in bots:
            self._add(bot)

    def _add(self, bot: Bot) -> None:
        if bot.id in self._bots:
            raise RegistryError(f"bot id {bot.id!r} is used by more than one [[bot]]")
        self._bots[bot.id] = bot
        for app, account_ids in bot.accounts.items():
            owners = self._owner_by_app[app]
            for account_id in account_ids:
                owner = owners.get(account_id)
                if owner is not None:
                    which = "listed twice by" if owner == bot.id else f"claimed by both {owner!r} and"
                    raise RegistryError(f"{ACCOUNT_KIND[app]} {account_id} is {which} {bot.id!r}")
                owners[account_id] = bot.id

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BotRegistry":
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise RegistryError(f"{path}: no such registry file") from None
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.from_document(document)
        except RegistryError as exc:
            raise RegistryError(f"{path}: {exc}") from None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "BotRegistry":
        unknown = sorted(set(document) - {"bot"})
        if unknown:
            raise RegistryError(f"unknown top-level key(s) {', '.join(unknown)}; bots are written [[bot]]")
        tables = document.get("bot")
        if not isinstance(tables, list) or not tables:
            raise RegistryError("no [[bot]] entries")
        return cls([_parse_bot(table, number) for number, table in enumerate(tables, start=1)])

    # -- lookups -----------------------------------------------------------------------

    def bot_for(self, app: str, account_id: str) -> Bot | None:
        bot_id = self._owner_by_app.get(app, {}).get(account_id)
        return None if bot_id is None else self._bots[bot_id]

    def owners(self, app: str) -> Mapping[str, str]:
        """account id -> bot id on one app; the normaliser's hot path reads this directly."""
        return self._owner_by_app[app]

    def get(self, bot_id: str) -> Bot | None:
        return self._bots.get(bot_id)

    def __contains__(self, bot_id: object) -> bool:
        return bot_id in self._bots

    def __iter__(self):
        return iter(self._bots.values())

    def __len__(self) -> int:
        return len(self._bots)


def _parse_bot(table: Any, number: int) -> Bot:
    where = f"bot #{number}"
    if not isinstance(table, dict):
        raise RegistryError(f"{where} is not a table; write it as [[bot]]")
    if isinstance(table.get("id"), str) and table["id"]:
        where = f"bot #{number} ({table['id']})"
    unknown = sorted(set(table) - _ALLOWED_BOT_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {name: _text_field(table, name, where) for name in _BOT_FIELDS}
    if len(values["id"]) > MAX_ID_LENGTH:
        raise RegistryError(f"{where}: id is longer than {MAX_ID_LENGTH} characters")
    if not _LANGUAGE_TAG.match(values["language"]):
        raise RegistryError(f"{where}: language {values['language']!r} is not a language tag such as en or pt-BR")
    accounts = {app: _account_ids(table, app, where) for app in APPS if app in table}
    return Bot(**values, accounts=MappingProxyType(accounts), tokens=MappingProxyType(_tokens(table, where)))


def _tokens(table: dict, where: str) -> dict[str, TokenRef]:
    tokens = table.get("tokens", {})
    if not isinstance(tokens, dict):
        raise RegistryError(f'{where}: tokens must be a table, like tokens = {{ whatsapp = "env:WA_TOKEN" }}')
    unknown = sorted(set(tokens) - set(APPS))
    if unknown:
        raise RegistryError(f"{where}: tokens for unknown app(s) {', '.join(unknown)}")
    refs = {}
    for app, text in tokens.items():
        if app not in table:
            raise RegistryError(f"{where}: a {app} token but no {app} account")
        if not isinstance(text, str):
            raise RegistryError(f"{where}: tokens.{app} must be a string, env:NAME or file:/path")
        try:
            refs[app] = TokenRef.parse(text)
        except ValueError as exc:
            raise RegistryError(f"{where}: tokens.{app}: {exc}") from None
    return refs


def _text_field(table: dict, name: str, where: str) -> str:
    if name not in table:
        raise RegistryError(f"{where}: missing field {name}")
    value = table[name]
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{where}: {name} must be a non-empty string")
    if value != value.strip():
        raise RegistryError(f"{where}: {name} {value!r} has spaces around it")
    return value


def _account_ids(table: dict, app: str, where: str) -> tuple[str, ...]:
    values = table[app]
    if not isinstance(values, list):
        raise RegistryError(f'{where}: {app} must be a list of ids, like {app} = ["123"]')
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            # Ids are strings on the wire; a TOML integer would also lose leading zeros.
            raise RegistryError(f'{where}: {app} id {value} must be quoted, like "{value}"')
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise RegistryError(f"{where}: {app} ids must be non-empty strings of at most {MAX_ID_LENGTH} characters")
    return tuple(values)


class RegistryFile:
    """A registry that follows its file: reloaded when the file changes, never lost.

    ``current()`` is called on the hot path, so it looks at the file at most once every
    ``check_every`` seconds. A change is seen through the file's (mtime, size, inode):
    the inode catches an atomic rename, the size a rewrite within one mtime tick.
    A file that fails to load keeps the last good registry and sets ``last_error``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = os.fspath(path)
        self.check_every = check_every
        self.last_error: str | None = None
        self.reloads = 0
        self._clock = clock
        self._signature = self._stat()
        self._registry = BotRegistry.load(self.path)  # no last good registry yet: fail loudly
        self._checked_at = clock()

    def current(self) -> BotRegistry:
        now = self._clock()
        if now - self._checked_at >= self.check_every:
            self._checked_at = now
            self._reload_if_changed()
        return self._registry

    def _reload_if_changed(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._registry = BotRegistry.load(self.path)
        except RegistryError as exc:
            self.last_error = str(exc)
            return
        self.last_error = None
        self.reloads += 1

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino
