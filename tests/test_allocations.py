"""The pure core that decides money: event validation, hourly records within AWS's limits, frozen requests.

What "AWS would accept it" means is decided by the emulator's own rules (botocore's validator plus the
maximums, patterns and allocation rules of reference/aws-metering-semantics.md §2.1), run on the request
exactly as meter_request builds it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.allocations import (
    HOUR,
    MAX_ALLOCATIONS,
    MAX_BATCH,
    MAX_QUANTITY,
    UNTAGGED,
    Event,
    EventError,
    HourRecord,
    build_record,
    client_token,
    freeze,
    hour_start,
    meter_request,
    parse_events,
    tag_key,
    tags_of,
)
from sidecar.emulator import model, rules

DIMS = frozenset({"requests", "storage_gb"})
PRODUCT = "prod-test-0001"
H = 1795687200  # 2026-11-26T10:00:00Z
POD = "6f1c2a9e-0000-4000-8000-000000000001"
PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def ev(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"dimension": "requests", "quantity": 1}
    event.update(fields)
    return event


def refused(body: Any) -> EventError:
    with pytest.raises(EventError) as caught:
        parse_events(body, DIMS)
    assert caught.value.message  # says why, not only where
    assert str(caught.value).startswith(caught.value.field + ": ")
    return caught.value


# --- parse_events: what an event may be ---------------------------------------------------------


def test_one_event_and_a_batch_parse_to_events_with_canonical_tags() -> None:
    one = parse_events(ev(quantity=7, tags={"b": "2", "a": "1"}, event_id="e-1"), DIMS)
    assert one == [Event("requests", 7, tag_key({"a": "1", "b": "2"}), "e-1")]
    batch = parse_events(
        {
            "events": [
                ev(quantity=0),
                {"dimension": "storage_gb", "quantity": MAX_QUANTITY, "tags": {"a": "1", "b": "2"}},
            ]
        },
        DIMS,
    )
    assert batch == [
        Event("requests", 0, UNTAGGED, None),
        Event("storage_gb", MAX_QUANTITY, one[0].tags, None),
    ]
    # Equal tag sets give equal keys whatever the order they were written in.
    assert tag_key({"a": "1", "b": "2"}) == tag_key({"b": "2", "a": "1"}) != tag_key({"a": "2", "b": "1"})
    assert tags_of(one[0].tags) == [("a", "1"), ("b", "2")]


@pytest.mark.parametrize("body", [[], [ev()], "requests", 5, None, True])
def test_a_body_that_is_not_an_object_names_the_body(body: Any) -> None:
    assert refused(body).field == "body"


def test_a_batch_with_anything_next_to_events_is_refused() -> None:
    assert refused({"events": [ev()], "dimension": "requests"}).field == "body"


@pytest.mark.parametrize("events", [[], {}, "x", None, 3, [ev()] * (MAX_BATCH + 1)])
def test_the_events_list_must_hold_1_to_10000_events(events: Any) -> None:
    assert refused({"events": events}).field == "events"


def test_a_batch_of_exactly_10000_events_is_accepted() -> None:
    assert len(parse_events({"events": [ev()] * MAX_BATCH}, DIMS)) == MAX_BATCH


@pytest.mark.parametrize("item", [5, "x", None, [ev()]])
def test_an_event_in_a_batch_that_is_not_an_object_names_its_index(item: Any) -> None:
    assert refused({"events": [ev(), ev(), item]}).field == "events[2]"


def test_an_unknown_field_is_named() -> None:
    assert refused(ev(colour="red")).field == "colour"
    assert refused({"events": [ev(), ev(Quantity=1)]}).field == "events[1].Quantity"


@pytest.mark.parametrize("dimension", [None, "", 5, ["requests"], "Requests", "cpu", "requests "])
def test_the_dimension_must_be_a_configured_one(dimension: Any) -> None:
    assert refused(ev(dimension=dimension)).field == "dimension"


def test_a_missing_dimension_is_named() -> None:
    assert refused({"quantity": 1}).field == "dimension"


@pytest.mark.parametrize(
    "quantity", [None, True, False, 1.0, 1.5, "1", "ten", -1, MAX_QUANTITY + 1, 2**63, [1], {"n": 1}]
)
def test_the_quantity_must_be_an_int32_integer(quantity: Any) -> None:
    assert refused({"events": [ev(), ev(), ev(quantity=quantity)]}).field == "events[2].quantity"
    assert refused(ev(quantity=quantity)).field == "quantity"


def test_a_missing_quantity_is_named() -> None:
    assert refused({"dimension": "requests"}).field == "quantity"


def test_quantity_bounds_are_inclusive() -> None:
    assert [
        e.quantity for e in parse_events({"events": [ev(quantity=0), ev(quantity=MAX_QUANTITY)]}, DIMS)
    ] == [
        0,
        MAX_QUANTITY,
    ]


@pytest.mark.parametrize("tags", [[], "", 0, False, "a=1", [["a", "1"]], 5])
def test_tags_must_be_an_object(tags: Any) -> None:
    assert refused(ev(tags=tags)).field == "tags"


def test_no_tags_null_tags_and_empty_tags_are_all_untagged() -> None:
    events = parse_events({"events": [ev(), ev(tags=None), ev(tags={})]}, DIMS)
    assert {e.tags for e in events} == {UNTAGGED}


def test_at_most_five_tags_per_event() -> None:
    five = {f"k{i}": "v" for i in range(5)}
    assert parse_events(ev(tags=five), DIMS)[0].tags == tag_key(five)
    assert refused(ev(tags={**five, "k5": "v"})).field == "tags"


@pytest.mark.parametrize(
    "key",
    ["", "a#b", "tenant\n", "\ntenant", "a\tb", "ténant", "a!b", "a,b", "a;b", "a<b", "a*b", "k" * 101],
)
def test_a_bad_tag_key_names_tags(key: str) -> None:
    assert refused(ev(tags={"ok": "v", key: "v"})).field == "tags"


@pytest.mark.parametrize(
    "value",
    ["", "v#", "tenant-a\n", "v\r", "a!b", "naïve", "a%b", "v" * 257, 5, None, True, ["v"], {"v": 1}],
)
def test_a_bad_tag_value_names_its_key(value: Any) -> None:
    assert refused(ev(tags={"ok": "v", "tenant": value})).field == "tags.tenant"
    assert refused({"events": [ev(), ev(tags={"tenant": value})]}).field == "events[1].tags.tenant"


def test_every_listed_tag_character_and_the_length_limits_are_accepted() -> None:
    chars = "abcXYZ019+ -=._:/@"
    tags = {chars: chars, "k" * 100: "v" * 256}
    assert tags_of(parse_events(ev(tags=tags), DIMS)[0].tags) == sorted(tags.items())


@pytest.mark.parametrize("event_id", ["", "e" * 129, 5, True, ["e"]])
def test_a_bad_event_id_is_named(event_id: Any) -> None:
    assert refused(ev(event_id=event_id)).field == "event_id"


def test_event_id_bounds() -> None:
    assert parse_events(ev(event_id="e" * 128), DIMS)[0].event_id == "e" * 128
    assert parse_events(ev(event_id=None), DIMS)[0].event_id is None


def test_one_bad_event_refuses_the_whole_batch() -> None:
    good = [ev(quantity=i, event_id=f"e{i}") for i in range(5)]
    body = {"events": [*good[:3], ev(quantity=-1), *good[3:]]}
    assert refused(body).field == "events[3].quantity"
    # ... and the first bad event is the one named, whatever follows it.
    body = {"events": [ev(), ev(tags={"a": "#"}), ev(dimension="cpu")]}
    assert refused(body).field == "events[1].tags.a"


# --- hour_start ----------------------------------------------------------------------------------


def test_hour_start_rounds_down_to_the_utc_hour() -> None:
    assert hour_start(H) == H
    assert hour_start(H + 0.5) == H
    assert hour_start(H + HOUR - 0.001) == H
    assert hour_start(H + HOUR) == H + HOUR
    assert hour_start(H - 1) == H - HOUR


# --- build_record: an hour's usage within AWS's limits ------------------------------------------

KEYS = [f"key{i}" for i in range(12)]
VALUES = ["a", "b", "c", "tenant-1", "eu-west-1", "x" * 256]
tag_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), min_size=0, max_size=5).map(
    tag_key
)
small_usage = st.dictionaries(tag_sets, st.integers(0, MAX_QUANTITY // 64), max_size=60)


@st.composite
def large_usage(draw: st.DrawFn) -> dict[str, int]:
    """Thousands of tag sets (more than AWS's 2,500 allocations), over a few or many tag keys."""
    count = draw(st.integers(2700, 3300))
    keys = KEYS[: draw(st.integers(1, len(KEYS)))]
    with_untagged = draw(st.booleans())
    rng = random.Random(draw(st.integers(0, 2**32)))
    usage: dict[str, int] = {}
    while len(usage) < count:
        chosen = rng.sample(keys, rng.randint(1, min(5, len(keys))))
        quantity = 0 if rng.random() < 0.02 else rng.choice([1, rng.randint(1, MAX_QUANTITY // 4000)])
        usage[tag_key({k: f"v{rng.randrange(5000)}" for k in chosen})] = quantity
    if with_untagged:
        usage[UNTAGGED] = rng.randint(0, 1000)
    return usage


def aws_accepts(request: dict[str, Any]) -> None:
    """The emulator's checks, in the order it runs them on a MeterUsage call."""
    model.validate_with_botocore("MeterUsage", request)
    rules.check_model_constraints(request, model.input_shape("MeterUsage"))
    if "UsageAllocations" in request:
        rules.check_allocations(Decimal(request["UsageQuantity"]), request["UsageAllocations"])


def check_record(usage: Mapping[str, int], record: HourRecord) -> None:
    total = sum(usage.values())
    assert record.quantity == total
    assert sum(q for _, q in record.allocations) == total  # the total is always billed
    assert len(record.allocations) <= MAX_ALLOCATIONS
    assert all(q > 0 for _, q in record.allocations)
    keys = [key for key, _ in record.allocations]
    assert len(set(keys)) == len(keys)  # unique tag sets ...
    assert keys.count(UNTAGGED) <= 1  # ... so at most one untagged allocation
    assert len({k for key in keys for k, _ in tags_of(key)}) <= 5
    # Tagged usage is either kept exactly as reported, or folded into the untagged allocation.
    for key, quantity in record.allocations:
        if key != UNTAGGED:
            assert quantity == usage[key]
    untagged = dict(record.allocations).get(UNTAGGED, 0)
    assert record.folded == untagged - usage.get(UNTAGGED, 0) >= 0
    # Within the limits nothing is folded: every non-zero tag set is its own allocation.
    nonzero = {key: q for key, q in usage.items() if q}
    distinct = {k for key in nonzero for k, _ in tags_of(key)}
    if len(distinct) <= 5 and len(nonzero) <= MAX_ALLOCATIONS:
        assert record.folded == 0
        assert dict(record.allocations) == nonzero

    request = meter_request(PRODUCT, "requests", H, record, client_token(POD, PRODUCT, "requests", H))
    aws_accepts(request)
    assert request["UsageQuantity"] == total
    assert request["Timestamp"] == H
    allocations = request.get("UsageAllocations")
    if allocations is None:
        assert all(key == UNTAGGED for key, _ in record.allocations)
    else:
        assert sum(a["AllocatedUsageQuantity"] for a in allocations) == total
        assert [a.get("Tags", []) for a in allocations] == [
            [{"Key": k, "Value": v} for k, v in tags_of(key)] for key, _ in record.allocations
        ]


@PROPERTY
@given(small_usage)
@example({UNTAGGED: MAX_QUANTITY})
@example({tag_key({"a": "1"}): MAX_QUANTITY})
@example({tag_key({"a": "1"}): 0, UNTAGGED: 0})
@example({})
@example({tag_key({k: "v"}): i + 1 for i, k in enumerate(KEYS)})
def test_build_record_stays_within_aws_limits_and_bills_the_total(usage: dict[str, int]) -> None:
    check_record(usage, build_record(usage))


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(large_usage())
def test_build_record_with_thousands_of_tag_sets(usage: dict[str, int]) -> None:
    check_record(usage, build_record(usage))


def test_beyond_2500_tag_sets_the_smallest_are_folded_into_the_untagged_allocation() -> None:
    usage = {tag_key({"tenant": f"t{i:04}"}): 10_000 - i for i in range(2600)}
    record = build_record(usage)
    assert len(record.allocations) == MAX_ALLOCATIONS
    kept = dict(record.allocations[:-1])
    assert set(kept) == {tag_key({"tenant": f"t{i:04}"}) for i in range(2499)}
    assert record.allocations[-1] == (UNTAGGED, sum(10_000 - i for i in range(2499, 2600)))
    assert record.folded == record.allocations[-1][1]

    exactly = {tag_key({"tenant": f"t{i:04}"}): 1 for i in range(MAX_ALLOCATIONS)}
    assert build_record(exactly) == HourRecord(MAX_ALLOCATIONS, tuple(sorted(exactly.items())), 0)


def test_beyond_five_tag_keys_the_least_used_keys_are_folded() -> None:
    usage = {tag_key({f"k{i}": "v"}): 100 - 10 * i for i in range(6)}
    usage[tag_key({"k0": "v", "k5": "w"})] = 7  # a set that mixes a kept key with a dropped one
    usage[UNTAGGED] = 3
    record = build_record(usage)  # k5 carries 50 + 7 units, the least of the six keys
    assert dict(record.allocations) == {
        **{tag_key({f"k{i}": "v"}): 100 - 10 * i for i in range(5)},
        UNTAGGED: 3 + 50 + 7,
    }
    assert record.folded == 57
    assert record.allocations[0] == (tag_key({"k0": "v"}), 100)  # largest first


# --- billed == accepted, for any stream of events split across hours ----------------------------

raw_events = st.fixed_dictionaries(
    {"dimension": st.sampled_from(sorted(DIMS)), "quantity": st.integers(0, 1_000_000)},
    optional={"tags": st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=5)},
)


@PROPERTY
@given(st.lists(st.tuples(raw_events, st.integers(0, 7), st.booleans()), max_size=200))
def test_what_is_billed_per_dimension_equals_what_was_accepted(stream: list[Any]) -> None:
    hours: dict[tuple[str, int], dict[str, int]] = {}
    accepted: dict[str, int] = dict.fromkeys(DIMS, 0)
    batch: list[Any] = []

    def ingest(bodies: list[Any], at: int) -> None:
        body = bodies[0] if len(bodies) == 1 else {"events": bodies}
        for event in parse_events(body, DIMS):
            usage = hours.setdefault((event.dimension, at), {})
            usage[event.tags] = usage.get(event.tags, 0) + event.quantity

    for raw, hour, ends_batch in stream:
        accepted[raw["dimension"]] += raw["quantity"]
        batch.append(raw)
        if ends_batch:
            ingest(batch, H + hour * HOUR)
            batch = []
    if batch:
        ingest(batch, H + 8 * HOUR)

    billed: dict[str, int] = dict.fromkeys(DIMS, 0)
    for (dimension, hour), usage in hours.items():
        token = client_token(POD, PRODUCT, dimension, hour)
        request = meter_request(PRODUCT, dimension, hour, build_record(usage), token)
        aws_accepts(request)
        allocated = sum(a["AllocatedUsageQuantity"] for a in request.get("UsageAllocations", []))
        assert allocated in (0, request["UsageQuantity"])
        billed[dimension] += request["UsageQuantity"]
    assert billed == accepted


# --- client_token and freeze ---------------------------------------------------------------------


def test_client_token_is_deterministic_short_and_distinct() -> None:
    token = client_token(POD, PRODUCT, "requests", H)
    assert token == client_token(POD, PRODUCT, "requests", H)
    assert 1 <= len(token) <= 64
    long = client_token("p" * 300, "c" * 255, "d" * 255, H)
    assert 1 <= len(long) <= 64
    variants = {
        token,
        client_token(POD, PRODUCT, "storage_gb", H),
        client_token(POD, PRODUCT, "requests", H + HOUR),
        client_token("another-pod", PRODUCT, "requests", H),
        client_token(POD, "prod-other", "requests", H),
    }
    assert len(variants) == 5
    # The model's ClientToken shape (1-64 characters) accepts it.
    aws_accepts(meter_request(PRODUCT, "requests", H, build_record({UNTAGGED: 1}), long))


def test_freeze_gives_the_same_bytes_for_equal_requests() -> None:
    usage = {tag_key({"b": "2", "a": "1"}): 5, UNTAGGED: 2}
    token = client_token(POD, PRODUCT, "requests", H)
    first = meter_request(PRODUCT, "requests", H, build_record(usage), token)
    reordered = dict(reversed(list(first.items())))
    again = meter_request(PRODUCT, "requests", H, build_record(dict(reversed(list(usage.items())))), token)
    assert freeze(first) == freeze(reordered) == freeze(again)
    assert json.loads(freeze(first)) == first
    assert freeze({**first, "UsageQuantity": 8}) != freeze(first)
