"""Webhook signatures (spec section 9): X-Hub-Signature-256 is sha256=<hex HMAC-SHA256 of the raw body>."""
from __future__ import annotations

import pytest

from domain.signature import sign, signature_matches, token_matches

# RFC 4231, test case 2: HMAC-SHA256 with key "Jefe".
RFC_KEY, RFC_DATA = "Jefe", b"what do ya want for nothing?"
RFC_DIGEST = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
BODY = '{"object":"page","entry":[{"messaging":[{"message":{"text":"caf\u00e9 \\u00e9"}}]}]}'.encode()


def test_the_signature_is_the_hmac_sha256_of_the_body_in_hex_after_sha256_equals():
    assert sign(RFC_DATA, RFC_KEY) == "sha256=" + RFC_DIGEST
    assert signature_matches(RFC_DATA, "sha256=" + RFC_DIGEST, [RFC_KEY])


def test_hex_in_capitals_and_surrounding_spaces_still_match():
    assert signature_matches(RFC_DATA, " sha256=" + RFC_DIGEST.upper() + " ", [RFC_KEY])


def test_either_of_two_secrets_matches_during_a_rotation_and_no_third():
    old, new, other = "old-secret", "new-secret", "someone-else"
    for secret in (old, new):
        assert signature_matches(BODY, sign(BODY, secret), (old, new))
    assert not signature_matches(BODY, sign(BODY, other), (old, new))


@pytest.mark.parametrize("header", [
    None, "", "sha256=", "sha256", RFC_DIGEST,                    # missing, empty, no digest, no scheme
    "sha1=" + RFC_DIGEST, "sha256=" + RFC_DIGEST[:-2],           # another scheme, cut short
    "sha256=" + RFC_DIGEST + "00", "sha256=" + "0" * 64,         # too long, another digest
    "sha256=" + RFC_DIGEST.replace("5", "é", 1),                  # not even ASCII
])
def test_anything_but_the_exact_signature_is_refused(header):
    assert not signature_matches(RFC_DATA, header, [RFC_KEY])


def test_one_byte_changed_in_the_body_breaks_the_signature():
    header = sign(BODY, "s")
    for index in (0, len(BODY) // 2, len(BODY) - 1):
        tampered = bytearray(BODY)
        tampered[index] ^= 0x01
        assert not signature_matches(bytes(tampered), header, ["s"])


def test_the_same_json_written_again_is_not_the_signed_body():
    # Meta signs the bytes it sent: parsed and re-serialised JSON (other spacing, unicode
    # escaped or not) no longer matches, which is why the gateway forwards the raw body.
    import json
    rewritten = json.dumps(json.loads(BODY)).encode()
    assert rewritten != BODY
    assert not signature_matches(rewritten, sign(BODY, "s"), ["s"])


def test_no_secret_configured_matches_nothing():
    assert not signature_matches(BODY, sign(BODY, ""), [])


def test_the_verify_token_must_be_exactly_the_one_set():
    assert token_matches("tok-1", "tok-1")
    for given in (None, "", "tok-", "tok-12", "TOK-1", "tök-1"):
        assert not token_matches(given, "tok-1")
    assert not token_matches("", None) and not token_matches("anything", None)
