"""The Metering Service's rules that botocore's validator does not check. Pure functions on plain data.

Each rule raises the AwsError that AWS documents for it. Sources are in
reference/aws-metering-semantics.md (cited as §n below).
"""

from __future__ import annotations

import calendar
import functools
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sidecar.emulator.errors import AwsError

HOUR = 3600
# MeterUsage: "If you submit records more than six hours after events occur, the records won't be
# accepted" (§2.2). Future timestamps are [UNCONFIRMED]; we refuse them, which is the safe reading.
METER_USAGE_WINDOW = 6 * HOUR
# BatchMeterUsage: "Usage records aren't accepted 24 hours or more after an event" (since 2026-07, §3).
BATCH_WINDOW = 24 * HOUR
# ... and a month closes at 06:00 UTC on the first day of the next month (§3).
MONTH_GRACE = 6 * HOUR
MAX_BATCH_RECORDS = 25  # UsageRecordList max (§4.5)
MAX_ALLOCATIONS = 2500  # UsageAllocations max (§2.1)
MAX_TAG_KEYS_PER_RECORD = 5  # "Maximum tags across UsageAllocation list - 5": the safe reading (§2.1)
# The Seller Guide lists the tag characters as "a-zA-Z0-9+ -=._:\/@". Read as a regex, " -=" would be
# a range that admits !"#$%&'()*,;< too; server behaviour is [UNCONFIRMED], so we accept only the
# literal set (§2.1). `\Z`, not `$`: Python's `$` also matches before a trailing newline.
TAG_CHARS = re.compile(r"^[a-zA-Z0-9+ \-=._:/@]+\Z")


def hour_start(ts: float) -> int:
    """AWS rounds Timestamp down to the hour to enforce once-per-hour (§2.2)."""
    return int(ts // HOUR * HOUR)


def check_meter_window(ts: float, now: float) -> None:
    if ts > now:
        raise AwsError("TimestampOutOfBoundsException", "Timestamp is in the future.")
    if now - ts > METER_USAGE_WINDOW:
        raise AwsError(
            "TimestampOutOfBoundsException",
            "Timestamp is more than 6 hours in the past; usage can be metered for up to six hours after it occurs.",
        )


def _month_start(ts: float) -> int:
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def check_batch_window(ts: float, now: float) -> None:
    if ts > now:
        raise AwsError("TimestampOutOfBoundsException", "Timestamp is in the future.")
    if now - ts >= BATCH_WINDOW:
        raise AwsError(
            "TimestampOutOfBoundsException", "Usage records aren't accepted 24 hours or more after an event."
        )
    this_month = _month_start(now)
    if ts < this_month and now >= this_month + MONTH_GRACE:
        raise AwsError(
            "TimestampOutOfBoundsException",
            "The billing month of this record closed at 06:00 UTC on the first day of the next month.",
        )


# --- Maximums and patterns from the model (botocore's validator checks only minimums) -------------


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _constraint_error(path: Sequence[str], constraint: str, value: Any) -> AwsError:
    where = ".".join(_camel(p) for p in path if not p.startswith("["))
    shown = value if isinstance(value, int) else str(value)[:64]
    message = f"1 validation error detected: Value '{shown}' at '{where}' failed to satisfy constraint: {constraint}"
    # Map to the modeled exception AWS documents for the field (§2.4, §3); generic otherwise.
    if "Tags" in path:
        return AwsError("InvalidTagException", message)
    if path and path[-1] == "UsageAllocations":
        return AwsError("InvalidUsageAllocationsException", message)
    if path and path[-1] == "ProductCode":
        return AwsError("InvalidProductCodeException", message)
    if path and path[-1] == "CustomerAWSAccountId":
        return AwsError("InvalidCustomerIdentifierException", message)
    return AwsError("ValidationException", message)


@functools.cache
def _model_pattern(pattern: str) -> re.Pattern[str]:
    """A model pattern with ECMA-262 semantics: a final `$` is the end of the input (Python's `$` also
    matches before a trailing newline, which would let "tenant\\n" through `^[...]+$`)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    return re.compile(pattern)


def check_model_constraints(params: Any, shape: Any, path: tuple[str, ...] = ()) -> None:
    """Walk `params` along a botocore shape, enforcing `max` and `pattern` metadata."""
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        for name, member in shape.members.items():
            if name in params:
                check_model_constraints(params[name], member, (*path, name))
    elif kind == "list":
        if "max" in meta and len(params) > meta["max"]:
            raise _constraint_error(
                path, f"Member must have length less than or equal to {meta['max']}", len(params)
            )
        for i, item in enumerate(params):
            check_model_constraints(item, shape.member, (*path, f"[{i}]"))
    elif kind == "string":
        if "max" in meta and len(params) > meta["max"]:
            raise _constraint_error(
                path, f"Member must have length less than or equal to {meta['max']}", params
            )
        pattern = meta.get("pattern")
        if pattern and _model_pattern(pattern).search(params) is None:
            raise _constraint_error(
                path, f"Member must satisfy regular expression pattern: {pattern}", params
            )
    elif kind == "timestamp":
        # botocore's validator also takes datetimes and ISO strings (the client serializes them); on
        # the awsJson wire a timestamp is epoch seconds, a JSON number (reference §4.2).
        if isinstance(params, bool) or not isinstance(params, int | float) or not math.isfinite(params):
            raise AwsError(
                "SerializationException",
                f"Expected epoch seconds (a number) at '{'.'.join(path)}', got {str(params)[:64]!r}.",
            )
    elif kind in ("integer", "long"):
        if isinstance(params, bool):
            raise AwsError(
                "SerializationException", f"Expected an integer at '{'.'.join(path)}', got a boolean."
            )
        if "max" in meta and params > meta["max"]:
            raise _constraint_error(
                path, f"Member must have value less than or equal to {meta['max']}", params
            )


# --- Allocations and tags (§2.1) --------------------------------------------------------------------


def tag_set(allocation: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset((t["Key"], t["Value"]) for t in allocation.get("Tags") or ())


def check_tags(tags: Iterable[Mapping[str, str]]) -> None:
    seen: set[str] = set()
    for tag in tags:
        for part in ("Key", "Value"):
            if not TAG_CHARS.match(tag[part]):
                raise AwsError(
                    "InvalidTagException",
                    f"Tag {part.lower()} '{tag[part][:64]}' has characters outside a-zA-Z0-9+ -=._:/@.",
                )
        if tag["Key"] in seen:
            raise AwsError("InvalidTagException", f"Tag key '{tag['Key']}' appears twice in one allocation.")
        seen.add(tag["Key"])


def quantity(container: Mapping[str, Any], int_key: str, decimal_key: str) -> Decimal:
    """A quantity sent as an integer or (newer models) as a decimal string; never both.

    "Quantities are compared by value when checking for duplicate or retried requests, so 17, 17.0,
    and 17.00 are the same quantity" (botocore model >= 1.44, MeterUsage UsageQuantityAsDecimal).
    """
    if int_key in container and decimal_key in container:
        raise AwsError("ValidationException", f"You can't specify both {int_key} and {decimal_key}.")
    if decimal_key in container:
        return Decimal(container[decimal_key])
    return Decimal(container.get(int_key, 0))


def allocation_quantity(allocation: Mapping[str, Any]) -> Decimal:
    has_int = "AllocatedUsageQuantity" in allocation
    if has_int == ("AllocatedUsageQuantityAsDecimal" in allocation):
        raise AwsError(
            "InvalidUsageAllocationsException",
            "Each allocation must specify exactly one of AllocatedUsageQuantity or AllocatedUsageQuantityAsDecimal.",
        )
    return quantity(allocation, "AllocatedUsageQuantity", "AllocatedUsageQuantityAsDecimal")


def check_allocations(
    total_quantity: Decimal, allocations: Sequence[Mapping[str, Any]], *, decimal: bool = False
) -> None:
    """AWS: allocations sum to the quantity, each tag set is unique, at most one is untagged (§2.1)."""
    for allocation in allocations:
        if decimal != ("AllocatedUsageQuantityAsDecimal" in allocation):
            want = "AllocatedUsageQuantityAsDecimal" if decimal else "AllocatedUsageQuantity"
            raise AwsError(
                "InvalidUsageAllocationsException",
                f"Allocations must use {want} like the usage quantity does.",
            )
    total = sum((allocation_quantity(a) for a in allocations), Decimal(0))
    if total != total_quantity:
        raise AwsError(
            "InvalidUsageAllocationsException",
            f"Sum of allocated usage quantities ({total}) is not equal to the usage quantity ({total_quantity}).",
        )
    seen: set[frozenset[tuple[str, str]]] = set()
    keys: set[str] = set()
    for allocation in allocations:
        tags = allocation.get("Tags") or ()
        check_tags(tags)
        key = tag_set(allocation)
        if key in seen:
            what = "more than one allocation has no tags" if not key else "two allocations have the same tags"
            raise AwsError(
                "InvalidUsageAllocationsException", f"Each allocation needs a unique tag set: {what}."
            )
        seen.add(key)
        keys.update(t["Key"] for t in tags)
    if len(keys) > MAX_TAG_KEYS_PER_RECORD:
        raise AwsError(
            "InvalidTagException",
            f"The number of tags is greater than 5: {len(keys)} distinct tag keys across the allocations of one record.",
        )


def canonical_usage(
    total_quantity: Decimal, allocations: Sequence[Mapping[str, Any]] | None
) -> tuple[Any, ...]:
    """What makes two records "identical" for the once-per-hour rule: quantity and allocations (§2.3).

    Quantities compare by value; allocation order does not matter; an absent list equals one untagged
    allocation of the whole.
    """
    if not allocations:
        return (total_quantity, ((frozenset(), total_quantity),))
    parts = ((tag_set(a), allocation_quantity(a)) for a in allocations)
    # Sort on the sorted tags, not on repr(): a frozenset's repr follows its hash-table layout, which
    # can depend on insertion order, so the same tags listed in another order could sort differently.
    return (total_quantity, tuple(sorted(parts, key=lambda part: (sorted(part[0]), part[1]))))


def check_customer_fields(record: Mapping[str, Any]) -> None:
    """CustomerIdentifier and CustomerAWSAccountId are mutually exclusive, and one is needed (§3)."""
    has_id = bool(record.get("CustomerIdentifier"))
    has_account = bool(record.get("CustomerAWSAccountId"))
    if has_id and has_account:
        raise AwsError(
            "ValidationException",
            "CustomerIdentifier and CustomerAWSAccountId are mutually exclusive; send only one.",
        )
    if not (has_id or has_account):
        raise AwsError(
            "InvalidCustomerIdentifierException",
            "A usage record needs CustomerIdentifier or CustomerAWSAccountId.",
        )
