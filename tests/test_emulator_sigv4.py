"""The emulator's front door: SigV4 authentication and the AWS JSON 1.1 envelope, as AWS checks them.

Requests are signed by botocore itself (SigV4Auth), then sent, altered or not, over real HTTP with urllib.
The last tests take boto3's real default credential chain through ECS-style container credentials.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import ACCESS_KEY, PRODUCT, REGION, SECRET, T0, Emu, make_client

JSON_11 = "application/x-amz-json-1.1"
METER = {"ProductCode": PRODUCT, "Timestamp": T0, "UsageDimension": "requests", "UsageQuantity": 7}
REGISTER = {"ProductCode": PRODUCT, "PublicKeyVersion": 1}


def _signed(
    emu: Emu,
    operation: str,
    body: dict[str, Any] | bytes,
    *,
    key: str = ACCESS_KEY,
    secret: str = SECRET,
    service: str = "aws-marketplace",
    target: str | None = None,
    content_type: str = JSON_11,
) -> AWSRequest:
    """A request signed by botocore's SigV4Auth, as boto3 would send it."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = AWSRequest(
        method="POST",
        url=emu.url + "/",
        data=data,
        headers={
            "Content-Type": content_type,
            "X-Amz-Target": f"AWSMPMeteringService.{operation}" if target is None else target,
        },
    )
    SigV4Auth(Credentials(key, secret), service, REGION).add_auth(request)
    return request


def _send(emu: Emu, request: AWSRequest, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """Send a (possibly altered) request; `body` replaces the signed body."""
    headers = {k: v for k, v in request.headers.items()}
    data = request.body if body is None else body
    assert isinstance(data, bytes)
    req = urllib.request.Request(emu.url + "/", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def _error(payload: dict[str, Any]) -> str:
    # botocore keeps what follows the last '#' of __type (reference §4.3).
    return str(payload["__type"]).rsplit("#", 1)[-1]


@pytest.fixture
def known(emu: Emu) -> Emu:
    """The emulator, knowing the secret of ACCESS_KEY: signatures from it are recomputed."""
    emu.emulator.add_static_credentials(ACCESS_KEY, SECRET)
    return emu


# --- signatures -----------------------------------------------------------------------------------


def test_a_correctly_signed_request_goes_through(known: Emu) -> None:
    status, payload = _send(known, _signed(known, "MeterUsage", METER))
    assert status == 200 and "MeteringRecordId" in payload
    assert [c["caller"] for c in known.calls()] == [ACCESS_KEY]


def test_an_unsigned_request_is_missing_an_authentication_token(emu: Emu) -> None:
    req = urllib.request.Request(
        emu.url + "/",
        data=json.dumps(REGISTER).encode(),
        headers={"Content-Type": JSON_11, "X-Amz-Target": "AWSMPMeteringService.RegisterUsage"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    with info.value as err:
        assert err.code == 400
        payload = json.loads(err.read())
    assert payload["__type"].endswith("MissingAuthenticationTokenException")
    assert [(c["status"], c["error"]) for c in emu.calls()] == [(400, "MissingAuthenticationTokenException")]


def test_the_wrong_secret_for_a_known_key_is_an_invalid_signature(known: Emu) -> None:
    client = make_client(known.url, ACCESS_KEY, "not-the-secret")
    with pytest.raises(ClientError) as info:
        client.register_usage(**REGISTER)
    error = info.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in error["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert known.admin("GET", "/_emulator/registrations")["registrations"] == []


def test_a_body_changed_after_signing_is_an_invalid_signature(known: Emu) -> None:
    request = _signed(known, "MeterUsage", METER)
    tampered = json.dumps(METER | {"UsageQuantity": 9}).encode()
    assert len(tampered) == len(request.body)
    status, payload = _send(known, request, tampered)
    assert (status, _error(payload)) == (400, "InvalidSignatureException")
    assert known.records() == []


def test_a_forged_payload_hash_header_does_not_hide_a_changed_body(known: Emu) -> None:
    request = _signed(known, "MeterUsage", METER)
    # The hash of the body that was signed, sent along with another body.
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(request.body).hexdigest()
    status, payload = _send(known, request, json.dumps(METER | {"UsageQuantity": 9}).encode())
    assert (status, _error(payload)) == (400, "InvalidSignatureException")
    assert known.records() == []


def test_a_credential_scoped_to_another_service_is_refused(known: Emu) -> None:
    status, payload = _send(known, _signed(known, "RegisterUsage", REGISTER, service="execute-api"))
    assert (status, _error(payload)) == (400, "InvalidSignatureException")
    assert "'aws-marketplace'" in payload["message"]


def test_strict_auth_refuses_unknown_keys_but_not_known_ones(known: Emu) -> None:
    known.emulator.state.settings.strict_auth = True
    stranger = make_client(known.url, "AKIAUNKNOWN000000001", "whatever")
    with pytest.raises(ClientError) as info:
        stranger.register_usage(**REGISTER)
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    known.client().register_usage(**REGISTER)
    assert [(c["status"], c["error"]) for c in known.calls()] == [
        (400, "UnrecognizedClientException"),
        (200, None),
    ]


def test_without_strict_auth_an_unknown_key_is_accepted_as_its_own_caller(emu: Emu) -> None:
    stranger = make_client(emu.url, "AKIAUNKNOWN000000001", "whatever")
    result = stranger.meter_usage(**METER)
    [record] = emu.records()
    assert record["caller"] == "AKIAUNKNOWN000000001"
    assert record["metering_record_id"] == result["MeteringRecordId"]


def _client_signing_at(monkeypatch: pytest.MonkeyPatch, emu: Emu, shift: datetime.timedelta) -> Any:
    """A boto3 client whose SigV4 clock is off by `shift` (the emulator checks against real time)."""
    real = botocore.auth.get_current_datetime

    def shifted(remove_tzinfo: bool = True) -> datetime.datetime:
        return real(remove_tzinfo) + shift

    monkeypatch.setattr(botocore.auth, "get_current_datetime", shifted)
    return emu.client()


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        (datetime.timedelta(minutes=-10), "Signature expired"),
        (datetime.timedelta(minutes=20), "Signature not yet current"),
    ],
)
def test_a_request_signed_too_long_ago_or_ahead_is_refused(
    monkeypatch: pytest.MonkeyPatch, emu: Emu, shift: datetime.timedelta, message: str
) -> None:
    client = _client_signing_at(monkeypatch, emu, shift)
    with pytest.raises(ClientError) as info:
        client.register_usage(**REGISTER)
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert message in info.value.response["Error"]["Message"]


@pytest.mark.parametrize("shift", [datetime.timedelta(minutes=-4), datetime.timedelta(minutes=14)])
def test_a_little_clock_skew_is_tolerated(
    monkeypatch: pytest.MonkeyPatch, emu: Emu, shift: datetime.timedelta
) -> None:
    client = _client_signing_at(monkeypatch, emu, shift)
    assert client.register_usage(**REGISTER)["Signature"]


def test_a_credential_date_that_is_not_the_signing_date_is_refused(known: Emu) -> None:
    request = _signed(known, "RegisterUsage", REGISTER)
    request.headers.replace_header(
        "Authorization",
        request.headers["Authorization"].replace(request.headers["X-Amz-Date"][:8], "20200101", 1),
    )
    status, payload = _send(known, request)
    assert (status, _error(payload)) == (400, "InvalidSignatureException")
    assert "20200101" in payload["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/aws-marketplace/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIA/us-east-1/aws-marketplace, SignedHeaders=host, Signature=00",
    ],
)
def test_a_malformed_authorization_header_is_an_incomplete_signature(known: Emu, authorization: str) -> None:
    request = _signed(known, "RegisterUsage", REGISTER)
    request.headers.replace_header("Authorization", authorization)
    status, payload = _send(known, request)
    assert (status, _error(payload)) == (400, "IncompleteSignatureException")


# --- the JSON 1.1 envelope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["AWSMPMeteringService.DeleteUsage", "AWSMarketplaceMetering.MeterUsage", "MeterUsage", ""]
)
def test_an_unknown_target_is_an_unknown_operation(known: Emu, target: str) -> None:
    status, payload = _send(known, _signed(known, "MeterUsage", METER, target=target))
    assert (status, _error(payload)) == (400, "UnknownOperationException")
    assert payload["__type"] == "com.amazon.coral.service#UnknownOperationException"
    assert known.records() == []


@pytest.mark.parametrize("body", [b"not json", b'{"ProductCode": ', b"[1, 2]", b'"MeterUsage"'])
def test_a_body_that_is_not_a_json_object_is_a_serialization_error(known: Emu, body: bytes) -> None:
    status, payload = _send(known, _signed(known, "MeterUsage", body))
    assert (status, _error(payload)) == (400, "SerializationException")


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-amz-json-1.0"])
def test_a_wrong_content_type_is_refused(known: Emu, content_type: str) -> None:
    status, payload = _send(known, _signed(known, "MeterUsage", METER, content_type=content_type))
    assert (status, _error(payload)) == (400, "SerializationException")
    assert JSON_11 in payload["message"]
    assert known.records() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Timestamp", "2026-11-26T10:00:00Z"),
        ("Timestamp", True),
        ("UsageQuantity", True),
        ("UsageQuantity", "7"),
    ],
)
def test_wrong_json_types_on_the_wire_are_serialization_errors(known: Emu, field: str, value: Any) -> None:
    # botocore's client takes ISO strings for timestamps and serializes them as epoch seconds; on the
    # wire, a timestamp is a JSON number (reference §4.2).
    status, payload = _send(known, _signed(known, "MeterUsage", METER | {field: value}))
    assert (status, _error(payload)) == (400, "SerializationException")
    assert known.calls()[-1]["error"] == "SerializationException"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_not_json(known: Emu, constant: bytes) -> None:
    body = b'{"ProductCode": "%s", "Timestamp": %s, "UsageDimension": "requests"}' % (
        PRODUCT.encode(),
        constant,
    )
    status, payload = _send(known, _signed(known, "MeterUsage", body))
    assert (status, _error(payload)) == (400, "SerializationException")
    assert known.calls()[-1]["error"] == "SerializationException"


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        (1e10, "TimestampOutOfBoundsException"),  # the year 2286: a date, in the future
        (2.6e11, "SerializationException"),  # past the year 9999
        (1e300, "SerializationException"),
        (-1e300, "SerializationException"),
        (2**63, "SerializationException"),
    ],
)
def test_absurd_timestamps_are_answered_not_a_dropped_connection(
    known: Emu, timestamp: float, error: str
) -> None:
    status, payload = _send(known, _signed(known, "MeterUsage", METER | {"Timestamp": timestamp}))
    assert (status, _error(payload)) == (400, error)
    assert known.calls()[-1]["error"] == error


# --- container credentials through boto3's real default chain -------------------------------------


@pytest.fixture
def container_env(emu: Emu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Emu:
    """Only ECS-style container credentials are available, from the emulator (reference §5.2)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never fall through to instance metadata
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", emu.url + "/_emulator/credentials")
    monkeypatch.setenv("AWS_ENDPOINT_URL_MARKETPLACE_METERING", emu.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return emu


def _pod(monkeypatch: pytest.MonkeyPatch, token: str) -> Any:
    """A fresh boto3 session and client with no explicit keys, as a pod holding `token`."""
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)
    session = boto3.session.Session()
    assert session.get_credentials().method == "container-role"
    return session.client("meteringmarketplace")


def test_container_credentials_through_the_default_chain(
    container_env: Emu, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = container_env
    _pod(monkeypatch, "pod-a").register_usage(**REGISTER)
    [call] = emu.calls()
    caller = call["caller"]
    assert caller.startswith("ASIAEMU")
    assert call["status"] == 200
    # The emulator knows this key's secret, so it recomputed the signature: with another secret on
    # its side, the same pod's next call no longer verifies.
    assert caller in emu.emulator.secrets
    emu.emulator.secrets[caller] = "not-what-the-pod-was-given"
    with pytest.raises(ClientError) as info:
        _pod(monkeypatch, "pod-a").register_usage(**REGISTER)
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_one_token_is_one_pod(container_env: Emu, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = container_env
    for token in ("pod-a", "pod-b", "pod-a"):
        _pod(monkeypatch, token).meter_usage(**METER)
    first, second, third = (c["caller"] for c in emu.calls())
    assert first != second
    assert third == first
    assert all(c["status"] == 200 for c in emu.calls())
    # Two pods, two records for the same hour; the third call was pod-a's identical retry.
    assert sorted(r["caller"] for r in emu.records()) == sorted([first, second])
