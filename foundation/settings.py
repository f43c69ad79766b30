"""Every setting of Relance, declared once.

Each setting has a type, a default, an environment variable (``RELANCE_<NAME>``) and a
one-line docstring. Values come, in rising priority, from the defaults, a TOML config
file (``RELANCE_CONFIG`` or ``--config``), the environment, and CLI flags.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Settings", "SettingError", "parse_duration", "parse_quiet_hours", "parse_rates"]

ENV_PREFIX = "RELANCE_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class SettingError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def parse_duration(value: Any) -> int:
    """``30s``, ``15m``, ``12h``, ``14d`` or a number of seconds, as milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return int(value * 1000)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (write 30s, 15m, 12h, 14d or seconds)")
    number, unit = match.groups()
    return int(float(number) * _UNIT_MS[unit or "s"])


def parse_quiet_hours(value: Any) -> tuple[int, int] | None:
    """``HH:MM-HH:MM`` as (start, end) minutes after midnight, or None for ``off``."""
    text = str(value).strip().lower()
    if text in ("off", "none", ""):
        return None
    match = re.match(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$", text)
    if not match:
        raise ValueError(f"not quiet hours: {value!r} (write 22:00-08:00 or off)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"not a time of day in {value!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"quiet hours {value!r} start and end at the same time")
    return start, end


def _choice(*allowed: str) -> Callable[[Any], str]:
    """One of ``allowed``, in the case they are written in (``wall``, ``SASL_SSL``)."""
    def parse(value: Any) -> str:
        text = str(value).strip()
        text = text.upper() if allowed[0].isupper() else text.lower()
        if text not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return text
    return parse


def _share(value: Any) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{value!r} is not between 0 and 1")
    return share


def _non_negative_int(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def _positive_int(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value!r} must be at least 1")
    return number


def _optional_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _positive_number(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value!r} must be more than 0")
    return number


def parse_rates(value: Any) -> tuple[tuple[str, float], ...]:
    """Send rates per account id: a TOML table ``{ "106540352242922" = 250 }`` or the text
    ``106540352242922=250,112233445566778=100`` (messages a second), as sorted pairs (a
    setting's default must be hashable)."""
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        text = str(value).strip()
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()] if text else []
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"not account=rate pairs: {value!r}")
    rates = {}
    for account, rate in pairs:
        account = str(account).strip()
        if not account:
            raise ValueError(f"an empty account id in {value!r}")
        rates[account] = _positive_number(rate)
    return tuple(sorted(rates.items()))


def format_duration(ms: int) -> str:
    """A duration as a person writes it: the largest unit that divides it (``14d``, ``90s``)."""
    for unit in ("d", "h", "m", "s"):  # 24h rather than 1d, as the spec writes them
        if ms % _UNIT_MS[unit] == 0 and ms // _UNIT_MS[unit] >= 2:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def format_quiet_hours(value: tuple[int, int] | None) -> str:
    if value is None:
        return "off"
    return "-".join(f"{minute // 60:02d}:{minute % 60:02d}" for minute in value)


def format_rates(value: tuple[tuple[str, float], ...]) -> str:
    return ",".join(f"{account}={rate:g}" for account, rate in value) or "none"


# How a parsed default is shown to a person (--help, `relance settings`, the README).
_SHOWN_AS: dict[Callable[[Any], Any], Callable[[Any], str]] = {
    parse_duration: format_duration, parse_quiet_hours: format_quiet_hours, parse_rates: format_rates,
    _positive_number: lambda number: f"{number:g}",
}


def _shown(value: Any, parse: Callable[[Any], Any]) -> str:
    if value is None or value == ():
        return "unset"
    if value == "":
        return "empty"
    return _SHOWN_AS.get(parse, str)(value)


def _secrets(value: Any) -> tuple[str, ...]:
    """One secret, or two separated by a comma during a rotation. Errors never quote them."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    secrets = tuple(str(part).strip() for part in parts if str(part).strip())
    if len(secrets) > 2:
        raise ValueError(f"{len(secrets)} secrets given; at most two (the current one and, "
                         "during a rotation, the next one), separated by a comma")
    return secrets


def setting(default: Any, doc: str, parse: Callable[[Any], Any] = str) -> Any:
    return field(default=default, metadata={"doc": doc, "parse": parse})


def secret_setting(default: Any, doc: str, parse: Callable[[Any], Any]) -> Any:
    """A setting kept out of reprs, and also read from the file named by RELANCE_<NAME>_FILE."""
    return field(default=default, repr=False, metadata={"doc": doc, "parse": parse, "secret": True})


@dataclass(frozen=True, slots=True)
class Settings:
    # -- the rule (spec section 2) -------------------------------------------------
    min_inbound: int = setting(5, "Inbound messages needed inside the window (N).", _positive_int)
    window: int = setting(14 * 86_400_000, "Rolling window N is counted in (W).", parse_duration)
    idle_delay: int = setting(12 * 3_600_000, "Quiet time before a follow-up is due (D).", parse_duration)
    messaging_window: int = setting(24 * 3_600_000, "A follow-up must go out within this of the last inbound (M).", parse_duration)
    quiet_hours: tuple[int, int] | None = setting((22 * 60, 8 * 60), "Local hours with no follow-ups, HH:MM-HH:MM or off.", parse_quiet_hours)
    user_cap_day: int = setting(1, "Follow-ups per user per rolling 24 hours, all bots and apps; 0 means no cap.", _non_negative_int)
    user_cap_week: int = setting(3, "Follow-ups per user per rolling 7 days, all bots and apps; 0 means no cap.", _non_negative_int)
    unknown_age: str = setting("allow", "allow or deny follow-ups to users whose age is unknown.", _choice("allow", "deny"))
    distress_cooloff: int = setting(14 * 86_400_000, "How long a user gets no follow-up, from any bot, after signs of distress.", parse_duration)
    registry: str = setting("deploy/bots.toml", "Path of the bot registry (TOML).")
    holdout: float = setting(0.0, "Share of pairs (0 to 1), chosen by a stable hash, that never get follow-ups.", _share)
    # -- running ---------------------------------------------------------------------
    clock: str = setting("wall", "wall (current UTC time) or event (largest ts seen, and ticks).", _choice("wall", "event"))
    broker: str = setting("127.0.0.1:19092", "Kafka bootstrap servers, host:port[,host:port].")
    redis_url: str = setting("redis://127.0.0.1:16379/0", "Redis URL for the follow-up ledger and conversation context.")
    redis_durability: str = setting("require", "require: a worker refuses a Redis that could lose the ledger (no append-only file, or evicting keys); warn: it only logs it.", _choice("require", "warn"))
    topic_prefix: str = setting("", "Prefix of every topic name, to run several pipelines on one broker.")
    partitions: int = setting(4, "Partitions of the keyed topics when Relance creates them.", _positive_int)
    app_id: str = setting("relance", "Kafka consumer group and Faust application id.")
    data_dir: str = setting(".relance/data", "Where a worker keeps its local files (Faust's own, and the rocksdb store).")
    store: str = setting("memory", "Where the engine keeps idle users (packed) and due times: memory, or rocksdb (on disk in data_dir).", _choice("memory", "rocksdb"))
    core: str = setting("native", "The engine's decision core: native (compiled, the relance-native package; store = memory only, rocksdb always takes python), or python (domain/rules.py, the reference both are tested against).", _choice("native", "python"))
    web_port: int = setting(6066, "Port of the worker's HTTP interface (health, metrics, explain).", _positive_int)
    shutdown_grace: int = setting(10_000, "How long a stopping worker may take before it exits anyway, leaving what it could not flush to the next owner.", parse_duration)
    # -- security: how clients reach Kafka and Redis (README, Security) ----------------------
    kafka_security_protocol: str = setting("PLAINTEXT", "How clients talk to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = setting("SCRAM-SHA-512", "SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.", _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"))
    kafka_username: str | None = secret_setting(None, "Kafka SASL user name (PLAIN, SCRAM).", _optional_str)
    kafka_password: str | None = secret_setting(None, "Kafka SASL password (PLAIN, SCRAM).", _optional_str)
    kafka_oauth_token_file: str | None = setting(None, "OAUTHBEARER: file holding the current token, read again each time the client needs one.", _optional_str)
    kafka_ca_file: str | None = setting(None, "PEM file of the CAs that sign the brokers' certificates (SSL, SASL_SSL); unset means the system's.", _optional_str)
    kafka_cert_file: str | None = setting(None, "PEM client certificate for mutual TLS with Kafka.", _optional_str)
    kafka_key_file: str | None = setting(None, "PEM private key of kafka_cert_file.", _optional_str)
    kafka_key_password: str | None = secret_setting(None, "Password of kafka_key_file, if it is encrypted.", _optional_str)
    redis_username: str | None = secret_setting(None, "Redis ACL user; unset means the default user.", _optional_str)
    redis_password: str | None = secret_setting(None, "Redis password (of redis_username, or the requirepass one).", _optional_str)
    redis_ca_file: str | None = setting(None, "PEM file of the CAs that sign Redis's certificate (rediss:// URLs); unset means the system's.", _optional_str)
    redis_cert_file: str | None = setting(None, "PEM client certificate for mutual TLS with Redis.", _optional_str)
    redis_key_file: str | None = setting(None, "PEM private key of redis_cert_file.", _optional_str)
    explain_token: str | None = secret_setting(None, "Bearer token /explain requires; unset turns /explain off.", _optional_str)
    # -- generation and delivery -------------------------------------------------------
    context_messages: int = setting(10, "Messages of each pair kept as conversation context.", _positive_int)
    llm_base_url: str | None = setting(None, "OpenAI-compatible API base URL (…/v1); unset means the offline writer.", _optional_str)
    llm_model: str = setting("gpt-4o-mini", "Model name sent to the Chat Completions API.")
    llm_api_key: str | None = secret_setting(None, "Bearer key for the LLM API, if it needs one.", _optional_str)
    llm_timeout: int = setting(20_000, "Timeout of one LLM call.", parse_duration)
    llm_concurrency: int = setting(8, "LLM calls in flight at once per worker.", _positive_int)
    llm_attempts: int = setting(3, "LLM calls per try before the request goes to the retry topic.", _positive_int)
    generation_tries: int = setting(3, "Tries through the retry topic before a request is dead-lettered.", _positive_int)
    generation_backoff: int = setting(5_000, "Wait before a failed generation is tried again; doubled each try, with jitter.", parse_duration)
    generation_lease_margin: int = setting(30_000, "Beyond a try's own time budget, how long a claimed request waits before another copy takes its holder for dead.", parse_duration)
    llm_breaker_cooldown: int = setting(30_000, "How long the LLM circuit breaker stays open before one trial call.", parse_duration)
    # -- webhooks in: the gateway (spec section 9) ---------------------------------------
    gateway_port: int = setting(8080, "Port the gateway serves the platforms' webhooks on (TLS is terminated in front).", _positive_int)
    app_secret: tuple[str, ...] = secret_setting((), "Meta app secret that signs webhooks; two, comma-separated, during a rotation.", _secrets)
    verify_token: str | None = secret_setting(None, "Token the platforms' verification handshake must present.", _optional_str)
    # 1,000,000 bytes: one record under Kafka's default 1 MiB message limit, with room for
    # the record's own framing; a webhook of chat messages weighs a few kilobytes.
    gateway_max_body: int = setting(1_000_000, "Largest webhook body the gateway accepts, in bytes (more gets 413).", _positive_int)
    gateway_ack_timeout: int = setting(5_000, "How long the gateway waits for Kafka to acknowledge a webhook before answering 503.", parse_duration)
    gateway_read_timeout: int = setting(10_000, "How long a client may take to send a webhook's body before the gateway answers 408.", parse_duration)
    # -- sending (spec section 9) --------------------------------------------------------
    graph_base_url: str = setting("https://graph.facebook.com", "Base URL of Meta's Graph API, where the send APIs are.")
    # v26.0, released 2026-07-29, is the newest Graph API version in Meta's changelog
    # (developers.facebook.com/docs/graph-api/changelog); every version lives two years or more.
    graph_api_version: str = setting("v26.0", "Graph API version in the send URLs.")
    send_timeout: int = setting(10_000, "Timeout of one send-API call; a send that times out is unknown, never repeated.", parse_duration)
    send_concurrency: int = setting(64, "Sends in progress (rate slot, ledger, call) at once per sender worker.", _positive_int)
    send_backoff: int = setting(1_000, "Wait before a refused send (429, 5xx, unreachable) is tried again; doubled each try, with jitter.", parse_duration)
    send_backoff_max: int = setting(300_000, "The longest wait between two tries of one send.", parse_duration)
    send_token_probe: int = setting(60_000, "How often a bot whose token was refused is tried again with the same token.", parse_duration)
    # The platforms' standard rates: WhatsApp Cloud API 80 messages/s per business number
    # (spec section 9); Messenger and Instagram Send API 300 calls/s per page or professional
    # account for text (developers.facebook.com/documentation/business-messaging/
    # messenger-platform/overview/rate-limiting, updated 2026-03-23).
    whatsapp_send_rate: float = setting(80.0, "Messages a second per WhatsApp business number, at most.", _positive_number)
    facebook_send_rate: float = setting(300.0, "Messages a second per Facebook page, at most.", _positive_number)
    instagram_send_rate: float = setting(300.0, "Messages a second per Instagram account, at most.", _positive_number)
    send_rates: tuple[tuple[str, float], ...] = setting((), "Rates of single numbers, pages or accounts, account=rate[,...] (a TOML table in a config file).", parse_rates)
    send_rate_slack: int = setting(100, "Added to the rate limiter's one-second window, so that jitter on the way cannot squeeze a second's sends closer; a slot older than half of it when its call leaves is taken again.", parse_duration)
    send_fault_hold: int = setting(0, "Fault injection for tests, 0 in production: half the sends, at random, wait this long between their rate slot and their call, as on a loaded machine.", parse_duration)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def secret_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("secret")]

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """(name, env var, default as written, doc) for every setting: the one source of
        ``--help``, ``relance settings`` and the README's table."""
        return [
            (f.name, ENV_PREFIX + f.name.upper(), _shown(f.default, f.metadata["parse"]), f.metadata["doc"])
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: str | None = None,
    ) -> "Settings":
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            with open(config_file, "rb") as handle:
                raw.update(tomllib.load(handle))
        for name in cls.names():
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None:
                raw[name] = value
        for name in cls.secret_names():
            file_value = _secret_file(name, env)
            if file_value is not None:
                raw[name] = file_value
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "Settings":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise SettingError(f"unknown setting(s): {', '.join(unknown)}")
        values = {}
        for name, value in raw.items():
            try:
                values[name] = fields[name].metadata["parse"](value)
            except (TypeError, ValueError) as exc:
                raise SettingError(f"setting {name} ({ENV_PREFIX}{name.upper()}): {exc}") from None
        return cls(**values)

    def shown(self, name: str) -> str:
        """A setting's value as a person writes it (``12h``, ``22:00-08:00``); a secret's
        only as set or unset."""
        declared = next(f for f in dataclasses.fields(self) if f.name == name)
        value = getattr(self, name)
        if declared.metadata.get("secret"):
            return "set" if value else "unset"
        return _shown(value, declared.metadata["parse"])

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _secret_file(name: str, env: Mapping[str, str]) -> str | None:
    """The content of the file RELANCE_<NAME>_FILE names (a mounted secret), if it is set."""
    variable = ENV_PREFIX + name.upper()
    path = env.get(variable + "_FILE")
    if not path:
        return None
    if env.get(variable):  # an empty one (compose's ${VAR:-}) stands for unset
        raise SettingError(f"setting {name}: both {variable} and {variable}_FILE are set; keep one")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingError(f"setting {name} ({variable}_FILE): cannot read {path}: "
                           f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
