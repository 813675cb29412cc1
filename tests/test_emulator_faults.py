"""Fault injection and quotas, seen from a real boto3 client and from the call log (GET /_emulator/calls).

Every test reads the log back: which faults fired on which call, the status and the error. Random faults
(`rate`) are made deterministic by seeding the emulator's random source.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError
from conftest import PRODUCT, T0, Emu

from sidecar.emulator.faults import KINDS, FaultRule, RateLimiter


def _register(client: Any) -> dict[str, Any]:
    result: dict[str, Any] = client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1, Nonce="n")
    return result


def _meter(client: Any, **kw: Any) -> dict[str, Any]:
    params = {"ProductCode": PRODUCT, "Timestamp": T0, "UsageDimension": "requests", "UsageQuantity": 7}
    result: dict[str, Any] = client.meter_usage(**(params | kw))
    return result


def _log(emu: Emu) -> list[tuple[str, int, str | None, list[str]]]:
    """(operation, status, error, faults) per call, in order."""
    return [(c["operation"], c["status"], c["error"], c["faults"]) for c in emu.calls()]


def _post_raw(emu: Emu, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(emu.url + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


OK = ("RegisterUsage", 200, None, [])
THROTTLED = ("RegisterUsage", 400, "ThrottlingException", ["throttle"])


# --- count and rate -------------------------------------------------------------------------------


def test_throttle_with_a_count_fires_that_many_times_then_is_gone(emu: Emu, client: Any) -> None:
    rule = emu.fault(operation="RegisterUsage", kind="throttle", count=3)
    for _ in range(2):
        with pytest.raises(client.exceptions.ThrottlingException):
            _register(client)
    [pending] = emu.admin("GET", "/_emulator/faults")["faults"]
    assert (pending["id"], pending["count"], pending["fired"]) == (rule["id"], 1, 2)
    with pytest.raises(client.exceptions.ThrottlingException):
        _register(client)
    assert emu.admin("GET", "/_emulator/faults")["faults"] == []
    _register(client)
    assert _log(emu) == [THROTTLED, THROTTLED, THROTTLED, OK]


def test_botocore_retries_a_throttled_call(emu: Emu) -> None:
    client = emu.client(attempts=2)
    emu.fault(operation="RegisterUsage", kind="throttle", count=1)
    assert _register(client)["ResponseMetadata"]["RetryAttempts"] == 1
    assert _log(emu) == [THROTTLED, OK]


def test_a_fault_for_one_operation_leaves_the_others_alone(emu: Emu, client: Any) -> None:
    emu.fault(operation="MeterUsage", kind="throttle", count=1)
    _register(client)
    with pytest.raises(client.exceptions.ThrottlingException):
        _meter(client)
    assert _log(emu) == [OK, ("MeterUsage", 400, "ThrottlingException", ["throttle"])]


@pytest.mark.parametrize("seed", [7, 2026])
def test_error500_at_a_rate_fires_exactly_where_the_seeded_draws_say(
    emu: Emu, client: Any, seed: int
) -> None:
    emu.emulator.faults._random = random.Random(seed)
    emu.fault(operation="RegisterUsage", kind="error500", rate=0.5)
    calls = 24
    replay = random.Random(seed)
    expected = [replay.random() < 0.5 for _ in range(calls)]  # one draw per matching call
    assert 0 < sum(expected) < calls, "this seed must give both outcomes"

    failed = []
    for _ in range(calls):
        try:
            _register(client)
            failed.append(False)
        except client.exceptions.InternalServiceErrorException as err:
            assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 500
            failed.append(True)
    assert failed == expected
    error500 = ("RegisterUsage", 500, "InternalServiceErrorException", ["error500"])
    assert _log(emu) == [error500 if f else OK for f in expected]
    registrations = emu.admin("GET", "/_emulator/registrations")["registrations"]
    assert len(registrations) == calls - sum(expected)
    [rule] = emu.admin("GET", "/_emulator/faults")["faults"]  # no count: it stays
    assert rule["fired"] == sum(expected)


def test_a_rate_with_a_count_stops_after_count_firings(emu: Emu, client: Any) -> None:
    emu.emulator.faults._random = random.Random(11)
    emu.fault(operation="RegisterUsage", kind="throttle", rate=0.5, count=2)
    replay = random.Random(11)
    draws = [replay.random() < 0.5 for _ in range(20)]
    second = [i for i, fired in enumerate(draws) if fired][1]
    for _ in range(second + 3):
        with contextlib.suppress(client.exceptions.ThrottlingException):
            _register(client)
    log = _log(emu)
    assert [i for i, entry in enumerate(log) if entry == THROTTLED] == [
        i for i in range(second + 1) if draws[i]
    ]
    assert log[second + 1 :] == [OK, OK]
    assert emu.admin("GET", "/_emulator/faults")["faults"] == []


# --- latency, drops and 503s ----------------------------------------------------------------------


def test_latency_delays_the_answer(emu: Emu, client: Any) -> None:
    emu.fault(operation="RegisterUsage", kind="latency", latency_ms=200, count=1)
    started = time.monotonic()
    _register(client)
    assert time.monotonic() - started >= 0.2
    assert _log(emu) == [("RegisterUsage", 200, None, ["latency"])]


def test_drop_closes_the_connection_before_handling(emu: Emu, client: Any) -> None:
    emu.fault(operation="MeterUsage", kind="drop", count=1)
    with pytest.raises(ConnectionClosedError):
        _meter(client)
    assert _log(emu) == [("MeterUsage", 0, "ConnectionDropped", ["drop"])]
    assert emu.records() == []


def test_a_dropped_call_is_retried_by_botocore_and_billed_once(emu: Emu) -> None:
    client = emu.client(attempts=3)
    emu.fault(operation="MeterUsage", kind="drop", count=1)
    result = _meter(client)
    assert result["ResponseMetadata"]["RetryAttempts"] == 1
    assert _log(emu) == [("MeterUsage", 0, "ConnectionDropped", ["drop"]), ("MeterUsage", 200, None, [])]
    [record] = emu.records()
    assert record["metering_record_id"] == result["MeteringRecordId"]


def test_drop_response_stores_the_record_and_an_identical_retry_gets_the_same_id(
    emu: Emu, client: Any
) -> None:
    emu.fault(operation="MeterUsage", kind="drop_response", count=1)
    with pytest.raises(ConnectionClosedError):
        _meter(client, ClientToken="retry-me")
    [stored] = emu.records()  # handled before the answer was lost
    [dropped] = emu.calls()
    assert (dropped["status"], dropped["error"], dropped["faults"]) == (
        0,
        "ResponseDropped",
        ["drop_response"],
    )
    assert dropped["response"] == {"MeteringRecordId": stored["metering_record_id"]}

    retry = _meter(client, ClientToken="retry-me")
    assert retry["MeteringRecordId"] == stored["metering_record_id"]
    assert len(emu.records()) == 1


def test_drop_response_with_botocore_retries_is_billed_once(emu: Emu) -> None:
    client = emu.client(attempts=3)
    emu.fault(operation="MeterUsage", kind="drop_response", count=1)
    result = _meter(client)
    [record] = emu.records()
    assert result["MeteringRecordId"] == record["metering_record_id"]
    assert _log(emu) == [
        ("MeterUsage", 0, "ResponseDropped", ["drop_response"]),
        ("MeterUsage", 200, None, []),
    ]


def test_unavailable_is_a_bare_503(emu: Emu, client: Any) -> None:
    emu.fault(operation="RegisterUsage", kind="unavailable", count=1)
    with pytest.raises(ClientError) as info:
        _register(client)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert _log(emu) == [("RegisterUsage", 503, None, ["unavailable"])]


def test_unavailable_is_retried_by_botocore(emu: Emu) -> None:
    client = emu.client(attempts=3)
    emu.fault(operation="RegisterUsage", kind="unavailable", count=2)
    assert _register(client)["ResponseMetadata"]["RetryAttempts"] == 2
    unavailable = ("RegisterUsage", 503, None, ["unavailable"])
    assert _log(emu) == [unavailable, unavailable, OK]


def test_wrong_region_gives_each_operation_its_own_error(emu: Emu, client: Any) -> None:
    emu.fault(kind="wrong_region", count=2)
    with pytest.raises(client.exceptions.InvalidRegionException):
        _register(client)
    with pytest.raises(client.exceptions.InvalidEndpointRegionException):
        _meter(client)
    assert _log(emu) == [
        ("RegisterUsage", 400, "InvalidRegionException", ["wrong_region"]),
        ("MeterUsage", 400, "InvalidEndpointRegionException", ["wrong_region"]),
    ]
    assert emu.records() == []


# --- AWS's per-account quotas ---------------------------------------------------------------------


def test_rate_limits_throttle_a_burst_from_one_account(emu: Emu, client: Any) -> None:
    emu.emulator.state.settings.rate_limits = True
    other_key = "AKIAOTHERACCOUNT0001"
    emu.emulator.state.settings.accounts[other_key] = "444455556666"
    other = emu.client(access_key=other_key, secret="other")

    started = time.monotonic()
    outcomes = []
    for _ in range(15):
        try:
            _register(client)
            outcomes.append(True)
        except client.exceptions.ThrottlingException:
            outcomes.append(False)
    elapsed = time.monotonic() - started

    assert outcomes[:5] == [True] * 5  # the bucket starts full: 5 requests per second
    assert False in outcomes[5:]
    # Never more than the bucket plus what refilled at 5/s while the burst ran.
    assert sum(outcomes) <= 5 + int(elapsed * 5) + 1
    log = emu.calls()
    assert [c["status"] == 200 for c in log] == outcomes
    assert all(
        c["faults"] == ["quota"] and c["error"] == "ThrottlingException" for c in log if c["status"] != 200
    )
    # Another account has its own quota, and MeterUsage has its own (10/s).
    _register(other)
    _meter(client)


def test_rate_limiter_token_bucket() -> None:
    limiter = RateLimiter()
    assert [limiter.allow("acct", "RegisterUsage", now=100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow("acct", "RegisterUsage", now=100.1)  # half a token back: not enough
    assert limiter.allow("acct", "RegisterUsage", now=100.2)  # one token after 1/5 s
    assert not limiter.allow("acct", "RegisterUsage", now=100.2)
    assert limiter.allow("other", "RegisterUsage", now=100.2)
    assert [limiter.allow("acct", "MeterUsage", now=100.2) for _ in range(11)] == [True] * 10 + [False]
    # After a long pause the bucket holds at most one second's worth.
    assert [limiter.allow("acct", "RegisterUsage", now=1000.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("acct", "NotAnOperation", now=0.0)


# --- fault specs and the admin API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "MeterUsage:throttle:count=3",
            {"operation": "MeterUsage", "kind": "throttle", "count": 3, "rate": 1.0},
        ),
        ("*:error500:rate=0.5", {"operation": "*", "kind": "error500", "count": None, "rate": 0.5}),
        ("RegisterUsage:latency:latency_ms=200,count=1", {"kind": "latency", "latency_ms": 200, "count": 1}),
        (
            "BatchMeterUsage:error:error_type=DisabledApiException,message=off,status=400",
            {"kind": "error", "error_type": "DisabledApiException", "message": "off", "status": 400},
        ),
        ("ResolveCustomer:drop", {"operation": "ResolveCustomer", "kind": "drop", "count": None}),
    ],
)
def test_fault_specs_parse(spec: str, expected: dict[str, Any]) -> None:
    rule = FaultRule.parse_spec(spec).to_dict()
    assert {k: rule[k] for k in expected} == expected


def test_every_kind_parses() -> None:
    for kind in KINDS:
        extra = ":error_type=DisabledApiException" if kind == "error" else ""
        assert FaultRule.parse_spec(f"*:{kind}{extra}").kind == kind


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("throttle", r"must look like OPERATION:KIND"),
        ("MeterUsage:bogus", r"fault kind 'bogus' is not one of: throttle, error500"),
        ("MeterUsage:throttle:rate=1.5", r"rate must be between 0 and 1, got 1.5"),
        ("MeterUsage:throttle:rate=-0.1", r"rate must be between 0 and 1"),
        ("MeterUsage:throttle:rate=nan", r"rate must be between 0 and 1"),
        ("MeterUsage:throttle:rate=often", r"rate.*often"),
        ("MeterUsage:throttle:count=0", r"count must be at least 1, got 0"),
        ("MeterUsage:throttle:count=three", r"count.*three"),
        ("MeterUsage:latency:latency_ms=-5", r"latency_ms"),
        ("MeterUsage:throttle:bogus=1", r"unknown fault field\(s\): bogus"),
        ("MeterUsage:error", r"needs 'error_type'"),
        ("MeterUsage:error:error_type=X,status=200", r"status"),
        ("Meterusage:throttle", r"operation 'Meterusage'.*MeterUsage"),
    ],
)
def test_bad_fault_specs_name_the_problem(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        FaultRule.parse_spec(spec)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"kind=throttle", "Expecting value"),
        (b'["throttle"]', "JSON object"),
        (b"{}", "kind"),
        (b'{"kind": "bogus"}', "fault kind 'bogus'"),
        (b'{"kind": "throttle", "when": "now"}', "unknown fault field(s): when"),
        (b'{"kind": "throttle", "count": 0}', "count must be at least 1"),
        (b'{"kind": "throttle", "count": "3"}', "count"),
        (b'{"kind": "throttle", "count": 2.5}', "count"),
        (b'{"kind": "throttle", "rate": "half"}', "rate"),
        (b'{"kind": "throttle", "rate": 2}', "rate must be between 0 and 1"),
        (b'{"kind": "latency", "latency_ms": "200"}', "latency_ms"),
        (b'{"kind": "error"}', "error_type"),
        (b'{"kind": "throttle", "operation": "meterusage"}', "operation 'meterusage'"),
    ],
)
def test_admin_refuses_a_bad_fault_with_400_and_a_message(emu: Emu, body: bytes, problem: str) -> None:
    status, payload = _post_raw(emu, "/_emulator/faults", body)
    assert status == 400
    assert payload["error"] == "bad_request"
    assert problem in payload["message"]
    assert emu.admin("GET", "/_emulator/faults")["faults"] == []


def test_admin_lists_and_clears_faults(emu: Emu, client: Any) -> None:
    first = emu.fault(operation="MeterUsage", kind="throttle", count=3)
    second = emu.fault(kind="latency", latency_ms=5)
    assert second["id"] == first["id"] + 1
    listed = emu.admin("GET", "/_emulator/faults")["faults"]
    assert [(f["id"], f["kind"], f["operation"]) for f in listed] == [
        (first["id"], "throttle", "MeterUsage"),
        (second["id"], "latency", "*"),
    ]
    assert emu.admin("DELETE", "/_emulator/faults") == {"faults": []}
    _meter(client)
    assert _log(emu) == [("MeterUsage", 200, None, [])]


def test_an_unexpected_failure_inside_the_emulator_is_a_logged_500(
    emu: Emu, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the emulator")

    monkeypatch.setattr(emu.emulator.state, "handle", broken)
    client = emu.client()
    with pytest.raises(client.exceptions.InternalServiceErrorException):
        client.register_usage(ProductCode="prod-test-0001", PublicKeyVersion=1)
    last = emu.calls()[-1]
    assert (last["operation"], last["status"], last["error"]) == ("RegisterUsage", 500, "EmulatorFailure")
