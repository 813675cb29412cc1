"""sidecar.token: PS256 verification of the RegisterUsage Signature, and the attacks it must refuse.

Every refusal asserts the specific ``check``, so a test cannot pass because an earlier, unrelated
check happened to fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.token import (
    AWS_SAMPLE_PUBLIC_KEY_PEM,
    TokenClaims,
    TokenError,
    load_public_key,
    verify_token,
)

PRODUCT = "1fszvu527waovqeuhpkyx2b5d"
NONCE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
PSS_32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# The jwt.io / jsrsasign RSA-1024 sample private key. It is public (reference
# aws-metering-semantics.md §1.3.4 (a)), which is exactly why its public half must be refused.
SAMPLE_PRIVATE_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIICWwIBAAKBgQDdlatRjRjogo3WojgGHFHYLugdUWAY9iR3fy4arWNA1KoS8kVw
33cJibXr8bvwUAUparCwlvdbH6dvEOfou0/gCFQsHUfQrSDv+MuSUMAe8jzKE4qW
+jK+xQU9a03GUnKHkkle+Q0pX/g6jXZ7r1/xAK5Do2kQ+X5xK9cipRgEKwIDAQAB
AoGAD+onAtVye4ic7VR7V50DF9bOnwRwNXrARcDhq9LWNRrRGElESYYTQ6EbatXS
3MCyjjX2eMhu/aF5YhXBwkppwxg+EOmXeh+MzL7Zh284OuPbkglAaGhV9bb6/5Cp
uGb1esyPbYW+Ty2PC0GSZfIXkXs76jXAu9TOBvD0ybc2YlkCQQDywg2R/7t3Q2OE
2+yo382CLJdrlSLVROWKwb4tb2PjhY4XAwV8d1vy0RenxTB+K5Mu57uVSTHtrMK0
GAtFr833AkEA6avx20OHo61Yela/4k5kQDtjEf1N0LfI+BcWZtxsS3jDM3i1Hp0K
Su5rsCPb8acJo5RO26gGVrfAsDcIXKC+bQJAZZ2XIpsitLyPpuiMOvBbzPavd4gY
6Z8KWrfYzJoI/Q9FuBo6rKwl4BFoToD7WIUS+hpkagwWiz+6zLoX1dbOZwJACmH5
fSSjAkLRi54PKJ8TFUeOP15h9sQzydI8zJU+upvDEKZsZc/UhT/SySDOxQ4G/523
Y0sz/OZtSWcol/UMgQJALesy++GdvoIDLfJX5GBQpuFgFenRiRDabxrE9MNUZ2aP
FaFp+DyAe+b4nDwuJaW2LURbr8AEZga7oQj0uYxcYw==
-----END RSA PRIVATE KEY-----
"""


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_json(value: object) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "productCode": PRODUCT,
        "publicKeyVersion": 1,
        "nonce": NONCE,
        "iat": 1_767_225_600,
    }
    for name, value in overrides.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def sign_ps256(key: rsa.RSAPrivateKey, payload: object, header: object = None) -> str:
    """Build a token the way AWS does: PS256 = RSASSA-PSS, SHA-256, MGF1-SHA256, salt 32 bytes."""
    head = b64u_json({"alg": "PS256", "typ": "JWT"} if header is None else header)
    body = b64u_json(payload)
    signature = key.sign(f"{head}.{body}".encode("ascii"), PSS_32, hashes.SHA256())
    return f"{head}.{body}.{b64u(signature)}"


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def key1() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sample_private() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(SAMPLE_PRIVATE_PEM, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    # Guard the premise: this really is the private half of the key printed in AWS's example.
    assert public_pem(key).decode() == AWS_SAMPLE_PUBLIC_KEY_PEM
    return key


@pytest.fixture(scope="module")
def valid_token(key1: rsa.RSAPrivateKey) -> str:
    return sign_ps256(key1, claims())


def verify(token: str, key: rsa.RSAPrivateKey, **request: Any) -> TokenClaims:
    args: dict[str, Any] = {"product_code": PRODUCT, "public_key_version": 1, "nonce": NONCE}
    args.update(request)
    return verify_token(token, {args["public_key_version"]: key.public_key()}, **args)


def refused(token: str, key: rsa.RSAPrivateKey, check: str, **request: Any) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify(token, key, **request)
    assert info.value.check == check, str(info.value)
    return info.value


def test_happy_path(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    result = verify(valid_token, key1)
    assert result == TokenClaims(
        product_code=PRODUCT, public_key_version=1, nonce=NONCE, issued_at=1_767_225_600, raw=claims()
    )


def test_no_iat_exp_aud_kid_needed(key1: rsa.RSAPrivateKey) -> None:
    # No source shows AWS sending exp, aud, kid or iss; iat is informational (reference §1.3.2).
    result = verify(sign_ps256(key1, claims(iat=...), header={"alg": "PS256"}), key1)
    assert result.issued_at is None


def test_load_public_key_round_trip(key1: rsa.RSAPrivateKey) -> None:
    loaded = load_public_key(public_pem(key1).decode())
    assert loaded.public_numbers() == key1.public_key().public_numbers()
    assert load_public_key(public_pem(key1)).public_numbers() == key1.public_key().public_numbers()


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_load_public_key_rejects_garbage(pem: str) -> None:
    with pytest.raises(ValueError, match="PEM public key"):
        load_public_key(pem)


def test_load_public_key_rejects_non_rsa() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="expected an RSA public key"):
        load_public_key(pem)


def test_load_public_key_refuses_the_sample_key() -> None:
    with pytest.raises(TokenError) as info:
        load_public_key(AWS_SAMPLE_PUBLIC_KEY_PEM)
    assert info.value.check == "sample_key"


def test_sample_key_refused_by_der_not_text(sample_private: rsa.RSAPrivateKey) -> None:
    # The same key as PKCS#1 "RSA PUBLIC KEY" text, with CRLF line ends: different text, same key.
    pkcs1 = sample_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pkcs1.decode() != AWS_SAMPLE_PUBLIC_KEY_PEM
    with pytest.raises(TokenError) as info:
        load_public_key(pkcs1.replace(b"\n", b"\r\n"))
    assert info.value.check == "sample_key"


def test_token_signed_with_sample_key_is_refused(sample_private: rsa.RSAPrivateKey) -> None:
    # A perfectly signed token with correct claims: only the sample-key check can refuse it.
    token = sign_ps256(sample_private, claims())
    error = refused(token, sample_private, "sample_key")
    assert "MIGfMA0GCSqGSIb3" not in str(error)  # no key material in messages


def test_alg_none_with_empty_signature(key1: rsa.RSAPrivateKey) -> None:
    token = f"{b64u_json({'alg': 'none', 'typ': 'JWT'})}.{b64u_json(claims())}."
    error = refused(token, key1, "alg")
    assert "'PS256'" in str(error) and "'none'" in str(error)


def test_rs256_signed_by_the_same_key(key1: rsa.RSAPrivateKey) -> None:
    head, body = b64u_json({"alg": "RS256", "typ": "JWT"}), b64u_json(claims())
    signature = key1.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    refused(f"{head}.{body}.{b64u(signature)}", key1, "alg")


def test_hs256_with_public_key_pem_as_secret(key1: rsa.RSAPrivateKey) -> None:
    # The classic alg-confusion forgery: HMAC keyed with the (public) verification key.
    head, body = b64u_json({"alg": "HS256", "typ": "JWT"}), b64u_json(claims())
    mac = hmac.new(public_pem(key1), f"{head}.{body}".encode(), hashlib.sha256).digest()
    refused(f"{head}.{body}.{b64u(mac)}", key1, "alg")


@pytest.mark.parametrize("alg", ["ps256", "PS384", "PS512", "RS256", "ES256", "", None, ["PS256"], 256])
def test_every_other_alg_is_refused(key1: rsa.RSAPrivateKey, alg: object) -> None:
    refused(sign_ps256(key1, claims(), header={"alg": alg, "typ": "JWT"}), key1, "alg")


def test_missing_alg_is_refused(key1: rsa.RSAPrivateKey) -> None:
    refused(sign_ps256(key1, claims(), header={"typ": "JWT"}), key1, "alg")


def test_tampered_payload(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    head, _, signature = valid_token.split(".")
    forged = b64u_json(claims(productCode="free-product-code"))
    refused(f"{head}.{forged}.{signature}", key1, "signature", product_code="free-product-code")


def test_tampered_header(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    _, body, signature = valid_token.split(".")
    head = b64u_json({"alg": "PS256", "typ": "JWT", "kid": "attacker"})
    refused(f"{head}.{body}.{signature}", key1, "signature")


def test_signed_by_another_key(key1: rsa.RSAPrivateKey, key2: rsa.RSAPrivateKey) -> None:
    refused(sign_ps256(key2, claims()), key1, "signature")


def test_pss_salt_length_is_32(key1: rsa.RSAPrivateKey) -> None:
    # JOSE PS256 fixes the salt at the hash length (RFC 7518 §3.5; reference §1.3.1). A PSS
    # signature with another salt length is not PS256, so it is refused rather than auto-detected.
    head, body = b64u_json({"alg": "PS256", "typ": "JWT"}), b64u_json(claims())
    other_salt = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    signature = key1.sign(f"{head}.{body}".encode(), other_salt, hashes.SHA256())
    refused(f"{head}.{body}.{b64u(signature)}", key1, "signature")


@pytest.mark.parametrize("header", [[1], "PS256", None, 1])
def test_header_not_an_object(key1: rsa.RSAPrivateKey, header: object) -> None:
    token = sign_ps256(key1, claims())
    refused(f"{b64u(json.dumps(header).encode())}.{token.split('.', 1)[1]}", key1, "header")


@pytest.mark.parametrize(
    "raw_header",
    [
        b"{not json",
        b"",
        b'{"alg":"PS256","alg":"none"}',
        b'{"alg":"PS256","crit":["exp"]}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_header_unparseable_ambiguous_or_critical(key1: rsa.RSAPrivateKey, raw_header: bytes) -> None:
    token = sign_ps256(key1, claims())
    refused(f"{b64u(raw_header)}.{token.split('.', 1)[1]}", key1, "header")


@pytest.mark.parametrize("payload", [[1, 2], "claims", 42, None])
def test_payload_not_an_object(key1: rsa.RSAPrivateKey, payload: object) -> None:
    refused(sign_ps256(key1, payload), key1, "payload")


@pytest.mark.parametrize("iat", ["1767225600", 1.5, True])
def test_iat_must_be_an_integer(key1: rsa.RSAPrivateKey, iat: object) -> None:
    refused(sign_ps256(key1, claims(iat=iat)), key1, "payload")


def test_wrong_nonce_is_a_replay(key1: rsa.RSAPrivateKey) -> None:
    error = refused(sign_ps256(key1, claims(nonce="an-older-nonce")), key1, "nonce")
    assert NONCE in str(error)


@pytest.mark.parametrize("claim", [..., "", None])
def test_no_request_nonce_accepts_absent_or_empty_claim(key1: rsa.RSAPrivateKey, claim: object) -> None:
    assert verify(sign_ps256(key1, claims(nonce=claim)), key1, nonce=None).nonce is None


def test_no_request_nonce_refuses_a_nonce_claim(key1: rsa.RSAPrivateKey) -> None:
    refused(sign_ps256(key1, claims()), key1, "nonce", nonce=None)


@pytest.mark.parametrize("claim", [..., "", None, 7])
def test_request_nonce_refuses_missing_or_other_claim(key1: rsa.RSAPrivateKey, claim: object) -> None:
    refused(sign_ps256(key1, claims(nonce=claim)), key1, "nonce")


@pytest.mark.parametrize("code", ["other-product", "", None, ..., 1])
def test_wrong_product_code(key1: rsa.RSAPrivateKey, code: object) -> None:
    error = refused(sign_ps256(key1, claims(productCode=code)), key1, "product_code")
    assert PRODUCT in str(error)


def test_wrong_public_key_version_claim(key1: rsa.RSAPrivateKey) -> None:
    refused(sign_ps256(key1, claims(publicKeyVersion=2)), key1, "public_key_version")


def test_public_key_version_as_string_is_accepted(key1: rsa.RSAPrivateKey) -> None:
    # AWS's own Java check compares the claim as text (reference §1.3.2).
    assert verify(sign_ps256(key1, claims(publicKeyVersion="1")), key1).public_key_version == 1


@pytest.mark.parametrize("claim", [True, 1.0, "01", " 1", "1.0", "\u0661", None, ..., [1]])
def test_public_key_version_junk_is_refused(key1: rsa.RSAPrivateKey, claim: object) -> None:
    refused(sign_ps256(key1, claims(publicKeyVersion=claim)), key1, "public_key_version")


def test_unconfigured_key_version(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(
            valid_token, {1: key1.public_key()}, product_code=PRODUCT, public_key_version=2, nonce=NONCE
        )
    assert info.value.check == "key_version"
    assert "version 2" in str(info.value) and "configured: 1" in str(info.value)


def test_key_rotation(key1: rsa.RSAPrivateKey, key2: rsa.RSAPrivateKey) -> None:
    keys = {1: key1.public_key(), 2: key2.public_key()}
    token = sign_ps256(key2, claims(publicKeyVersion=2))
    result = verify_token(token, keys, product_code=PRODUCT, public_key_version=2, nonce=NONCE)
    assert result.public_key_version == 2
    # The same token checked against key 1 (under either version number) does not verify.
    for version in (1, 2):
        with pytest.raises(TokenError) as info:
            verify_token(
                token,
                {version: key1.public_key()},
                product_code=PRODUCT,
                public_key_version=version,
                nonce=NONCE,
            )
        assert info.value.check == "signature"


@pytest.mark.parametrize(
    "cut", [lambda t: t.rsplit(".", 1)[0], lambda t: t.split(".", 1)[1], lambda t: t + ".x"]
)
def test_wrong_number_of_parts(key1: rsa.RSAPrivateKey, valid_token: str, cut: Any) -> None:
    refused(cut(valid_token), key1, "format")


def test_cut_signature(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    # 256 signature bytes are 342 base64url chars. 341 chars cannot be base64 at all; 340 chars
    # decode cleanly to 255 bytes, which must then fail as a signature.
    assert len(valid_token.rsplit(".", 1)[1]) == 342
    refused(valid_token[:-1], key1, "format")
    refused(valid_token[:-2], key1, "signature")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t + "==",  # padding
        lambda t: t.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet
        lambda t: t[:10] + " " + t[10:],  # whitespace
        lambda t: t[:10] + "\n" + t[10:],
        lambda t: t[:10] + "é" + t[10:],  # non-ASCII
        lambda t: t[:10] + "\u0663" + t[10:],  # a non-ASCII digit
    ],
)
def test_non_base64url_characters(key1: rsa.RSAPrivateKey, valid_token: str, mutate: Any) -> None:
    refused(mutate(valid_token), key1, "format")


def test_non_canonical_last_character(key1: rsa.RSAPrivateKey, valid_token: str) -> None:
    # The last of 342 chars carries 2 signature bits and 4 unused bits. Changing only the unused bits
    # decodes to the same signature, so a lax decoder would accept a different token.
    last = valid_token[-1]
    for char in B64URL_ALPHABET.replace(last, ""):
        with pytest.raises(TokenError) as info:
            verify(valid_token[:-1] + char, key1)
        assert info.value.check in ("format", "signature")


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_any_single_byte_flip_is_refused(
    key1: rsa.RSAPrivateKey, valid_token: str, data: st.DataObject
) -> None:
    raw = bytearray(valid_token.encode("ascii"))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(TokenError):
        verify(raw.decode("latin-1"), key1)


def test_token_error_survives_pickle() -> None:
    error = pickle.loads(pickle.dumps(TokenError("nonce", "the nonce claim is 'a', expected 'b'")))
    assert error.check == "nonce"
    assert "expected 'b'" in str(error)
