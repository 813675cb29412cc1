"""Property tests of the emulator's pure rules (sidecar/emulator/rules.py) and its use of botocore's model.

The oracle `spec_allows` below is written from reference/aws-metering-semantics.md (§2.1, §4.5), not from
the emulator's code: the emulator must accept exactly what the documented constraints allow, and never
accept something boto3's own ParamValidator would refuse.
"""

from __future__ import annotations

import calendar
import random
import re
from decimal import Decimal
from typing import Any

import pytest
from botocore.validate import ParamValidator
from conftest import PRODUCT, T0
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.emulator import model, rules
from sidecar.emulator.errors import AwsError

INT_MAX = 2_147_483_647
PROPERTY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

# --- the documented constraints, independently (reference §2.1, §4.5) -------------------------------

LITERAL_TAG = re.compile(r"[a-zA-Z0-9+ \-=._:/@]+")  # the Seller Guide's literal set, not the regex range
PRODUCT_CODE = re.compile(r"[-a-zA-Z0-9/=:_.@]*")
DECIMAL = re.compile(r"(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quantity_ok(container: dict[str, Any], int_key: str, decimal_key: str) -> bool:
    if int_key in container and decimal_key in container:
        return False
    if int_key in container:
        return _is_int(container[int_key]) and 0 <= container[int_key] <= INT_MAX
    if decimal_key in container:
        value = container[decimal_key]
        return isinstance(value, str) and DECIMAL.fullmatch(value) is not None
    return True


def _amount(container: dict[str, Any], int_key: str, decimal_key: str) -> Decimal:
    return Decimal(container[decimal_key]) if decimal_key in container else Decimal(container.get(int_key, 0))


def _tags_ok(tags: Any) -> bool:
    if not isinstance(tags, list) or not 1 <= len(tags) <= 5:
        return False
    keys = [t.get("Key") for t in tags]
    return len(set(keys)) == len(keys) and all(
        isinstance(t.get(part), str)
        and 1 <= len(t[part]) <= limit
        and LITERAL_TAG.fullmatch(t[part]) is not None
        for t in tags
        for part, limit in (("Key", 100), ("Value", 256))
    )


def spec_allows(request: dict[str, Any]) -> bool:
    """A MeterUsage request (timestamp, product and dimension lookups aside) that AWS documents as valid."""
    product = request["ProductCode"]
    if not (isinstance(product, str) and len(product) <= 255 and PRODUCT_CODE.fullmatch(product)):
        return False
    dimension = request["UsageDimension"]
    if not (isinstance(dimension, str) and 1 <= len(dimension) <= 255):
        return False
    if not _quantity_ok(request, "UsageQuantity", "UsageQuantityAsDecimal"):
        return False
    if "UsageAllocations" not in request:
        return True
    allocations = request["UsageAllocations"]
    if not 1 <= len(allocations) <= 2500:
        return False
    decimal = "UsageQuantityAsDecimal" in request
    want = "AllocatedUsageQuantityAsDecimal" if decimal else "AllocatedUsageQuantity"
    for allocation in allocations:
        if set(allocation) - {"Tags"} != {want}:
            return False
        if not _quantity_ok(allocation, "AllocatedUsageQuantity", "AllocatedUsageQuantityAsDecimal"):
            return False
        if "Tags" in allocation and not _tags_ok(allocation["Tags"]):
            return False
    total = sum(
        (_amount(a, "AllocatedUsageQuantity", "AllocatedUsageQuantityAsDecimal") for a in allocations),
        Decimal(0),
    )
    if total != _amount(request, "UsageQuantity", "UsageQuantityAsDecimal"):
        return False
    tag_sets = [frozenset((t["Key"], t["Value"]) for t in a.get("Tags", [])) for a in allocations]
    keys = {key for tags in tag_sets for key, _value in tags}
    return len(set(tag_sets)) == len(tag_sets) and len(keys) <= 5


def emulator_accepts(request: dict[str, Any]) -> tuple[bool, str | None]:
    """The emulator's MeterUsage validation, as state.handle and state._MeterUsage run it."""
    try:
        model.validate_with_botocore("MeterUsage", request)
        rules.check_model_constraints(request, model.input_shape("MeterUsage"))
        total = rules.quantity(request, "UsageQuantity", "UsageQuantityAsDecimal")
        if "UsageAllocations" in request:
            rules.check_allocations(
                total, request["UsageAllocations"], decimal="UsageQuantityAsDecimal" in request
            )
    except AwsError as err:
        return False, err.type
    return True, None


def botocore_accepts(request: dict[str, Any]) -> bool:
    report = ParamValidator().validate(request, model.input_shape("MeterUsage"))
    return not report.has_errors()


# --- strategies: mostly valid requests, then zero to three mutations -----------------------------

LITERAL_CHARS = "abcXYZ019+ -=._:/@"
RANGE_ONLY_CHARS = "#!*<$%&'(),;\""  # admitted by the model's ` -=` range, outside the literal set
OTHER_CHARS = "é\n\t~[]"

tag_text = st.text(alphabet=LITERAL_CHARS, min_size=1, max_size=8)


@st.composite
def valid_allocations(draw: st.DrawFn, total: int) -> list[dict[str, Any]]:
    """1-4 allocations summing to `total`, with unique tag sets over at most 5 keys (one may be untagged)."""
    count = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=count - 1, max_size=count - 1)))
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    keys = draw(st.lists(tag_text, min_size=1, max_size=5, unique=True))
    untagged = draw(st.sampled_from([None, *range(count)]))
    allocations: list[dict[str, Any]] = []
    for i, amount in enumerate(amounts):
        allocation: dict[str, Any] = {"AllocatedUsageQuantity": amount}
        if i != untagged:
            # A value unique to this allocation makes each tag set unique.
            chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
            allocation["Tags"] = [{"Key": k, "Value": f"v{i}"} for k in chosen]
        allocations.append(allocation)
    return allocations


def _to_decimal(request: dict[str, Any]) -> None:
    request["UsageQuantityAsDecimal"] = str(request.pop("UsageQuantity", 0))
    for allocation in request.get("UsageAllocations", []):
        allocation["AllocatedUsageQuantityAsDecimal"] = str(allocation.pop("AllocatedUsageQuantity"))


def _tagged(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in request.get("UsageAllocations", []) if a.get("Tags")]


def mutate(request: dict[str, Any], how: str, rnd: random.Random) -> None:
    """Make one change that may or may not break a documented rule (the oracle decides)."""
    allocations = request.get("UsageAllocations", [])
    tagged = _tagged(request)
    if how == "tag_char" and tagged:
        tag = rnd.choice(rnd.choice(tagged)["Tags"])
        part = rnd.choice(["Key", "Value"])
        tag[part] = tag[part] + rnd.choice(rnd.choice([LITERAL_CHARS, RANGE_ONLY_CHARS, OTHER_CHARS]))
    elif how == "tag_length" and tagged:
        tag = rnd.choice(rnd.choice(tagged)["Tags"])
        part = rnd.choice(["Key", "Value"])
        tag[part] = "k" * rnd.choice([0, 99, 100, 101, 255, 256, 257])
    elif how == "tag_count" and tagged:
        tags = rnd.choice(tagged)["Tags"]
        tags.extend({"Key": f"extra{i}", "Value": "v"} for i in range(rnd.randint(1, 6)))
        if rnd.random() < 0.3:
            tags.clear()
    elif how == "same_tags" and len(allocations) >= 2:
        first, second = rnd.sample(allocations, 2)
        if "Tags" in first:
            second["Tags"] = [dict(t) for t in reversed(first["Tags"])]
        else:
            second.pop("Tags", None)
    elif how == "untag" and allocations:
        rnd.choice(allocations).pop("Tags", None)
    elif how == "sum" and allocations:
        allocation = rnd.choice(allocations)
        key = next(k for k in allocation if k != "Tags")
        if key == "AllocatedUsageQuantity":
            allocation[key] += rnd.choice([-1, 1, 2])
        else:
            allocation[key] = str(Decimal(allocation[key]) + Decimal("0.000001"))
    elif how == "mixed_kinds" and allocations:
        allocation = rnd.choice(allocations)
        key = next(k for k in allocation if k != "Tags")
        other = "AllocatedUsageQuantity" if key.endswith("Decimal") else "AllocatedUsageQuantityAsDecimal"
        value = allocation.pop(key)
        allocation[other] = int(Decimal(value)) if other == "AllocatedUsageQuantity" else str(value)
        if rnd.random() < 0.3:
            allocation[key] = value  # both kinds at once
    elif how == "quantity":
        value = rnd.choice([-1, 0, INT_MAX, INT_MAX + 1, True, 3.5, "7"])
        request.pop("UsageQuantityAsDecimal", None)
        request["UsageQuantity"] = value
    elif how == "decimal_text":
        request.pop("UsageQuantity", None)
        request["UsageQuantityAsDecimal"] = rnd.choice(
            ["0", "1.5", "01", "1.", "1.1234567", "12345678901", "1e3", "-1", "1\n", " 1", "", "0.000001"]
        )
    elif how == "product":
        request["ProductCode"] = rnd.choice(["", "a b", "p#1", "x" * 255, "x" * 256, "p\n", "prod:=/@._-"])
    elif how == "dimension":
        request["UsageDimension"] = rnd.choice(["", "d" * 255, "d" * 256, " ", "dimension with spaces"])
    elif how == "no_allocations":
        request["UsageAllocations"] = []
    elif how == "many_allocations":
        request.pop("UsageQuantityAsDecimal", None)
        n = rnd.choice([2500, 2501])
        request["UsageQuantity"] = n
        request["UsageAllocations"] = [
            {"AllocatedUsageQuantity": 1, "Tags": [{"Key": "n", "Value": str(i)}]} for i in range(n)
        ]


MUTATIONS = [
    "tag_char",
    "tag_length",
    "tag_count",
    "same_tags",
    "untag",
    "sum",
    "mixed_kinds",
    "quantity",
    "decimal_text",
    "product",
    "dimension",
    "no_allocations",
    "many_allocations",
]


@st.composite
def meter_requests(draw: st.DrawFn) -> dict[str, Any]:
    total = draw(st.integers(0, 50))
    request: dict[str, Any] = {
        "ProductCode": PRODUCT,
        "Timestamp": T0,
        "UsageDimension": "requests",
        "UsageQuantity": total,
    }
    if draw(st.booleans()):
        request["UsageAllocations"] = draw(valid_allocations(total))
    if draw(st.booleans()):
        _to_decimal(request)
    rnd = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):  # mostly one change or more
        mutate(request, draw(st.sampled_from(MUTATIONS)), rnd)
    return request


# --- (a) what the emulator accepts, botocore accepts; and it accepts exactly what AWS documents ----


@PROPERTY
@given(meter_requests())
@example(
    {
        "ProductCode": PRODUCT,
        "Timestamp": T0,
        "UsageDimension": "requests",
        "UsageQuantity": 1,
        "UsageAllocations": [{"AllocatedUsageQuantity": 1, "Tags": [{"Key": "tenant\n", "Value": "a"}]}],
    }
)
@example({"ProductCode": PRODUCT, "Timestamp": T0, "UsageDimension": "r", "UsageQuantityAsDecimal": "7\n"})
def test_emulator_accepts_only_what_botocore_and_the_documented_rules_accept(request: dict[str, Any]) -> None:
    accepted, error = emulator_accepts(request)
    if accepted:
        assert botocore_accepts(request), "the emulator accepted a request boto3's validator refuses"
    assert accepted == spec_allows(request), (
        f"emulator {'accepted' if accepted else 'refused: ' + str(error)}"
    )


@PROPERTY
@given(meter_requests())
def test_refusals_are_the_modeled_exceptions_aws_documents(request: dict[str, Any]) -> None:
    accepted, error = emulator_accepts(request)
    if accepted:
        return
    assert error in {
        "ValidationException",
        "SerializationException",
        "InvalidTagException",
        "InvalidUsageAllocationsException",
        "InvalidProductCodeException",
    }


def test_the_generated_requests_cover_both_outcomes() -> None:
    # Guards the two properties above against a strategy that only ever makes one kind of request.
    outcomes: set[bool] = set()
    errors: set[str | None] = set()

    @settings(deadline=None, max_examples=300, database=None, derandomize=True)
    @given(meter_requests())
    def collect(request: dict[str, Any]) -> None:
        accepted, error = emulator_accepts(request)
        outcomes.add(accepted)
        errors.add(error)

    collect()
    assert outcomes == {True, False}
    assert {"InvalidTagException", "InvalidUsageAllocationsException", "ValidationException"} <= errors


# --- (b) allocations that do not sum to the quantity ----------------------------------------------

any_tags = st.none() | st.lists(
    st.fixed_dictionaries(
        {
            "Key": st.text(alphabet=LITERAL_CHARS + RANGE_ONLY_CHARS + OTHER_CHARS, min_size=1, max_size=5),
            "Value": st.text(alphabet=LITERAL_CHARS + RANGE_ONLY_CHARS, min_size=1, max_size=5),
        }
    ),
    min_size=1,
    max_size=6,
)


@PROPERTY
@given(
    amounts=st.lists(st.integers(0, 10**6), min_size=1, max_size=30),
    tags=st.lists(any_tags, min_size=30, max_size=30),
    delta=st.integers(-(10**6), 10**6).filter(lambda d: d != 0),
    decimal=st.booleans(),
)
def test_allocations_that_do_not_sum_to_the_quantity_are_refused(
    amounts: list[int], tags: list[Any], delta: int, decimal: bool
) -> None:
    key = "AllocatedUsageQuantityAsDecimal" if decimal else "AllocatedUsageQuantity"
    allocations: list[dict[str, Any]] = []
    for amount, tag_list in zip(amounts, tags, strict=False):
        allocation: dict[str, Any] = {key: str(amount) if decimal else amount}
        if tag_list is not None:
            allocation["Tags"] = tag_list
        allocations.append(allocation)
    total = Decimal(sum(amounts) + delta)
    with pytest.raises(AwsError) as info:
        rules.check_allocations(total, allocations, decimal=decimal)
    assert info.value.type == "InvalidUsageAllocationsException"
    assert "Sum of allocated usage quantities" in info.value.message


@PROPERTY
@given(
    st.lists(st.decimals("0", "9999", places=6), min_size=1, max_size=10),
    st.sampled_from(["0.000001", "-0.000001"]),
)
def test_decimal_allocations_off_by_the_smallest_unit_are_refused(amounts: list[Decimal], off: str) -> None:
    allocations = [
        {"AllocatedUsageQuantityAsDecimal": str(a), "Tags": [{"Key": "n", "Value": str(i)}]}
        for i, a in enumerate(amounts)
    ]
    rules.check_allocations(sum(amounts, Decimal(0)), allocations, decimal=True)  # the exact sum passes
    with pytest.raises(AwsError, match="Sum of allocated") as info:
        rules.check_allocations(sum(amounts, Decimal(0)) + Decimal(off), allocations, decimal=True)
    assert info.value.type == "InvalidUsageAllocationsException"


# --- (c) hour rounding ----------------------------------------------------------------------------

timestamps = st.floats(0, 2**33, allow_nan=False, allow_infinity=False) | st.integers(0, 2**33)


@PROPERTY
@given(timestamps)
@example(T0)
@example(3600)
@example(3599.9999999999995)
@example(7199.999999999999)
def test_hour_start_is_the_start_of_the_hour_containing_the_timestamp(ts: float) -> None:
    hour = rules.hour_start(ts)
    assert isinstance(hour, int)
    assert hour % 3600 == 0
    assert hour <= ts
    assert hour > ts - 3600
    assert rules.hour_start(hour) == hour


def test_hour_start_of_t0_is_half_an_hour_earlier() -> None:
    assert rules.hour_start(T0) == T0 - 1800 == calendar.timegm((2026, 11, 26, 10, 0, 0))


# --- (d) the MeterUsage window: [now - 6 h, now] --------------------------------------------------

nows = st.floats(1.5e9, 2.5e9, allow_nan=False) | st.integers(1_500_000_000, 2_500_000_000)


@PROPERTY
@given(
    now=nows,
    offset=st.floats(-8 * 3600, 2 * 3600, allow_nan=False)
    | st.sampled_from([0, -21600, 1e-6, -21600.000001]),
)
def test_meter_window_accepts_exactly_the_last_six_hours(now: float, offset: float) -> None:
    ts = now + offset
    accepted = True
    try:
        rules.check_meter_window(ts, now)
    except AwsError as err:
        assert err.type == "TimestampOutOfBoundsException"
        accepted = False
    assert accepted == (now - 6 * 3600 <= ts <= now)


@PROPERTY
@given(nows)
def test_meter_window_edges_are_inclusive(now: float) -> None:
    rules.check_meter_window(now, now)
    rules.check_meter_window(now - 6 * 3600, now)


# --- (e) what makes two records identical ---------------------------------------------------------


@st.composite
def allocations_and_a_reordering(draw: st.DrawFn) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    total = draw(st.integers(0, 1000))
    allocations = draw(valid_allocations(total))
    reordered = [
        {**a, "Tags": draw(st.permutations(a["Tags"]))} if "Tags" in a else dict(a)
        for a in draw(st.permutations(allocations))
    ]
    return total, allocations, reordered


def _as_decimal_strings(allocations: list[dict[str, Any]], places: int) -> list[dict[str, Any]]:
    out = []
    for a in allocations:
        value = Decimal(a["AllocatedUsageQuantity"]).quantize(Decimal(1).scaleb(-places))
        out.append(
            {"AllocatedUsageQuantityAsDecimal": str(value), **({"Tags": a["Tags"]} if "Tags" in a else {})}
        )
    return out


@PROPERTY
@given(allocations_and_a_reordering(), st.integers(0, 6))
def test_canonical_usage_ignores_order_and_int_versus_decimal(
    case: tuple[int, list[dict[str, Any]], list[dict[str, Any]]], places: int
) -> None:
    total, allocations, reordered = case
    canonical = rules.canonical_usage(Decimal(total), allocations)
    assert rules.canonical_usage(Decimal(total), reordered) == canonical
    as_decimal = Decimal(total).quantize(Decimal(1).scaleb(-places))
    assert rules.canonical_usage(as_decimal, _as_decimal_strings(reordered, places)) == canonical


@PROPERTY
@given(allocations_and_a_reordering())
def test_canonical_usage_tells_different_allocations_apart(
    case: tuple[int, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    total, allocations, _ = case
    canonical = rules.canonical_usage(Decimal(total), allocations)
    more = [{**allocations[0], "AllocatedUsageQuantity": allocations[0]["AllocatedUsageQuantity"] + 1}]
    assert rules.canonical_usage(Decimal(total + 1), more + allocations[1:]) != canonical
    if len(allocations) >= 2 and allocations[0]["AllocatedUsageQuantity"] > 0:
        # The same total split another way is another record.
        moved = [dict(a) for a in allocations]
        moved[0]["AllocatedUsageQuantity"] -= 1
        moved[1]["AllocatedUsageQuantity"] += 1
        assert rules.canonical_usage(Decimal(total), moved) != canonical


def test_no_allocations_equal_one_untagged_allocation_of_the_whole() -> None:
    whole = rules.canonical_usage(Decimal(7), [{"AllocatedUsageQuantity": 7}])
    assert rules.canonical_usage(Decimal(7), None) == whole
    assert rules.canonical_usage(Decimal("7.00"), None) == whole
    tagged = [{"AllocatedUsageQuantity": 7, "Tags": [{"Key": "t", "Value": "a"}]}]
    assert rules.canonical_usage(Decimal(7), tagged) != whole


# --- tags, tag sets and untagged allocations (§2.1) ------------------------------------------------

TAG_PATTERN = model.service_model().shape_for("TagKey").metadata["pattern"]


def _alloc(quantity: int, **tags: str) -> dict[str, Any]:
    allocation: dict[str, Any] = {"AllocatedUsageQuantity": quantity}
    if tags:
        allocation["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    return allocation


def test_every_character_of_the_literal_tag_set_is_accepted() -> None:
    literal = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+ -=._:/@"
    rules.check_tags([{"Key": literal[:100], "Value": literal}])
    for char in literal:
        rules.check_tags([{"Key": f"k{char}k", "Value": f"v{char}"}])


@pytest.mark.parametrize("char", ["#", "!", "*", "<", "$", "%", "&", "'", "(", ")", ",", ";", '"'])
def test_characters_only_the_regex_range_admits_are_refused(char: str) -> None:
    # The model's pattern reads " -=" as a range (0x20-0x3D), so it admits these; the Seller Guide's
    # literal set does not, and the emulator follows the literal set (reference §2.1).
    assert re.search(TAG_PATTERN, f"a{char}b") is not None
    request = {
        "ProductCode": PRODUCT,
        "Timestamp": T0,
        "UsageDimension": "requests",
        "UsageQuantity": 1,
        "UsageAllocations": [{"AllocatedUsageQuantity": 1, "Tags": [{"Key": f"a{char}b", "Value": "v"}]}],
    }
    rules.check_model_constraints(request, model.input_shape("MeterUsage"))  # the model lets it through
    assert emulator_accepts(request) == (False, "InvalidTagException")
    with pytest.raises(AwsError, match="outside") as info:
        rules.check_tags([{"Key": "tenant", "Value": f"x{char}"}])
    assert info.value.type == "InvalidTagException"


@pytest.mark.parametrize("text", ["tenant\n", "\ttenant", "tenánt", "a~b", "a[b]"])
def test_characters_outside_both_readings_are_refused(text: str) -> None:
    with pytest.raises(AwsError) as info:
        rules.check_tags([{"Key": text, "Value": "v"}])
    assert info.value.type == "InvalidTagException"


def test_two_allocations_with_the_same_tag_set_are_refused_whatever_the_tag_order() -> None:
    first = {"AllocatedUsageQuantity": 3, "Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]}
    second = {"AllocatedUsageQuantity": 4, "Tags": [{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}]}
    with pytest.raises(AwsError, match="same tags") as info:
        rules.check_allocations(Decimal(7), [first, second])
    assert info.value.type == "InvalidUsageAllocationsException"
    # Same keys, another value: a different tag set, accepted.
    rules.check_allocations(Decimal(7), [first, _alloc(4, a="1", b="3")])


def test_at_most_one_allocation_is_untagged() -> None:
    rules.check_allocations(Decimal(7), [_alloc(3), _alloc(4, tenant="a")])
    with pytest.raises(AwsError, match="more than one allocation has no tags") as info:
        rules.check_allocations(Decimal(7), [_alloc(3), _alloc(4)])
    assert info.value.type == "InvalidUsageAllocationsException"


def test_a_tag_key_twice_in_one_allocation_is_refused() -> None:
    allocation = {
        "AllocatedUsageQuantity": 1,
        "Tags": [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}],
    }
    with pytest.raises(AwsError, match="twice") as info:
        rules.check_allocations(Decimal(1), [allocation])
    assert info.value.type == "InvalidTagException"


def test_five_distinct_tag_keys_per_record_but_not_six() -> None:
    five = [_alloc(1, a="x", b="x", c="x"), _alloc(1, d="x", e="x"), _alloc(1, a="y")]
    rules.check_allocations(Decimal(3), five)
    with pytest.raises(AwsError, match="greater than 5") as info:
        rules.check_allocations(Decimal(4), [*five, _alloc(1, f="x")])
    assert info.value.type == "InvalidTagException"


# --- BatchMeterUsage window: 24 hours, and the month closes at 06:00 UTC on the 1st (§3) ------------


def _utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6]))


def _batch_ok(ts: float, now: float) -> bool:
    try:
        rules.check_batch_window(ts, now)
    except AwsError as err:
        assert err.type == "TimestampOutOfBoundsException"
        return False
    return True


def test_batch_window_is_under_24_hours() -> None:
    now = _utc(2026, 11, 26, 10, 30)
    assert _batch_ok(now - 24 * 3600 + 1, now)
    assert not _batch_ok(now - 24 * 3600, now)
    assert _batch_ok(now, now)
    assert not _batch_ok(now + 1, now)


@pytest.mark.parametrize(
    ("now", "ts", "accepted"),
    [
        # A November record is still accepted until 06:00 UTC on 1 December ...
        (_utc(2026, 12, 1, 5, 59) + 59, _utc(2026, 11, 30, 23, 0), True),
        # ... and refused from 06:00 on, although it is only 7 hours old.
        (_utc(2026, 12, 1, 6, 0), _utc(2026, 11, 30, 23, 0), False),
        (_utc(2026, 12, 1, 6, 0), _utc(2026, 11, 30, 23, 59) + 59, False),
        # December's own records are not affected.
        (_utc(2026, 12, 1, 6, 0), _utc(2026, 12, 1, 0, 0), True),
        # The same at the turn of the year.
        (_utc(2027, 1, 1, 6, 0), _utc(2026, 12, 31, 22, 0), False),
        (_utc(2027, 1, 1, 5, 0), _utc(2026, 12, 31, 22, 0), True),
    ],
)
def test_batch_window_month_end_grace(now: float, ts: float, accepted: bool) -> None:
    assert now - ts < 24 * 3600
    assert _batch_ok(ts, now) == accepted
