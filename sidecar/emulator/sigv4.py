"""SigV4 authentication of incoming requests, as AWS's front door does it.

The caller's identity is the access key id: it stands in for "the same EC2 instance, ECS task or EKS
pod" that AWS uses to scope once-per-hour records (reference/aws-metering-semantics.md §2.3). When the
emulator knows the secret for a key (its own container credentials, or keys given at start-up) it
recomputes the signature; for other keys (for example from an STS fake) it checks the structure and
scope only, unless strict mode refuses unknown keys.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.emulator.errors import AwsError

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)$"
)
MAX_AGE = 5 * 60  # "Signature expired: ... (now - 5 min.)"
MAX_AHEAD = 15 * 60  # "Signature not yet current: ... (now + 15 min.)"


@dataclass(frozen=True)
class Identity:
    access_key_id: str
    region: str
    service: str
    verified: bool  # the signature was recomputed with a known secret


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signature(
    secret: str,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
    amz_date: str,
    scope: str,
) -> str:
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        [method, path or "/", "", canonical_headers, ";".join(signed), payload_hash]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    date, region, service, terminator = scope.split("/")
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    for part in (region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _parse_amz_date(value: str) -> float:
    try:
        return calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise AwsError(
            "IncompleteSignatureException",
            f"X-Amz-Date '{value}' is not an ISO-8601 basic date like 20260101T000000Z.",
        ) from None


def authenticate(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    service: str,
    secrets: Mapping[str, str],
    strict: bool,
    now: float | None = None,
) -> Identity:
    """Check the request's SigV4 signature. `headers` must have lower-case names.

    `now` is real time: the emulator's settable clock moves billing hours, not the client's signing clock.
    """
    auth = headers.get("authorization")
    if not auth:
        raise AwsError("MissingAuthenticationTokenException", "Request is missing Authentication Token")
    match = _AUTH_RE.match(auth.strip())
    if not match:
        raise AwsError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
            f"with the {ALGORITHM} algorithm.",
        )
    cred_parts = match["cred"].split("/")
    if len(cred_parts) != 5 or cred_parts[4] != "aws4_request":
        raise AwsError(
            "IncompleteSignatureException", "Credential must be AKID/yyyymmdd/region/service/aws4_request."
        )
    access_key, date, region, scope_service, _ = cred_parts
    if scope_service != service:
        raise AwsError(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'."
        )
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise AwsError("InvalidSignatureException", "'Host' must be a signed header.")
    amz_date = headers.get("x-amz-date")
    if not amz_date:
        raise AwsError("IncompleteSignatureException", "Request must contain a X-Amz-Date header.")
    signed_at = _parse_amz_date(amz_date)
    if amz_date[:8] != date:
        raise AwsError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{date}' != '{amz_date[:8]}'",
        )
    now = time.time() if now is None else now
    if signed_at < now - MAX_AGE:
        raise AwsError(
            "InvalidSignatureException", f"Signature expired: {amz_date} is more than 5 minutes old."
        )
    if signed_at > now + MAX_AHEAD:
        raise AwsError(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is more than 15 minutes ahead.",
        )
    secret = secrets.get(access_key)
    if secret is None:
        if strict:
            raise AwsError(
                "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        return Identity(access_key, region, scope_service, verified=False)
    claimed_hash = headers.get("x-amz-content-sha256")
    if claimed_hash is not None and claimed_hash != hashlib.sha256(body).hexdigest():
        # `signature` signs the claimed hash; without this check a body changed after signing would
        # pass whenever the original body's hash is sent along.
        raise AwsError(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    expected = signature(
        secret,
        method=method,
        path=path,
        headers=headers,
        signed=signed,
        body=body,
        amz_date=amz_date,
        scope="/".join(cred_parts[1:]),
    )
    if not hmac.compare_digest(expected, match["sig"]):
        raise AwsError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method. Consult the service documentation for details.",
        )
    return Identity(access_key, region, scope_service, verified=True)
