"""Meta's webhook signatures (spec section 9): pure, no I/O.

Every ``POST`` the platforms make carries ``X-Hub-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the raw body under the app secret. The body is checked as it came: JSON
parsed and written again would not give the same bytes (key order, escaped unicode).
During a rotation two secrets are accepted.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

__all__ = ["SIGNATURE_HEADER", "sign", "signature_matches", "token_matches"]

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SCHEME = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value the platform sends with ``body``."""
    return _SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when ``header`` is the signature of ``body`` under one of ``secrets``.

    Each comparison takes constant time, and every secret is compared whatever the
    outcome of the others, so the time taken says nothing about the expected value.
    Hex digits are accepted in either case.
    """
    if not header or not secrets:
        return False
    # Bytes on both sides: compare_digest refuses a str with non-ASCII characters, and
    # no replacement character can turn a wrong header into a hex digest.
    given = header.strip().lower().encode("utf-8", "replace")
    matches = [hmac.compare_digest(given, sign(body, secret).encode()) for secret in secrets]
    return any(matches)


def token_matches(given: str | None, expected: str | None) -> bool:
    """The verification handshake's token check, in constant time; no token set matches nothing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())
