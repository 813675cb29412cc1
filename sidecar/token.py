"""Verification of the RegisterUsage ``Signature``: a JWS compact token signed with PS256.

A pure module (standard library and ``cryptography`` only) so that the sidecar, the
``verify-token`` command and the product container's own check (``sidecar.client``) all run the
same code. The procedure follows reference/aws-metering-semantics.md §1.3.5; every failure names the
check that failed so that a seller can tell a wrong key from a wrong nonce.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "AWS_SAMPLE_PUBLIC_KEY_PEM",
    "TokenCheck",
    "TokenClaims",
    "TokenError",
    "load_public_key",
    "verify_token",
]

# The PEM printed in the AWS Seller Guide's Java example ("Replace with your public key").
# It is NOT an AWS key: it is the jwt.io / jsrsasign RSA-1024 sample pair, whose private key is
# published in many test suites, so anyone can mint a "valid" PS256 token with it.
# reference/aws-metering-semantics.md §1.3.4 (a) and §7 item 11.
AWS_SAMPLE_PUBLIC_KEY_PEM = """\
-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDdlatRjRjogo3WojgGHFHYLugd
UWAY9iR3fy4arWNA1KoS8kVw33cJibXr8bvwUAUparCwlvdbH6dvEOfou0/gCFQs
HUfQrSDv+MuSUMAe8jzKE4qW+jK+xQU9a03GUnKHkkle+Q0pX/g6jXZ7r1/xAK5D
o2kQ+X5xK9cipRgEKwIDAQAB
-----END PUBLIC KEY-----
"""

TokenCheck = Literal[
    "format",
    "header",
    "alg",
    "key_version",
    "sample_key",
    "signature",
    "payload",
    "product_code",
    "public_key_version",
    "nonce",
]

# JOSE PS256 (RFC 7518 §3.5): MGF1 with SHA-256 and a salt as long as the hash. AWS never states the
# PSS parameters; JWT libraries verify AWS tokens as PS256, so they are these. §1.3.1.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_ALG = "PS256"
# RFC 4648 §5 alphabet, unpadded (RFC 7515 §2). Explicit class: \w would admit non-ASCII letters.
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Claim values come from the token; keep error messages short even for a hostile token.
_MAX_SHOWN = 80


def _spki_der(key: RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_rsa(pem: bytes) -> RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key ({exc}); expected '-----BEGIN PUBLIC KEY-----'") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"the public key is {type(key).__name__}, expected an RSA public key (PS256)")
    return key


# Compared by DER SubjectPublicKeyInfo, so a re-wrapped or PKCS#1 ("RSA PUBLIC KEY") copy of the
# sample key is caught too, not only the exact text.
_SAMPLE_KEY_DER = _spki_der(_load_rsa(AWS_SAMPLE_PUBLIC_KEY_PEM.encode("ascii")))


class TokenError(Exception):
    """The RegisterUsage token failed one check; ``check`` names it for logs, metrics and tests."""

    def __init__(self, check: TokenCheck, message: str) -> None:
        super().__init__(check, message)  # both in args, so the error survives pickling
        self.check: TokenCheck = check
        self.message = message

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims. ``raw`` is the whole payload, for display only."""

    product_code: str
    public_key_version: int
    nonce: str | None
    issued_at: int | None
    raw: dict[str, object]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _is_sample_key(key: RSAPublicKey) -> bool:
    return _spki_der(key) == _SAMPLE_KEY_DER


def _sample_key_error() -> TokenError:
    return TokenError(
        "sample_key",
        "the public key is the jwt.io/jsrsasign sample key printed in AWS's Java example, whose private "
        "key is public; expected the public key AWS Marketplace issued for your product",
    )


def load_public_key(pem: str | bytes) -> RSAPublicKey:
    """Parse a PEM RSA public key; refuse the well-known sample key (§1.3.4 (a)).

    Raises ``ValueError`` when the text is not an RSA public key, and ``TokenError`` with
    ``check == "sample_key"`` for the sample key. Key size is not checked: the sample key is the
    only small key we know of, and it is refused by identity.
    """
    key = _load_rsa(pem.encode("utf-8") if isinstance(pem, str) else pem)
    if _is_sample_key(key):
        raise _sample_key_error()
    return key


def _b64url_decode(part: str, name: str) -> bytes:
    # Strict and canonical: no padding, no "+" or "/", no whitespace, and the encoding must be the
    # one that re-encodes to itself. Otherwise two different strings could carry the same signature
    # bytes (unused trailing bits), and a changed token could still verify.
    if not _B64URL.fullmatch(part):
        raise TokenError("format", f"the {name} is not unpadded base64url text (RFC 7515 §2)")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("format", f"the {name} is not valid base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
        raise TokenError("format", f"the {name} is not canonical base64url (non-zero trailing bits)")
    return raw


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Parsers disagree on which duplicate wins; refuse rather than guess (RFC 7515 §4).
        raise ValueError("duplicate member name")
    return obj


def _json_object(raw: bytes, check: TokenCheck, name: str) -> dict[str, object]:
    try:
        value: object = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise TokenError(check, f"the {name} is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise TokenError(check, f"the {name} is JSON {type(value).__name__}, expected a JSON object")
    return value


def _version_matches(claim: object, expected: int) -> bool:
    # AWS's Java example compares the claim as text with String.valueOf(version) (§1.3.2), and real
    # tokens carry a JSON number. Accept exactly those two forms; bool is an int in Python, and a
    # float like 1.0 or a string like "01" is not what AWS sends.
    if isinstance(claim, bool):
        return False
    if isinstance(claim, int):
        return claim == expected
    return isinstance(claim, str) and claim == str(expected)


def verify_token(
    token: str,
    keys: Mapping[int, RSAPublicKey],
    *,
    product_code: str,
    public_key_version: int,
    nonce: str | None,
) -> TokenClaims:
    """Verify a RegisterUsage ``Signature`` against the request it answered (§1.3.5).

    ``keys`` maps each configured public key version to its key (several during a rotation).
    ``product_code``, ``public_key_version`` and ``nonce`` are the values sent in the RegisterUsage
    request. Raises ``TokenError`` naming the first check that failed; returns the claims otherwise.
    ``exp``, ``aud``, ``kid`` and ``iss`` are not required: no source shows AWS sending them (§1.3.2).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError(
            "format", f"the token has {len(parts)} dot-separated parts, expected 3 (JWS compact)"
        )
    header_b64, payload_b64, signature_b64 = parts
    header_raw = _b64url_decode(header_b64, "header")
    payload_raw = _b64url_decode(payload_b64, "payload")
    signature = _b64url_decode(signature_b64, "signature")

    header = _json_object(header_raw, "header", "header")
    if "crit" in header:
        # RFC 7515 §4.1.11: a recipient must reject critical extensions it does not understand.
        raise TokenError("header", "the header has a 'crit' parameter; AWS tokens carry none")

    # Alg-confusion defence (§1.3.5 step 2): the alg is fixed here, never taken from the token.
    alg = header.get("alg")
    if alg != _ALG:
        raise TokenError("alg", f"the header alg is {_shown(alg)}, expected {_ALG!r}")

    key = keys.get(public_key_version)
    if key is None:
        configured = ", ".join(str(v) for v in sorted(keys)) or "none"
        raise TokenError(
            "key_version",
            f"no public key is configured for version {public_key_version} (configured: {configured})",
        )
    if _is_sample_key(key):
        raise _sample_key_error()

    try:
        key.verify(signature, f"{header_b64}.{payload_b64}".encode("ascii"), _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise TokenError(
            "signature",
            f"the RSASSA-PSS-SHA256 signature does not verify with public key version {public_key_version}",
        ) from None

    # Only a verified payload is parsed: before this point it is attacker-controlled.
    payload = _json_object(payload_raw, "payload", "payload")
    issued_at = payload.get("iat")
    if issued_at is not None and (isinstance(issued_at, bool) or not isinstance(issued_at, int)):
        raise TokenError("payload", f"the iat claim is {_shown(issued_at)}, expected an integer NumericDate")

    claim_code = payload.get("productCode")
    if not isinstance(claim_code, str) or claim_code != product_code:
        raise TokenError(
            "product_code", f"the productCode claim is {_shown(claim_code)}, expected {product_code!r}"
        )

    claim_version = payload.get("publicKeyVersion")
    if not _version_matches(claim_version, public_key_version):
        raise TokenError(
            "public_key_version",
            f"the publicKeyVersion claim is {_shown(claim_version)}, expected {public_key_version}",
        )

    # The nonce ties the token to this request and defeats replay (§1.2, §1.3.5 step 1). With no
    # request nonce, AWS presumably leaves the claim out or empty (§1.3.2, inferred).
    claim_nonce = payload.get("nonce")
    if nonce:
        if not isinstance(claim_nonce, str) or claim_nonce != nonce:
            raise TokenError("nonce", f"the nonce claim is {_shown(claim_nonce)}, expected {_shown(nonce)}")
    elif claim_nonce not in (None, ""):
        raise TokenError(
            "nonce", f"the nonce claim is {_shown(claim_nonce)}, expected none (no request nonce)"
        )

    return TokenClaims(
        product_code=claim_code,
        public_key_version=public_key_version,
        nonce=claim_nonce if isinstance(claim_nonce, str) and claim_nonce else None,
        issued_at=issued_at,
        raw=payload,
    )
