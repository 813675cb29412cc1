"""Building an emulator from command-line flags and an optional JSON config file.

The config file holds the same things as the flags and the admin API, for start-up:
  {"region": "us-east-1",
   "products": {"PRODUCT_CODE": ["dimension", ...]},
   "entitled": true, "rate_limits": false, "strict_auth": false, "dry_run_response": "ok",
   "key_versions": {"1": null, "2": "2026-12-01T00:00:00Z"},
   "credentials": [{"access_key_id": "...", "secret_access_key": "..."}],
   "customers": [{"product_code": "...", "customer_aws_account_id": "123456789012"}],
   "faults": [{"operation": "MeterUsage", "kind": "throttle", "count": 3}],
   "clock": {"now": "2026-11-26T10:00:00Z", "frozen": false}}
Flags given on the command line win over the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.clock import SettableClock
from sidecar.emulator.faults import FaultRule, Faults
from sidecar.emulator.server import Emulator, customer_from, epoch
from sidecar.emulator.signer import Signer
from sidecar.emulator.state import EmulatorState, Settings

DEFAULT_PRODUCT_CODE = "demo-product-code"
PRODUCT_CODE_RE = re.compile(r"^[-a-zA-Z0-9/=:_.@]{1,255}$")  # ProductCode pattern (reference §4.5)
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
KNOWN_KEYS = {
    "region",
    "products",
    "entitled",
    "rate_limits",
    "strict_auth",
    "dry_run_response",
    "key_versions",
    "credentials",
    "customers",
    "faults",
    "clock",
}


@dataclass
class EmulatorOptions:
    region: str | None = None
    product_code: str | None = None
    dimensions: list[str] = field(default_factory=list)
    private_key: Path | None = None
    config: Path | None = None
    not_entitled: bool = False
    rate_limits: bool = False
    strict_auth: bool = False
    faults: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)
    clock: str | None = None
    frozen_clock: bool = False
    dry_run_response: str | None = None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err.strerror})") from None
    except ValueError as err:
        raise ValueError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a JSON object")
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        raise ValueError(
            f"--config {path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    return data


@contextmanager
def _blame(where: str) -> Iterator[None]:
    """Re-raise a bad value's error as a ValueError that names the flag or config key it came from."""
    try:
        yield
    except KeyError as err:
        raise ValueError(f"{where}: missing {err}") from None
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: {err}") from None


def build(options: EmulatorOptions) -> Emulator:
    """Raises ValueError with a message that names the flag or config key at fault."""
    data = _read_config(options.config) if options.config else {}
    in_file = f"--config {options.config}"
    region = options.region or data.get("region") or "us-east-1"
    if not REGION_RE.match(region):
        where = "--region" if options.region else f"{in_file}: region"
        raise ValueError(f"{where} '{region}' does not look like an AWS Region (for example us-east-1)")
    with _blame(f"{in_file}: products"):
        products: dict[str, list[str]] = {
            str(k): [str(d) for d in v] for k, v in (data.get("products") or {}).items()
        }
    if options.product_code or not products:
        code = options.product_code or DEFAULT_PRODUCT_CODE
        products[code] = list(dict.fromkeys([*products.get(code, []), *options.dimensions]))
    for code, dims in products.items():
        where = "--product-code" if code == options.product_code else f"{in_file}: products"
        if not PRODUCT_CODE_RE.match(code):
            raise ValueError(
                f"{where}: product code '{code}' must be 1-255 characters of a-z A-Z 0-9 - / = : _ . @"
            )
        for dim in dims:
            if not 1 <= len(dim) <= 255:
                where = "--dimension" if dim in options.dimensions else f"{in_file}: products"
                raise ValueError(
                    f"{where}: dimension '{dim[:40]}' must be 1-255 characters (UsageDimension, reference §2.1)"
                )
    dry_run = options.dry_run_response or data.get("dry_run_response", "ok")
    if dry_run not in ("ok", "error"):
        where = "--dry-run-response" if options.dry_run_response else f"{in_file}: dry_run_response"
        raise ValueError(f"{where} must be 'ok' or 'error', got '{dry_run}'")
    key_versions: dict[int, float | None] = {1: None}
    with _blame(f"{in_file}: key_versions"):
        for version, rotation in (data.get("key_versions") or {}).items():
            key_versions[int(version)] = None if rotation is None else epoch(rotation)
    settings = Settings(
        region=region,
        products=products,
        entitled=not options.not_entitled and bool(data.get("entitled", True)),
        key_versions=key_versions,
        dry_run_response=dry_run,
        rate_limits=options.rate_limits or bool(data.get("rate_limits", False)),
        strict_auth=options.strict_auth or bool(data.get("strict_auth", False)),
    )
    with _blame("--clock" if options.clock else f"{in_file}: clock"):
        clock_data = data.get("clock") or {}
        start = options.clock or clock_data.get("now")
        clock = SettableClock(
            None if start is None else epoch(start),
            frozen=options.frozen_clock or bool(clock_data.get("frozen", False)),
        )
    try:
        signer = Signer.from_pem_file(options.private_key) if options.private_key else Signer.generate()
    except (OSError, ValueError) as err:
        raise ValueError(f"--private-key {options.private_key}: {err}") from None
    emulator = Emulator(EmulatorState(settings, clock, signer), Faults())
    with _blame(f"{in_file}: credentials"):
        for item in data.get("credentials") or []:
            emulator.add_static_credentials(str(item["access_key_id"]), str(item["secret_access_key"]))
    for pair in options.credentials:
        akid, sep, secret = pair.partition(":")
        if not sep or not akid or not secret:
            raise ValueError(f"--credentials '{akid}:...' must be ACCESS_KEY_ID:SECRET_ACCESS_KEY")
        emulator.add_static_credentials(akid, secret)
    with _blame(f"{in_file}: customers"):
        for customer in data.get("customers") or []:
            emulator.state.add_customer(customer_from(customer))
    with _blame(f"{in_file}: faults"):
        for fault in data.get("faults") or []:
            emulator.faults.add(FaultRule.from_dict(fault))
    for spec in options.faults:
        with _blame(f"--fault '{spec}'"):
            emulator.faults.add(FaultRule.parse_spec(spec))
    return emulator
