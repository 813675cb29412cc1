"""The Metering Service's behaviour: products, entitlement, records, duplicates and idempotency.

Requests reach `handle()` already authenticated (sigv4) and validated against botocore's model (model).
Everything here runs under one lock, so concurrent callers see the service's rules atomically.
Rules cite reference/aws-metering-semantics.md (§n).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sidecar.clock import Clock
from sidecar.emulator import model, rules
from sidecar.emulator.errors import AwsError
from sidecar.emulator.faults import region_error
from sidecar.emulator.signer import Signer
from sidecar.emulator.sigv4 import Identity

DEFAULT_ACCOUNT = "111122223333"


@dataclass
class Customer:
    product_code: str
    customer_identifier: str | None = None
    customer_aws_account_id: str | None = None
    license_arn: str | None = None
    subscribed: bool = True


@dataclass
class Settings:
    region: str = "us-east-1"
    # product code -> dimension API names (an empty list: an hourly product with no custom dimensions)
    products: dict[str, list[str]] = field(default_factory=dict)
    entitled: bool = True
    # key version -> PublicKeyRotationTimestamp (None while the version is current) (§1.2)
    key_versions: dict[int, float | None] = field(default_factory=lambda: {1: None})
    # DryRun success: the model says it "returns DryRunOperation"; AWS's sample treats any error as a
    # failure, which suggests HTTP 200. The real shape is [UNCONFIRMED] (§2.4, §8): "ok" answers 200
    # with no record, "error" answers a DryRunOperation error. Clients should accept both.
    dry_run_response: str = "ok"
    rate_limits: bool = False
    strict_auth: bool = False
    accounts: dict[str, str] = field(default_factory=dict)  # access key id -> account id


class EmulatorState:
    def __init__(self, settings: Settings, clock: Clock, signer: Signer) -> None:
        self.settings = settings
        self.clock = clock
        self.signer = signer
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.caller_entitlement: dict[str, bool] = {}
            self.unsupported_callers: set[str] = set()
            # Callers whose entitlement AWS already confirmed: later calls from the same task or pod
            # never throw CustomerNotEntitled (§1.1).
            self.confirmed_callers: set[str] = set()
            self.meter_records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
            self.batch_records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
            self.client_tokens: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
            self.customers: list[Customer] = []
            self.registration_tokens: dict[str, tuple[Customer, float | None]] = {}
            self.accepted: list[dict[str, Any]] = []
            self.registrations: list[dict[str, Any]] = []

    # --- admin -----------------------------------------------------------------------------------

    def account_of(self, access_key_id: str) -> str:
        return self.settings.accounts.get(access_key_id, DEFAULT_ACCOUNT)

    def add_customer(self, customer: Customer) -> None:
        with self.lock:
            self.customers.append(customer)

    def new_registration_token(self, customer: Customer, expires_in: float | None) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            expires_at = None if expires_in is None else self.clock.now() + expires_in
            self.registration_tokens[token] = (customer, expires_at)
        return token

    # --- the service -----------------------------------------------------------------------------

    def handle(self, operation: str, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        model.validate_with_botocore(operation, params)
        rules.check_model_constraints(params, model.input_shape(operation))
        handler = getattr(self, f"_{operation}")
        with self.lock:
            result: dict[str, Any] = handler(params, identity)
            return result

    def _entitled(self, caller: str) -> bool:
        return self.caller_entitlement.get(caller, self.settings.entitled)

    def _check_product(self, product_code: str) -> list[str]:
        dimensions = self.settings.products.get(product_code)
        if dimensions is None:
            raise AwsError(
                "InvalidProductCodeException",
                "The product code passed does not match the product code used for publishing the product.",
            )
        return dimensions

    def _check_entitlement(self, caller: str) -> None:
        if caller in self.unsupported_callers:
            raise AwsError(
                "PlatformNotSupportedException",
                "This operation can only be called from within an ECS task or an EKS pod",
            )
        if caller not in self.confirmed_callers and not self._entitled(caller):
            raise AwsError(
                "CustomerNotEntitledException",
                "Exception thrown when the customer does not have a valid subscription for the product.",
            )

    def _RegisterUsage(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        if identity.region != self.settings.region:
            raise region_error("RegisterUsage")
        self._check_product(params["ProductCode"])
        version = params["PublicKeyVersion"]
        if version not in self.settings.key_versions:
            raise AwsError("InvalidPublicKeyVersionException", f"Public Key version {version} is invalid.")
        self._check_entitlement(identity.access_key_id)
        self.confirmed_callers.add(identity.access_key_id)
        claims: dict[str, Any] = {"productCode": params["ProductCode"], "publicKeyVersion": version}
        if "Nonce" in params:
            claims["nonce"] = params["Nonce"]
        claims["iat"] = int(self.clock.now())
        result: dict[str, Any] = {"Signature": self.signer.sign(claims)}
        rotation = self.settings.key_versions[version]
        if rotation is not None:
            # "Only included when public key version has expired" (§1.2); epoch seconds on the wire.
            result["PublicKeyRotationTimestamp"] = rotation
        self.registrations.append(
            {
                "caller": identity.access_key_id,
                "product_code": params["ProductCode"],
                "public_key_version": version,
                "nonce": params.get("Nonce"),
                "registered_at": claims["iat"],
            }
        )
        return result

    def _MeterUsage(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        caller = identity.access_key_id
        if identity.region != self.settings.region:
            raise region_error("MeterUsage")
        dimensions = self._check_product(params["ProductCode"])
        token = params.get("ClientToken")
        fingerprint = json.dumps({k: v for k, v in params.items() if k != "ClientToken"}, sort_keys=True)
        if token is not None and (caller, token) in self.client_tokens:
            # "If you retry the operation with the same ClientToken, but with different parameters, the
            # retry fails with an IdempotencyConflictException" (§2.3).
            seen, seen_result = self.client_tokens[(caller, token)]
            if seen != fingerprint:
                raise AwsError(
                    "IdempotencyConflictException", "The ClientToken is being used for multiple requests."
                )
            return dict(seen_result)
        if params["UsageDimension"] not in dimensions:
            raise AwsError(
                "InvalidUsageDimensionException",
                f"The usage dimension '{params['UsageDimension']}' does not match one of the UsageDimensions "
                "associated with products.",
            )
        # For custom-metered products, MeterUsage is the entitlement check (§2.4).
        self._check_entitlement(caller)
        now = self.clock.now()
        timestamp = float(params["Timestamp"])
        rules.check_meter_window(timestamp, now)
        quantity = rules.quantity(params, "UsageQuantity", "UsageQuantityAsDecimal")
        allocations = params.get("UsageAllocations")
        if allocations is not None:
            rules.check_allocations(quantity, allocations, decimal="UsageQuantityAsDecimal" in params)
        if params.get("DryRun"):
            # DryRun never stores a record (§2.1, §2.4).
            if self.settings.dry_run_response == "error":
                raise AwsError(
                    "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
                )
            return {}
        self.confirmed_callers.add(caller)
        hour = rules.hour_start(timestamp)
        key = (caller, params["ProductCode"], params["UsageDimension"], hour)
        usage = rules.canonical_usage(quantity, allocations)
        existing = self.meter_records.get(key)
        if existing is not None:
            # Once per hour per dimension per task or pod; identical after rounding is idempotent (§2.3).
            if existing["usage"] != usage:
                raise AwsError(
                    "DuplicateRequestException",
                    "A metering record has already been emitted by the same EC2 instance, ECS task, or EKS pod "
                    "for the given {usageDimension, timestamp} with a different usageQuantity.",
                )
            result = {"MeteringRecordId": existing["id"]}
        else:
            record_id = str(uuid.uuid4())
            self.meter_records[key] = {"id": record_id, "usage": usage}
            self.accepted.append(
                {
                    "operation": "MeterUsage",
                    "caller": caller,
                    "account": self.account_of(caller),
                    "metering_record_id": record_id,
                    "product_code": params["ProductCode"],
                    "dimension": params["UsageDimension"],
                    "hour": hour,
                    "quantity": _number(quantity),
                    "accepted_at": now,
                    "request": params,
                }
            )
            result = {"MeteringRecordId": record_id}
        if token is not None:
            self.client_tokens[(caller, token)] = (fingerprint, result)
        return result

    def _find_customer(self, product_code: str | None, record: dict[str, Any]) -> Customer | None:
        for customer in self.customers:
            if product_code is not None and customer.product_code != product_code:
                continue
            if record.get("LicenseArn"):
                if customer.license_arn == record["LicenseArn"]:
                    return customer
                continue
            if (
                record.get("CustomerIdentifier")
                and customer.customer_identifier == record["CustomerIdentifier"]
            ):
                return customer
            if (
                record.get("CustomerAWSAccountId")
                and customer.customer_aws_account_id == record["CustomerAWSAccountId"]
            ):
                return customer
        return None

    def _record_product(self, request_product: str | None, record: dict[str, Any]) -> str:
        """A record's product: from its LicenseArn (Concurrent Agreements) or the request's ProductCode (§3)."""
        license_arn = record.get("LicenseArn")
        if license_arn:
            licensed = [c for c in self.customers if c.license_arn == license_arn]
            if not licensed:
                raise AwsError(
                    "InvalidLicenseException",
                    "Ensure the LicenseArn is valid, matches the customer, and usage is within the license activation period.",
                )
            return licensed[0].product_code
        if not request_product:
            raise AwsError(
                "ValidationException", "A usage record without LicenseArn needs the request's ProductCode."
            )
        return request_product

    def _BatchMeterUsage(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        request_product = params.get("ProductCode")
        if request_product:
            self._check_product(request_product)
        now = self.clock.now()
        records = params["UsageRecords"]
        # "If any record is out of range, the entire batch is not processed" (§3): check all first.
        for record in records:
            product_code = self._record_product(request_product, record)
            if not record.get("LicenseArn"):
                rules.check_customer_fields(record)
            rules.check_batch_window(float(record["Timestamp"]), now)
            if record["Dimension"] not in self._check_product(product_code):
                raise AwsError(
                    "InvalidUsageDimensionException",
                    f"The usage dimension '{record['Dimension']}' does not match one of the UsageDimensions "
                    "associated with products.",
                )
            amount = rules.quantity(record, "Quantity", "QuantityAsDecimal")
            if record.get("UsageAllocations") is not None:
                rules.check_allocations(
                    amount, record["UsageAllocations"], decimal="QuantityAsDecimal" in record
                )
        results = []
        for record in records:
            product_code = self._record_product(request_product, record)
            customer = self._find_customer(product_code, record)
            if customer is None or not customer.subscribed:
                results.append({"UsageRecord": record, "Status": "CustomerNotSubscribed"})
                continue
            who = (
                customer.license_arn or customer.customer_aws_account_id or customer.customer_identifier or ""
            )
            hour = rules.hour_start(float(record["Timestamp"]))
            key = (product_code, who, record["Dimension"], hour)
            amount = rules.quantity(record, "Quantity", "QuantityAsDecimal")
            usage = rules.canonical_usage(amount, record.get("UsageAllocations"))
            existing = self.batch_records.get(key)
            if existing is not None:
                # "A previously metered UsageRecord had the same customer, dimension, and time, but a
                # different quantity" is DuplicateRecord; the same one is idempotent (§3).
                status = "Success" if existing["usage"] == usage else "DuplicateRecord"
                entry = {"UsageRecord": record, "Status": status}
                if status == "Success":
                    entry["MeteringRecordId"] = existing["id"]
                results.append(entry)
                continue
            record_id = str(uuid.uuid4())
            self.batch_records[key] = {"id": record_id, "usage": usage}
            self.accepted.append(
                {
                    "operation": "BatchMeterUsage",
                    "caller": identity.access_key_id,
                    "account": self.account_of(identity.access_key_id),
                    "metering_record_id": record_id,
                    "product_code": product_code,
                    "dimension": record["Dimension"],
                    "hour": hour,
                    "quantity": _number(amount),
                    "customer": who,
                    "accepted_at": now,
                    "request": record,
                }
            )
            results.append({"UsageRecord": record, "MeteringRecordId": record_id, "Status": "Success"})
        return {"Results": results, "UnprocessedRecords": []}

    def _ResolveCustomer(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        entry = self.registration_tokens.get(params["RegistrationToken"])
        if entry is None:
            raise AwsError("InvalidTokenException", "Registration token is invalid.")
        customer, expires_at = entry
        if expires_at is not None and self.clock.now() >= expires_at:
            raise AwsError("ExpiredTokenException", "The submitted registration token has expired.")
        result: dict[str, Any] = {"ProductCode": customer.product_code}
        if customer.customer_identifier:
            result["CustomerIdentifier"] = customer.customer_identifier
        if customer.customer_aws_account_id:
            result["CustomerAWSAccountId"] = customer.customer_aws_account_id
        if customer.license_arn:
            result["LicenseArn"] = customer.license_arn
        return result


def _number(value: Decimal) -> int | float:
    """A quantity for the JSON record list: an int when whole."""
    return int(value) if value == value.to_integral_value() else float(value)
