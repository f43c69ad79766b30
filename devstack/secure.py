"""What a secure local stack needs: a CA, certificates and passwords, made on the fly.

``SecureFiles(folder).ensure()`` writes, once, a private CA, a server certificate for
127.0.0.1 and localhost (Kafka's SASL_SSL listener and Redis's TLS port share it), a
client certificate (for mutual TLS), and random passwords for Kafka's SCRAM user and
Redis's ACL user; a second ``ensure`` keeps them, since Kafka's users were stored at
format time. Keys and passwords are files only their owner reads. ``client_settings``
are the settings a client needs to use the stack, secrets by file (``*_file``).

Certificates come from ``cryptography`` (PyCA), the library Python's TLS tooling is built
on; keys are ECDSA P-256 in PKCS#8, the form Kafka's PEM key store reads.
"""
from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

KAFKA_USER = "relance"
REDIS_USER = "relance"
SCRAM_MECHANISM = "SCRAM-SHA-512"
# What Redis's ACL user may do: only Relance's keys, nothing administrative or
# keyspace-wide but INFO (the workers check durability with it). deploy/secrets/make
# writes the same for docker-compose; the secure tests prove the workers need no more.
REDIS_RIGHTS = "~relance:* &* +@all -@dangerous +info"
VALID_DAYS = 30


class SecureFiles:
    """The CA, certificates and passwords of one secure stack, in ``folder``."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).resolve()
        self.ca_file = self.folder / "ca.pem"
        self.server_cert, self.server_key = self.folder / "server.pem", self.folder / "server.key"
        self.client_cert, self.client_key = self.folder / "client.pem", self.folder / "client.key"
        self.kafka_password_file = self.folder / "kafka-password"
        self.redis_password_file = self.folder / "redis-password"

    def ensure(self) -> "SecureFiles":
        if not self.kafka_password_file.exists():  # written last: its presence means all is there
            self._write()
        return self

    @property
    def kafka_password(self) -> str:
        return self.kafka_password_file.read_text().strip()

    @property
    def redis_password(self) -> str:
        return self.redis_password_file.read_text().strip()

    def client_settings(self, broker: str, redis_url: str) -> dict[str, str]:
        """Relance settings for a client of this stack (secrets as ``*_file`` paths)."""
        return {
            "broker": broker, "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": SCRAM_MECHANISM,
            "kafka_username": KAFKA_USER, "kafka_password_file": str(self.kafka_password_file),
            "kafka_ca_file": str(self.ca_file),
            "redis_url": redis_url, "redis_username": REDIS_USER,
            "redis_password_file": str(self.redis_password_file), "redis_ca_file": str(self.ca_file),
        }

    def _write(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(common_name: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

        def certificate(subject: str, key, issuer: str, issuer_key, *extensions) -> x509.Certificate:
            builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))
            for extension, critical in extensions:
                builder = builder.add_extension(extension, critical=critical)
            return builder.sign(issuer_key, hashes.SHA256())

        def write_key(path: Path, key) -> None:
            path.write_bytes(b"")
            path.chmod(0o600)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = certificate("Relance local CA", ca_key, "Relance local CA", ca_key,
                         (x509.BasicConstraints(ca=True, path_length=0), True),
                         (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                        content_commitment=False, key_encipherment=False,
                                        data_encipherment=False, key_agreement=False,
                                        encipher_only=False, decipher_only=False), True))
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        server_names = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        for cert_path, key_path, subject, usage, alt_names in (
            (self.server_cert, self.server_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, server_names),
            (self.client_cert, self.client_key, "relance-client", ExtendedKeyUsageOID.CLIENT_AUTH, None),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            extensions = [(x509.BasicConstraints(ca=False, path_length=None), True),
                          (x509.ExtendedKeyUsage([usage]), False)]
            if alt_names is not None:
                extensions.append((alt_names, False))
            write_key(key_path, key)
            cert_path.write_bytes(certificate(subject, key, "Relance local CA", ca_key, *extensions)
                                  .public_bytes(serialization.Encoding.PEM))
        for path in (self.redis_password_file, self.kafka_password_file):  # Kafka's last: see ensure
            path.write_text("")
            path.chmod(0o600)
            path.write_text(secrets.token_urlsafe(24) + "\n")
