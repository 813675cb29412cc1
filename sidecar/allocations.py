"""The rules that decide money, as plain functions on plain data (no clock, no database, no HTTP).

- What a usage event may be: what AWS will accept in a record (reference/aws-metering-semantics.md §2.1),
  checked at the door so that nothing is refused at the end of the hour.
- How an hour's usage becomes one MeterUsage request: one record per dimension per clock hour, with
  UsageAllocations grouped by tag set; the allocations always sum to the quantity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

HOUR = 3600
MAX_QUANTITY = 2_147_483_647  # UsageQuantity and AllocatedUsageQuantity are int32 (§2.1)
MAX_TAGS_PER_EVENT = 5  # TagList max (§2.1)
MAX_TAG_KEYS_PER_RECORD = 5  # "Maximum tags across UsageAllocation list - 5": the safe reading (§2.1)
MAX_ALLOCATIONS = 2500  # UsageAllocations max (§2.1)
MAX_KEY = 100
MAX_VALUE = 256
MAX_EVENT_ID = 128
MAX_BATCH = 10_000
# The literal character set the Seller Guide lists; the model's regex range " -=" would admit more, but
# whether AWS accepts those is [UNCONFIRMED], so we refuse them at the door (§2.1). \Z: no trailing newline.
TAG_CHARS = re.compile(r"^[a-zA-Z0-9+ \-=._:/@]+\Z")
UNTAGGED = ""  # the tag-set key of usage with no tags
EVENT_FIELDS = frozenset({"dimension", "quantity", "tags", "event_id"})


class EventError(ValueError):
    """A usage event AWS would not accept. `field` is where (e.g. `events[3].tags`), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Event(NamedTuple):
    """One usage event, checked. A NamedTuple: as immutable as a frozen dataclass, and made in a third of the
    time (a 1,000-event request makes 1,000 of them)."""

    dimension: str
    quantity: int
    tags: str  # canonical tag-set key (tag_key)
    event_id: str | None = None


# json.dumps(..., separators=(",", ":")) with its encoder made once: the same text, without building an
# encoder for every event (that was half the cost of reading an event).
_encode = json.JSONEncoder(separators=(",", ":")).encode


def tag_key(tags: Mapping[str, str]) -> str:
    """A canonical text form of a tag set: equal sets give equal keys."""
    return _encode(sorted(tags.items())) if tags else UNTAGGED


@functools.lru_cache(maxsize=8192)
def _parsed(key: str) -> tuple[tuple[str, str], ...]:
    # Cached: an hour's record reads each of its (up to 2,500) tag sets several times, and the same tag
    # sets come back hour after hour. Immutable, so a cached answer cannot be changed by a caller.
    return tuple((k, v) for k, v in json.loads(key)) if key else ()


def tags_of(key: str) -> list[tuple[str, str]]:
    return list(_parsed(key))


def hour_start(ts: float) -> int:
    """AWS rounds Timestamp down to the hour (§2.2); so do we, in UTC."""
    return int(ts // HOUR * HOUR)


# Tag sets already checked, and their keys: a product reports the same few tag sets over and over, so
# each is checked and encoded once, not once per event. Only sets that passed every check are here; the
# cache starts again when full, so sets that come and go cannot make it grow without bound.
_KNOWN_TAG_SETS: dict[tuple[tuple[Any, Any], ...], str] = {}
_KNOWN_TAG_SETS_MAX = 8192


def _known_tag_key(tags: dict[Any, Any]) -> str | None:
    try:
        return _KNOWN_TAG_SETS.get(tuple(tags.items()))
    except TypeError:  # an unhashable value (a list, an object): not a tag set we know
        return None


def _checked_tag_key(tags: dict[Any, Any], where: str) -> str:
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_KEY or not TAG_CHARS.match(key):
            raise EventError(
                f"{where}tags", f"tag key {key[:40]!r} must be 1-{MAX_KEY} characters of a-zA-Z0-9+ -=._:/@"
            )
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_VALUE or not TAG_CHARS.match(value):
            raise EventError(
                f"{where}tags.{key}",
                f"tag value must be a string of 1-{MAX_VALUE} characters of a-zA-Z0-9+ -=._:/@",
            )
    if len(_KNOWN_TAG_SETS) >= _KNOWN_TAG_SETS_MAX:
        _KNOWN_TAG_SETS.clear()
    key = _KNOWN_TAG_SETS[tuple(tags.items())] = tag_key(tags)
    return key


def _event(raw: Any, where: str, dimensions: frozenset[str]) -> Event:
    if not isinstance(raw, dict):
        raise EventError(where.rstrip(".") or "body", "an event must be a JSON object")
    if not raw.keys() <= EVENT_FIELDS:
        unknown = set(raw) - EVENT_FIELDS
        raise EventError(
            f"{where}{sorted(unknown)[0]}", "unknown field; an event has dimension, quantity, tags, event_id"
        )
    dimension = raw.get("dimension")
    if not isinstance(dimension, str) or not dimension:
        raise EventError(f"{where}dimension", "required, a non-empty string")
    if dimension not in dimensions:
        raise EventError(
            f"{where}dimension", f"{dimension[:64]!r} is not a configured dimension (METERING_DIMENSIONS)"
        )
    quantity = raw.get("quantity")
    if type(quantity) is not int:  # not bool, not float: AWS quantities are integers
        raise EventError(f"{where}quantity", "required, an integer")
    if not 0 <= quantity <= MAX_QUANTITY:
        raise EventError(f"{where}quantity", f"must be between 0 and {MAX_QUANTITY}")
    tags = raw.get("tags")
    if tags is None:  # absent or null: no tags. `or {}` would also pass [], "", 0 and false as "no tags"
        tags = {}
    if not isinstance(tags, dict):
        raise EventError(f"{where}tags", "must be an object of tag key to tag value")
    if len(tags) > MAX_TAGS_PER_EVENT:
        raise EventError(f"{where}tags", f"at most {MAX_TAGS_PER_EVENT} tags, got {len(tags)}")
    key = _known_tag_key(tags) if tags else UNTAGGED
    if key is None:
        key = _checked_tag_key(tags, where)
    event_id = raw.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID):
        raise EventError(f"{where}event_id", f"must be a string of 1-{MAX_EVENT_ID} characters")
    return Event(dimension, quantity, key, event_id)


def parse_events(body: Any, dimensions: frozenset[str]) -> list[Event]:
    """One event or {"events": [...]}. All or nothing: the first bad event refuses the whole body."""
    if isinstance(body, dict) and "events" in body:
        if set(body) != {"events"}:
            raise EventError("body", 'a batch is {"events": [...]} with nothing else')
        events = body["events"]
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
            raise EventError("events", f"must be a list of 1 to {MAX_BATCH} events")
        return [_event(raw, f"events[{i}].", dimensions) for i, raw in enumerate(events)]
    return [_event(body, "", dimensions)]


# --- an hour's usage becomes one MeterUsage request ------------------------------------------------


@dataclass(frozen=True)
class HourRecord:
    quantity: int
    allocations: tuple[tuple[str, int], ...]  # (tag-set key, quantity), largest first; UNTAGGED included
    folded: int  # quantity moved into the untagged allocation to respect AWS's limits


def build_record(usage: Mapping[str, int]) -> HourRecord:
    """Group an hour's usage by tag set, within AWS's limits, never losing quantity.

    Beyond the limits (reference §2.1) the total is always billed: usage whose tag keys fall outside the
    5 keys with the most quantity, and the smallest tag sets beyond 2,499, go to the untagged allocation.
    """
    total = sum(usage.values())
    by_key: dict[str, int] = {}
    for key, quantity in usage.items():
        for tag, _ in _parsed(key):
            by_key[tag] = by_key.get(tag, 0) + quantity
    keep_keys = {
        k for k, _ in sorted(by_key.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAG_KEYS_PER_RECORD]
    }
    untagged = usage.get(UNTAGGED, 0)
    tagged: list[tuple[str, int]] = []
    for key, quantity in usage.items():
        if key == UNTAGGED or quantity == 0:
            continue
        if all(tag in keep_keys for tag, _ in _parsed(key)):
            tagged.append((key, quantity))
        else:
            untagged += quantity
    tagged.sort(key=lambda kv: (-kv[1], kv[0]))
    room = MAX_ALLOCATIONS - 1  # one place stays for the untagged allocation
    if len(tagged) > MAX_ALLOCATIONS or (untagged and len(tagged) > room):
        untagged += sum(q for _, q in tagged[room:])
        tagged = tagged[:room]
    folded = untagged - usage.get(UNTAGGED, 0)
    allocations = tuple(tagged) + (((UNTAGGED, untagged),) if untagged else ())
    return HourRecord(total, allocations, folded)


def client_token(pod_id: str, product_code: str, dimension: str, hour: int) -> str:
    """Deterministic, so that any resend of the same record is the same request (reference §2.3)."""
    return hashlib.sha256(f"{pod_id}|{product_code}|{dimension}|{hour}".encode()).hexdigest()[:64]


def meter_request(
    product_code: str, dimension: str, hour: int, record: HourRecord, token: str
) -> dict[str, Any]:
    """The exact MeterUsage parameters for one dimension and hour. Frozen before the first send."""
    request: dict[str, Any] = {
        "ProductCode": product_code,
        "Timestamp": hour,  # the hour's start: AWS rounds down to it anyway (§2.2)
        "UsageDimension": dimension,
        "UsageQuantity": record.quantity,
        "ClientToken": token,
    }
    if any(key != UNTAGGED for key, _ in record.allocations):
        request["UsageAllocations"] = [
            {
                "AllocatedUsageQuantity": quantity,
                **({"Tags": [{"Key": k, "Value": v} for k, v in _parsed(key)]} if key else {}),
            }
            for key, quantity in record.allocations
        ]
    return request


def freeze(request: Mapping[str, Any]) -> str:
    """The stored form of a request: every resend sends exactly these parameters."""
    return json.dumps(request, sort_keys=True, separators=(",", ":"))
