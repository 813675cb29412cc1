"""Fault injection and per-account request quotas.

Faults are rules: which operation ("*" for all), what happens, and how often (the next `count` calls,
or a `rate` from 0 to 1). Kinds:
  throttle        ThrottlingException (HTTP 400), as AWS answers over quota
  error500        InternalServiceErrorException (HTTP 500)
  unavailable     a bare HTTP 503 with no AWS body, as a load balancer would give
  error           any AWS error: `error_type`, optional `message` and `status`
  not_entitled    CustomerNotEntitledException
  wrong_region    InvalidRegionException (RegisterUsage) / InvalidEndpointRegionException (others)
  platform_not_supported  PlatformNotSupportedException (what a node role gets)
  latency         sleep `latency_ms`, then carry on
  drop            close the connection before handling the request
  drop_response   handle the request (a record may be stored), then close without answering
  unprocessed     BatchMeterUsage answers every record as UnprocessedRecords
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.emulator.errors import AwsError
from sidecar.emulator.model import OPERATIONS

KINDS = (
    "throttle",
    "error500",
    "unavailable",
    "error",
    "not_entitled",
    "wrong_region",
    "platform_not_supported",
    "latency",
    "drop",
    "drop_response",
    "unprocessed",
)


_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "a string"),
    "operation": ((str,), "a string"),
    "count": ((int,), "a whole number"),
    "rate": ((int, float), "a number from 0 to 1"),
    "latency_ms": ((int,), "a whole number of milliseconds"),
    "error_type": ((str,), "a string"),
    "message": ((str,), "a string"),
    "status": ((int,), "an HTTP status code"),
}
_NULLABLE = {"count", "error_type", "message", "status"}


@dataclass
class FaultRule:
    kind: str
    operation: str = "*"
    count: int | None = None  # the next N matching calls; None = every call (subject to rate)
    rate: float = 1.0
    latency_ms: int = 0
    error_type: str | None = None
    message: str | None = None
    status: int | None = None
    id: int = 0
    fired: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        known = set(_FIELD_TYPES)
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown fault field(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        if "kind" not in data:
            raise ValueError(f"a fault needs 'kind', one of: {', '.join(KINDS)}")
        for name, value in data.items():
            # JSON from the admin API: a string count or a fractional one would break the rule later.
            types, what = _FIELD_TYPES[name]
            if value is None and name in _NULLABLE:
                continue
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"fault field '{name}' must be {what}, got {value!r}")
        rule = cls(**data)
        rule.rate = float(rule.rate)
        if rule.kind not in KINDS:
            raise ValueError(f"fault kind '{rule.kind}' is not one of: {', '.join(KINDS)}")
        if rule.operation != "*" and rule.operation not in OPERATIONS:
            raise ValueError(f"fault operation '{rule.operation}' is not one of: *, {', '.join(OPERATIONS)}")
        if rule.kind == "error" and not rule.error_type:
            raise ValueError("a fault of kind 'error' needs 'error_type', for example 'DisabledApiException'")
        if not 0.0 <= rule.rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {rule.rate}")
        if rule.count is not None and rule.count < 1:
            raise ValueError(f"fault count must be at least 1, got {rule.count}")
        if rule.latency_ms < 0:
            raise ValueError(f"fault latency_ms must not be negative, got {rule.latency_ms}")
        if rule.status is not None and not 400 <= rule.status <= 599:
            raise ValueError(f"fault status must be an HTTP error status (400-599), got {rule.status}")
        return rule

    @classmethod
    def parse_spec(cls, spec: str) -> FaultRule:
        """Command-line form: `OPERATION:KIND[:key=value,...]`, e.g. `MeterUsage:throttle:count=3`."""
        parts = spec.split(":", 2)
        if len(parts) < 2:
            raise ValueError(
                f"fault '{spec}' must look like OPERATION:KIND[:key=value,...], e.g. MeterUsage:throttle:count=3"
            )
        data: dict[str, Any] = {"operation": parts[0], "kind": parts[1]}
        for item in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
            key, _, value = item.partition("=")
            try:
                if key in ("count", "latency_ms", "status"):
                    data[key] = int(value)
                elif key == "rate":
                    data[key] = float(value)
                else:
                    data[key] = value
            except ValueError:
                raise ValueError(f"fault '{spec}': {key} must be a number, got '{value}'") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def error_for(self, operation: str) -> AwsError | None:
        if self.kind == "throttle":
            return AwsError("ThrottlingException", self.message or "Rate exceeded")
        if self.kind == "error500":
            return AwsError(
                "InternalServiceErrorException",
                self.message or "An internal error has occurred. Retry your request.",
            )
        if self.kind == "not_entitled":
            return AwsError(
                "CustomerNotEntitledException", self.message or "Customer is not entitled to the product."
            )
        if self.kind == "platform_not_supported":
            return AwsError(
                "PlatformNotSupportedException",
                self.message or "This operation can only be called from within an ECS task or an EKS pod",
            )
        if self.kind == "wrong_region":
            return region_error(operation)
        if self.kind == "error":
            assert self.error_type is not None
            return AwsError(self.error_type, self.message or f"Injected {self.error_type}", self.status)
        return None


def region_error(operation: str) -> AwsError:
    # RegisterUsage says InvalidRegionException; MeterUsage says InvalidEndpointRegionException (§1.4, §2.4).
    if operation == "RegisterUsage":
        return AwsError(
            "InvalidRegionException",
            "RegisterUsage must be called in the same AWS Region the ECS task or EKS pod was launched in.",
        )
    return AwsError(
        "InvalidEndpointRegionException",
        "The endpoint being called is in a AWS Region different from your EC2 instance, ECS task, or EKS pod. "
        "The Region of the Metering Service endpoint and the AWS Region of the resource must match.",
    )


@dataclass
class Faults:
    rules: list[FaultRule] = field(default_factory=list)
    _next_id: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(default_factory=random.Random)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self.rules.append(rule)
            return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def draw(self, operation: str) -> list[FaultRule]:
        """The rules that fire for this call, consuming counts: any latency, and at most one outcome (an
        error, a drop, ...), the first in the order the rules were added. A rule that cannot take effect on
        this call is not drawn, so "throttle the next 3" and "drop the next 2" fail 5 calls, not 3."""
        fired: list[FaultRule] = []
        with self._lock:
            for rule in list(self.rules):
                if rule.operation not in ("*", operation):
                    continue
                if rule.kind == "unprocessed" and operation != "BatchMeterUsage":
                    continue
                if rule.kind != "latency" and any(f.kind != "latency" for f in fired):
                    continue
                if rule.kind == "latency" and any(f.kind == "latency" for f in fired):
                    continue
                if rule.rate < 1.0 and self._random.random() >= rule.rate:
                    continue
                rule.fired += 1
                fired.append(rule)
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
        return fired

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self.rules]


# AWS quotas per account per Region: RegisterUsage 5/s, MeterUsage 10/s, BatchMeterUsage 10/s
# (reference/aws-metering-semantics.md §2.5). ResolveCustomer's quota is not published; 20/s here.
QUOTAS = {"RegisterUsage": 5.0, "MeterUsage": 10.0, "BatchMeterUsage": 10.0, "ResolveCustomer": 20.0}


class RateLimiter:
    """A token bucket per (account, operation), on real time: quotas are about wall-clock load."""

    def __init__(self, quotas: dict[str, float] | None = None) -> None:
        self.quotas = dict(QUOTAS if quotas is None else quotas)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, account: str, operation: str, now: float | None = None) -> bool:
        rate = self.quotas.get(operation)
        if rate is None:
            return True
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get((account, operation), (rate, now))
            tokens = min(rate, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[(account, operation)] = (tokens, now)
                return False
            self._buckets[(account, operation)] = (tokens - 1.0, now)
            return True
