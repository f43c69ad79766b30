"""How every Kafka client of Relance connects: TLS and SASL from the settings, in one place.

Every ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient`` the project
makes takes ``**security.options()``, and the Faust app ``security.faust_credentials()``;
``tests/test_kafka_security.py`` reads the tree with ``ast`` and fails on a client made
without them. A client that cannot reach the broker is diagnosed here too: aiokafka only
says "Unable to bootstrap", so ``start`` connects once more by hand and turns what really
went wrong into one line that names the setting to fix.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError, KafkaError

from foundation.settings import SettingError, Settings

__all__ = ["KafkaSecurity", "KafkaAccessError", "PLAINTEXT", "start"]


class KafkaAccessError(SettingError, KafkaConnectionError):
    """Kafka refused or could not be reached; the message names the setting to fix. A
    ``KafkaConnectionError`` still, for the code that handles those; a ``SettingError``
    for the command line, which prints it as one line."""

    def __str__(self) -> str:  # the message alone, not KafkaError's "KafkaAccessError: ..."
        return str(self.args[0]) if self.args else ""


class _TokenFile(AbstractTokenProvider):
    """OAUTHBEARER: the token in a file, read again each time one is needed (tokens expire;
    whatever renews them, a sidecar or a mounted secret, rewrites the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        with open(self.path, encoding="utf-8") as handle:
            return handle.read().strip()


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach Kafka: protocol, SASL and TLS. Credentials never show in a repr."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    oauth_token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> "KafkaSecurity":
        security = cls(
            protocol=settings.kafka_security_protocol, mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_username, password=settings.kafka_password,
            oauth_token_file=settings.kafka_oauth_token_file, ca_file=settings.kafka_ca_file,
            cert_file=settings.kafka_cert_file, key_file=settings.kafka_key_file,
            key_password=settings.kafka_key_password,
        )
        security.check()
        return security

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def check(self) -> None:
        """Refuse settings that cannot work together, before any connection is tried."""
        if self.sasl and self.mechanism == "OAUTHBEARER" and not self.oauth_token_file:
            raise SettingError("setting kafka_oauth_token_file (RELANCE_KAFKA_OAUTH_TOKEN_FILE): "
                               "OAUTHBEARER needs the file that holds the token")
        if self.sasl and self.mechanism != "OAUTHBEARER" and not (self.username and self.password):
            raise SettingError(f"settings kafka_username and kafka_password (RELANCE_KAFKA_USERNAME, "
                               f"RELANCE_KAFKA_PASSWORD or their _FILE): {self.protocol} with "
                               f"{self.mechanism} needs both")
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingError("settings kafka_cert_file and kafka_key_file: mutual TLS needs both")
        if not self.tls and (self.ca_file or self.cert_file):
            raise SettingError(f"setting kafka_security_protocol (RELANCE_KAFKA_SECURITY_PROTOCOL): "
                               f"a CA or client certificate is set but {self.protocol} does not use TLS; "
                               "use SSL or SASL_SSL")
        if self.tls:
            self.ssl_context  # a missing or unreadable file is refused now, by name

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Certificates verified against ``ca_file`` (or the system's CAs), host names checked."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(f"setting kafka_ca_file (RELANCE_KAFKA_CA_FILE): cannot load "
                               f"{self.ca_file}: {_reason(exc)}") from None
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
            except (OSError, ssl.SSLError) as exc:
                raise SettingError(f"settings kafka_cert_file and kafka_key_file: cannot load "
                                   f"{self.cert_file} with {self.key_file}: {_reason(exc)}") from None
        return context  # create_default_context: CERT_REQUIRED and check_hostname on

    def options(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for this protocol (every client class takes them)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context
        if self.sasl:
            options["sasl_mechanism"] = self.mechanism
            if self.mechanism == "OAUTHBEARER":
                options["sasl_oauth_token_provider"] = _TokenFile(self.oauth_token_file)
            else:
                options["sasl_plain_username"] = self.username
                options["sasl_plain_password"] = self.password
        return options

    def faust_credentials(self) -> Any:
        """The Faust app's ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        if self.sasl and self.mechanism == "OAUTHBEARER":
            return faust.OAuthCredentials(oauth_cb=_TokenFile(self.oauth_token_file), ssl_context=self.ssl_context)
        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         ssl_context=self.ssl_context, mechanism=self.mechanism)
        if self.tls:
            return faust.SSLCredentials(self.ssl_context)
        return None


PLAINTEXT = KafkaSecurity()


async def start(client: Any, bootstrap: str, security: KafkaSecurity) -> None:
    """``client.start()``; if the broker cannot be reached, a ``KafkaAccessError`` saying why."""
    try:
        await client.start()
    except KafkaConnectionError:
        reason = await diagnose(bootstrap, security)
        await client.stop() if hasattr(client, "stop") else await client.close()
        raise KafkaAccessError(reason) from None


async def diagnose(bootstrap: str, security: KafkaSecurity, timeout: float = 10.0) -> str:
    """Connect to the first bootstrap server as the client would, ask for its API versions,
    and say in one line what went wrong and which setting fixes it."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    where = f"Kafka at {host}:{port} ({security.protocol})"
    conn = None
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port), **security.options()), timeout)
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
    except ssl.SSLCertVerificationError as exc:
        if "hostname" in str(exc).lower() or "ip address mismatch" in str(exc).lower():
            return (f"{where}: its certificate does not name {host} ({exc.verify_message}); "
                    "set broker (RELANCE_BROKER) to a name the certificate holds")
        return (f"{where}: its certificate is not trusted ({exc.verify_message}); set kafka_ca_file "
                "(RELANCE_KAFKA_CA_FILE) to the CA that signed it")
    except ssl.SSLError as exc:
        return (f"{where}: the TLS handshake failed ({exc.reason}); is the listener TLS? "
                "check kafka_security_protocol (RELANCE_KAFKA_SECURITY_PROTOCOL)")
    except ConnectionRefusedError:
        return f"{where}: nothing listens there; check broker (RELANCE_BROKER) and that Kafka runs"
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        text = str(exc) or type(exc).__name__
        if "authentication" in text.lower() or "sasl" in text.lower():
            return (f"{where}: the broker refused {security.mechanism} login of user "
                    f"{security.username!r} ({_first_line(text)}); check kafka_username and "
                    "kafka_password (RELANCE_KAFKA_USERNAME, RELANCE_KAFKA_PASSWORD or their _FILE) "
                    "and kafka_sasl_mechanism")
        if not security.tls:
            return (f"{where}: the broker dropped the connection ({_first_line(text)}); its listener "
                    "probably expects TLS: set kafka_security_protocol (RELANCE_KAFKA_SECURITY_PROTOCOL) "
                    "to SSL or SASL_SSL, and kafka_ca_file")
        if not security.sasl:
            return (f"{where}: the broker dropped the connection ({_first_line(text)}); its listener "
                    "probably expects SASL: set kafka_security_protocol (RELANCE_KAFKA_SECURITY_PROTOCOL) "
                    "to SASL_SSL, with kafka_username and kafka_password")
        return f"{where}: {_first_line(text)}; check broker (RELANCE_BROKER) and kafka_security_protocol"
    finally:
        if conn is not None:
            conn.close()
    return f"{where}: reachable now; it was not when the client started (check broker, RELANCE_BROKER)"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
