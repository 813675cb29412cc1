"""Unmodified boto3 against the emulator over real HTTP: every operation, every modeled error."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import DIMENSIONS, PRODUCT, T0, Emu
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _meter(client: Any, **kw: Any) -> dict[str, Any]:
    params = {"ProductCode": PRODUCT, "Timestamp": T0, "UsageDimension": "requests", "UsageQuantity": 7}
    params.update(kw)
    result: dict[str, Any] = client.meter_usage(**params)
    return result


# --- RegisterUsage --------------------------------------------------------------------------------


def test_register_usage_returns_a_ps256_token_signed_by_the_emulator_key(emu: Emu, client: Any) -> None:
    result = client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1, Nonce="n-123")
    header, payload, signature = result["Signature"].split(".")
    assert json.loads(_b64(header)) == {"alg": "PS256", "typ": "JWT"}
    claims = json.loads(_b64(payload))
    assert claims == {"productCode": PRODUCT, "publicKeyVersion": 1, "nonce": "n-123", "iat": int(T0)}
    pem = emu.admin("GET", "/_emulator/public-key")
    key = serialization.load_pem_public_key(pem.encode())
    key.verify(  # type: ignore[union-attr, call-arg]
        _b64(signature),
        f"{header}.{payload}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),  # type: ignore[arg-type]
        hashes.SHA256(),  # type: ignore[arg-type]
    )
    assert "PublicKeyRotationTimestamp" not in result


def test_register_usage_reports_key_rotation(emu: Emu, client: Any) -> None:
    emu.admin("POST", "/_emulator/key-versions", {"version": 1, "rotation_timestamp": "2026-12-01T00:00:00Z"})
    result = client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1, Nonce="x")
    assert result["PublicKeyRotationTimestamp"].isoformat() == "2026-12-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("setup", "kwargs", "error"),
    [
        (None, {"ProductCode": "unknown-product"}, "InvalidProductCodeException"),
        (None, {"PublicKeyVersion": 7}, "InvalidPublicKeyVersionException"),
        ({"path": "/_emulator/entitlement", "body": {"entitled": False}}, {}, "CustomerNotEntitledException"),
        ({"path": "/_emulator/faults", "body": {"kind": "throttle", "count": 1}}, {}, "ThrottlingException"),
        (
            {"path": "/_emulator/faults", "body": {"kind": "error500", "count": 1}},
            {},
            "InternalServiceErrorException",
        ),
        (
            {
                "path": "/_emulator/faults",
                "body": {"kind": "error", "error_type": "DisabledApiException", "count": 1},
            },
            {},
            "DisabledApiException",
        ),
        (
            {"path": "/_emulator/faults", "body": {"kind": "platform_not_supported", "count": 1}},
            {},
            "PlatformNotSupportedException",
        ),
    ],
)
def test_register_usage_errors_are_modeled_exceptions(
    emu: Emu, client: Any, setup: dict[str, Any] | None, kwargs: dict[str, Any], error: str
) -> None:
    if setup:
        emu.admin("POST", setup["path"], setup["body"])
    params = {"ProductCode": PRODUCT, "PublicKeyVersion": 1, "Nonce": "n"} | kwargs
    with pytest.raises(getattr(client.exceptions, error)) as info:
        client.register_usage(**params)
    assert info.value.response["Error"]["Code"] == error


def test_register_usage_from_another_region_is_invalid_region(emu: Emu) -> None:
    client = emu.client(region="eu-west-1")
    with pytest.raises(client.exceptions.InvalidRegionException):
        client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1)


def test_node_role_caller_gets_platform_not_supported(emu: Emu, client: Any) -> None:
    emu.admin("POST", "/_emulator/platform", {"caller": "AKIAPODONE0000000001", "supported": False})
    with pytest.raises(client.exceptions.PlatformNotSupportedException, match="ECS task or an EKS pod"):
        client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1)


def test_entitlement_errors_come_only_on_the_first_call_from_a_pod(emu: Emu, client: Any) -> None:
    # reference §1.1: later calls from the same task or pod do not throw, even after unsubscribing.
    client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1)
    emu.admin("POST", "/_emulator/entitlement", {"entitled": False})
    client.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1)
    other = emu.client(access_key="AKIAPODTWO0000000002", secret="s2")
    with pytest.raises(other.exceptions.CustomerNotEntitledException):
        other.register_usage(ProductCode=PRODUCT, PublicKeyVersion=1)


# --- MeterUsage -----------------------------------------------------------------------------------


def test_meter_usage_rounds_down_to_the_hour_and_is_idempotent(emu: Emu, client: Any) -> None:
    first = _meter(client, Timestamp=T0)
    again = _meter(client, Timestamp=T0 - 600)  # same hour after rounding, same quantity
    assert first["MeteringRecordId"] == again["MeteringRecordId"]
    records = emu.records()
    assert len(records) == 1
    assert records[0]["hour"] == int(T0 // 3600 * 3600)
    assert records[0]["request"]["UsageQuantity"] == 7


def test_meter_usage_with_a_different_quantity_in_the_same_hour_is_a_duplicate(client: Any) -> None:
    _meter(client, UsageQuantity=7)
    with pytest.raises(client.exceptions.DuplicateRequestException):
        _meter(client, UsageQuantity=8)


def test_meter_usage_records_are_per_pod_per_dimension_per_hour(emu: Emu, client: Any) -> None:
    other = emu.client(access_key="AKIAPODTWO0000000002", secret="s2")
    _meter(client, UsageQuantity=1)
    _meter(other, UsageQuantity=2)  # another pod: its own record for the same hour
    _meter(client, UsageDimension="storage_gb", UsageQuantity=3)
    _meter(client, Timestamp=T0 - 3600, UsageQuantity=4)
    assert sorted(r["quantity"] for r in emu.records()) == [1, 2, 3, 4]


def test_meter_usage_with_allocations(emu: Emu, client: Any) -> None:
    allocations = [
        {"AllocatedUsageQuantity": 5, "Tags": [{"Key": "tenant", "Value": "a"}]},
        {"AllocatedUsageQuantity": 2, "Tags": [{"Key": "tenant", "Value": "b"}]},
    ]
    _meter(client, UsageAllocations=allocations)
    # The same allocations in another order are the same record (idempotent).
    _meter(client, UsageAllocations=list(reversed(allocations)))
    assert emu.records()[0]["request"]["UsageAllocations"] == allocations


def test_client_token_reuse_with_other_parameters_is_an_idempotency_conflict(emu: Emu, client: Any) -> None:
    first = _meter(client, ClientToken="tok-1")
    assert _meter(client, ClientToken="tok-1")["MeteringRecordId"] == first["MeteringRecordId"]
    with pytest.raises(client.exceptions.IdempotencyConflictException) as info:
        _meter(client, ClientToken="tok-1", UsageQuantity=99)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


def test_dry_run_checks_everything_but_stores_nothing(emu: Emu, client: Any) -> None:
    _meter(client, DryRun=True, UsageQuantity=0)
    assert emu.records() == []
    _meter(client, UsageQuantity=5)  # the real record for the hour is still possible
    emu.admin("POST", "/_emulator/entitlement", {"entitled": False})
    fresh = emu.client(access_key="AKIAPODNEW0000000003", secret="s3")
    with pytest.raises(fresh.exceptions.CustomerNotEntitledException):
        _meter(fresh, DryRun=True)


def test_dry_run_error_mode_answers_dry_run_operation(emu: Emu, client: Any) -> None:
    emu.emulator.state.settings.dry_run_response = "error"
    with pytest.raises(ClientError) as info:
        _meter(client, DryRun=True)
    assert info.value.response["Error"]["Code"] == "DryRunOperation"
    assert emu.records() == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ProductCode": "nope"}, "InvalidProductCodeException"),
        ({"UsageDimension": "not-a-dimension"}, "InvalidUsageDimensionException"),
        ({"Timestamp": T0 - 6 * 3600 - 1}, "TimestampOutOfBoundsException"),
        ({"Timestamp": T0 + 60}, "TimestampOutOfBoundsException"),
        (
            {"UsageAllocations": [{"AllocatedUsageQuantity": 6}]},
            "InvalidUsageAllocationsException",
        ),
        (
            {"UsageAllocations": [{"AllocatedUsageQuantity": 7, "Tags": [{"Key": "bad#key", "Value": "v"}]}]},
            "InvalidTagException",
        ),
        (
            {"UsageAllocations": [{"AllocatedUsageQuantity": 7, "Tags": [{"Key": "k" * 101, "Value": "v"}]}]},
            "InvalidTagException",
        ),
        (
            {
                "UsageAllocations": [
                    {"AllocatedUsageQuantity": 1, "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(6)]},
                    {"AllocatedUsageQuantity": 6},
                ]
            },
            "InvalidTagException",
        ),
        (
            {"UsageAllocations": [{"AllocatedUsageQuantity": 3}, {"AllocatedUsageQuantity": 4}]},
            "InvalidUsageAllocationsException",
        ),
        (
            {
                "UsageQuantity": 2501,
                "UsageAllocations": [
                    {"AllocatedUsageQuantity": 1, "Tags": [{"Key": "n", "Value": str(i)}]}
                    for i in range(2501)
                ],
            },
            "InvalidUsageAllocationsException",
        ),
    ],
)
def test_meter_usage_errors_are_modeled_exceptions(client: Any, kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(getattr(client.exceptions, error)):
        _meter(client, **kwargs)


def test_meter_usage_tag_keys_across_a_record_are_at_most_five(client: Any) -> None:
    # Two allocations with 3 keys each: 6 distinct keys across the record (the safe reading, reference §2.1).
    allocations = [
        {"AllocatedUsageQuantity": 3, "Tags": [{"Key": k, "Value": "v"} for k in ("a", "b", "c")]},
        {"AllocatedUsageQuantity": 4, "Tags": [{"Key": k, "Value": "v"} for k in ("d", "e", "f")]},
    ]
    with pytest.raises(client.exceptions.InvalidTagException, match="5"):
        _meter(client, UsageAllocations=allocations)


def test_meter_usage_from_another_region_is_invalid_endpoint_region(emu: Emu) -> None:
    client = emu.client(region="eu-west-1")
    with pytest.raises(client.exceptions.InvalidEndpointRegionException):
        _meter(client)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("throttle", "ThrottlingException"),
        ("error500", "InternalServiceErrorException"),
        ("not_entitled", "CustomerNotEntitledException"),
    ],
)
def test_meter_usage_injected_faults_are_modeled_exceptions(
    emu: Emu, client: Any, fault: str, error: str
) -> None:
    emu.fault(operation="MeterUsage", kind=fault, count=1)
    with pytest.raises(getattr(client.exceptions, error)):
        _meter(client)
    assert _meter(client)["MeteringRecordId"]  # the count is used up: the next call goes through


def test_over_max_quantity_is_refused_by_the_service_too(emu: Emu, client: Any) -> None:
    # botocore checks minimums only; the service checks the maximum.
    with pytest.raises(ClientError) as info:
        _meter(client, UsageQuantity=2_147_483_648)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "usageQuantity" in info.value.response["Error"]["Message"]


# --- BatchMeterUsage ------------------------------------------------------------------------------


def _record(**kw: Any) -> dict[str, Any]:
    record = {"Timestamp": T0, "Dimension": "requests", "Quantity": 3, "CustomerAWSAccountId": "123456789012"}
    record.update(kw)
    return record


def test_batch_meter_usage_statuses(emu: Emu, client: Any) -> None:
    emu.admin(
        "POST", "/_emulator/customers", {"product_code": PRODUCT, "customer_aws_account_id": "123456789012"}
    )
    emu.admin("POST", "/_emulator/customers", {"product_code": PRODUCT, "customer_identifier": "cust-legacy"})
    first = client.batch_meter_usage(
        ProductCode=PRODUCT,
        UsageRecords=[
            _record(),
            {
                k: v
                for k, v in _record(CustomerIdentifier="cust-legacy").items()
                if k != "CustomerAWSAccountId"
            },
            _record(CustomerAWSAccountId="999999999999"),
        ],
    )
    assert [r["Status"] for r in first["Results"]] == ["Success", "Success", "CustomerNotSubscribed"]
    assert first["UnprocessedRecords"] == []
    again = client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_record(), _record(Quantity=4)])
    assert [r["Status"] for r in again["Results"]] == ["Success", "DuplicateRecord"]
    assert again["Results"][0]["MeteringRecordId"] == first["Results"][0]["MeteringRecordId"]
    assert len([r for r in emu.records() if r["operation"] == "BatchMeterUsage"]) == 2


def test_batch_meter_usage_with_license_arn_and_decimal_quantities(emu: Emu, client: Any) -> None:
    arn = "arn:aws:license-manager::123456789012:license:l-0123456789abcdef"
    emu.admin(
        "POST",
        "/_emulator/customers",
        {"product_code": PRODUCT, "customer_aws_account_id": "123456789012", "license_arn": arn},
    )
    record = {"Timestamp": T0, "Dimension": "requests", "QuantityAsDecimal": "2.5", "LicenseArn": arn}
    result = client.batch_meter_usage(UsageRecords=[record])
    assert result["Results"][0]["Status"] == "Success"
    # Compared by value: 2.50 is the same quantity, so the same record.
    again = client.batch_meter_usage(UsageRecords=[record | {"QuantityAsDecimal": "2.50"}])
    assert again["Results"][0]["MeteringRecordId"] == result["Results"][0]["MeteringRecordId"]
    assert [r["quantity"] for r in emu.records()] == [2.5]


def test_meter_usage_decimal_quantity_with_decimal_allocations(emu: Emu, client: Any) -> None:
    allocations = [
        {"AllocatedUsageQuantityAsDecimal": "1.25", "Tags": [{"Key": "tenant", "Value": "a"}]},
        {"AllocatedUsageQuantityAsDecimal": "0.75"},
    ]
    params = {"ProductCode": PRODUCT, "Timestamp": T0, "UsageDimension": "requests"}
    client.meter_usage(**params, UsageQuantityAsDecimal="2", UsageAllocations=allocations)
    with pytest.raises(client.exceptions.InvalidUsageAllocationsException):
        client.meter_usage(
            **params, UsageQuantityAsDecimal="2", UsageAllocations=[{"AllocatedUsageQuantity": 2}]
        )
    with pytest.raises(ClientError, match="both"):
        client.meter_usage(**params, UsageQuantity=2, UsageQuantityAsDecimal="2")
    assert [r["quantity"] for r in emu.records()] == [2]


def test_batch_meter_usage_window_is_24_hours_and_refuses_the_whole_batch(emu: Emu, client: Any) -> None:
    emu.admin(
        "POST", "/_emulator/customers", {"product_code": PRODUCT, "customer_aws_account_id": "123456789012"}
    )
    client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_record(Timestamp=T0 - 23 * 3600)])
    with pytest.raises(client.exceptions.TimestampOutOfBoundsException):
        client.batch_meter_usage(
            ProductCode=PRODUCT,
            UsageRecords=[_record(Dimension="storage_gb"), _record(Timestamp=T0 - 24 * 3600)],
        )
    assert len(emu.records()) == 1


def test_batch_meter_usage_unprocessed_records_fault(emu: Emu, client: Any) -> None:
    emu.admin(
        "POST", "/_emulator/customers", {"product_code": PRODUCT, "customer_aws_account_id": "123456789012"}
    )
    emu.fault(operation="BatchMeterUsage", kind="unprocessed", count=1)
    result = client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_record()])
    assert result["Results"] == [] and len(result["UnprocessedRecords"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "records", "error"),
    [
        ({"ProductCode": "nope"}, [_record()], "InvalidProductCodeException"),
        ({}, [_record(Dimension="nope")], "InvalidUsageDimensionException"),
        (
            {},
            [
                _record(
                    UsageAllocations=[{"AllocatedUsageQuantity": 3, "Tags": [{"Key": "k", "Value": "a*b"}]}]
                )
            ],
            "InvalidTagException",
        ),
        ({}, [_record(UsageAllocations=[{"AllocatedUsageQuantity": 1}])], "InvalidUsageAllocationsException"),
        (
            {},
            [{k: v for k, v in _record().items() if k != "CustomerAWSAccountId"}],
            "InvalidCustomerIdentifierException",
        ),
        ({}, [_record(CustomerAWSAccountId="12ab")], "InvalidCustomerIdentifierException"),
        ({}, [_record(Timestamp=T0 - 86400)], "TimestampOutOfBoundsException"),
        (
            {"ProductCode": None},
            [_record(LicenseArn="arn:aws:license-manager::123456789012:license:l-0")],
            "InvalidLicenseException",
        ),
    ],
)
def test_batch_meter_usage_errors_are_modeled_exceptions(
    client: Any, kwargs: dict[str, Any], records: list[dict[str, Any]], error: str
) -> None:
    params: dict[str, Any] = {"ProductCode": PRODUCT, "UsageRecords": records} | kwargs
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(getattr(client.exceptions, error)):
        client.batch_meter_usage(**params)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"kind": "throttle"}, "ThrottlingException"),
        ({"kind": "error500"}, "InternalServiceErrorException"),
        ({"kind": "error", "error_type": "DisabledApiException"}, "DisabledApiException"),
    ],
)
def test_batch_and_resolve_injected_faults(emu: Emu, client: Any, fault: dict[str, Any], error: str) -> None:
    emu.fault(operation="*", count=2, **fault)
    with pytest.raises(getattr(client.exceptions, error)):
        client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_record()])
    with pytest.raises(getattr(client.exceptions, error)):
        client.resolve_customer(RegistrationToken="anything")


def test_batch_over_25_records_is_refused(client: Any) -> None:
    with pytest.raises(ClientError) as info:
        client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_record(Dimension=DIMENSIONS[0])] * 26)
    assert info.value.response["Error"]["Code"] == "ValidationException"


# --- ResolveCustomer ------------------------------------------------------------------------------


def test_resolve_customer(emu: Emu, client: Any) -> None:
    made = emu.admin(
        "POST",
        "/_emulator/registration-tokens",
        {
            "product_code": PRODUCT,
            "customer_aws_account_id": "123456789012",
            "customer_identifier": "cust-1",
            "expires_in": 3600,
        },
    )
    result = client.resolve_customer(RegistrationToken=made["registration_token"])
    assert result["ProductCode"] == PRODUCT
    assert result["CustomerAWSAccountId"] == "123456789012"
    assert result["CustomerIdentifier"] == "cust-1"
    with pytest.raises(client.exceptions.InvalidTokenException):
        client.resolve_customer(RegistrationToken="not-a-token")
    emu.admin("POST", "/_emulator/clock", {"advance": 3600})
    with pytest.raises(client.exceptions.ExpiredTokenException):
        client.resolve_customer(RegistrationToken=made["registration_token"])
