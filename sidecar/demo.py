"""`metering-sidecar demo`: the emulator, the sidecar and a small simulated product, with no AWS account.

The sidecar runs as a real process pointed at the emulator through boto3's own variables
(AWS_ENDPOINT_URL_MARKETPLACE_METERING, and container credentials that the emulator serves), exactly as
it would in a pod. The "product" waits for /readyz, asks for a token with its own nonce and verifies it
itself, then reports a burst of tagged usage. The demo moves both clocks past the hour, so the sidecar
seals the hour and sends one MeterUsage per dimension, and prints what the emulator accepted next to what
the product reported. Everything stays on 127.0.0.1 and is shut down at the end.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sidecar.client import SidecarClient, SidecarError
from sidecar.clock import SettableClock, iso
from sidecar.emulator.faults import Faults
from sidecar.emulator.server import CREDENTIALS_PATH, Emulator, EmulatorServer
from sidecar.emulator.signer import Signer
from sidecar.emulator.state import EmulatorState, Settings
from sidecar.token import TokenError

PRODUCT_CODE = "demo-product-code"
REGION = "us-east-1"
DIMENSIONS = ("api_calls", "storage_gb")
HOUR = 3600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str = "") -> None:
    print(text, flush=True)


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "(untagged)"


class Clocks:
    """The emulator's clock and the sidecar's (METERING_FAKE_CLOCK_FILE), moved together."""

    def __init__(self, emulator_clock: SettableClock, offset_file: Path) -> None:
        self.emulator_clock = emulator_clock
        self.offset_file = offset_file
        offset_file.write_text("0")

    def move_to(self, t: float) -> None:
        self.emulator_clock.set(t)
        self.offset_file.write_text(str(t - time.time()))


def demo() -> int:
    signer = Signer.generate()
    settings = Settings(region=REGION, products={PRODUCT_CODE: list(DIMENSIONS)})
    emulator_clock = SettableClock()
    emulator = Emulator(EmulatorState(settings, emulator_clock, signer), Faults())
    with tempfile.TemporaryDirectory(prefix="metering-demo-") as tmp, EmulatorServer(emulator) as server:
        work = Path(tmp)
        (work / "public.pem").write_text(signer.public_pem())
        clocks = Clocks(emulator_clock, work / "clock-offset")
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(work),
            "METERING_PRODUCT_CODE": PRODUCT_CODE,
            "METERING_PUBLIC_KEY_FILE": str(work / "public.pem"),
            "METERING_DIMENSIONS": ",".join(DIMENSIONS),
            "METERING_LISTEN": f"127.0.0.1:{port}",
            "METERING_STATE_DIR": str(work / "state"),
            "METERING_LOG_FORMAT": "text",
            # Demo pacing: check often, and send at once (in a pod, sends spread over 5 minutes).
            "METERING_TICK": "0.2",
            "METERING_SEND_SPREAD": "0",
            "METERING_FAKE_CLOCK_FILE": str(clocks.offset_file),
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING": server.url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + CREDENTIALS_PATH,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "demo-pod-1",
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        }
        _say("metering-sidecar demo: everything below runs on 127.0.0.1; no AWS account is involved.")
        _say(f"  1. AWS Marketplace Metering emulator at {server.url}")
        _say(f"     (region {REGION}, product {PRODUCT_CODE}, dimensions {', '.join(DIMENSIONS)})")
        log_path = work / "sidecar.log"
        code = 1
        with log_path.open("w") as log_file:
            sidecar = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
            _say(
                f"  2. sidecar started (pid {sidecar.pid}), API on 127.0.0.1:{port}, pointed at the emulator"
            )
            _say(
                "     through AWS_ENDPOINT_URL_MARKETPLACE_METERING, with container credentials from the emulator"
            )
            status = 1
            try:
                status = _product(
                    SidecarClient(f"http://127.0.0.1:{port}"), work / "public.pem", emulator, clocks
                )
            finally:
                sidecar.send_signal(signal.SIGTERM)
                try:
                    code = sidecar.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    sidecar.kill()
                    code = sidecar.wait()
                _say(f"  7. SIGTERM sent; the sidecar sent what was left and exited with status {code}")
        _say()
        _say("Every call the emulator answered:")
        for call in emulator.calls:
            request = call.get("request") or {}
            what = (
                f"nonce {str(request.get('Nonce', ''))[:10]}..."
                if call["operation"] == "RegisterUsage"
                else (
                    "DryRun"
                    if request.get("DryRun")
                    else f"{request.get('UsageDimension')} x{request.get('UsageQuantity')}"
                )
            )
            _say(
                f"  {iso(call['at'])}  {call['operation']:<14} {what:<28} -> {call['status']} {call['error'] or 'OK'}"
            )
        _say()
        _say("The sidecar's log:")
        for line in log_path.read_text().splitlines():
            _say(f"  | {line}")
        if code != 0:
            status = 1
        _say()
        _say("Demo finished: " + ("all good." if status == 0 else "something went wrong (see above)."))
        return status


def _product(client: SidecarClient, public_key: Path, emulator: Emulator, clocks: Clocks) -> int:
    """The simulated product: wait for entitlement, check the token itself, then report usage."""
    started = time.monotonic()
    try:
        client.wait_ready(timeout=30)
    except TimeoutError as err:
        _say(f"  3. the product gave up waiting for the sidecar: {err}")
        return 1
    state = client.entitlement()
    _say(
        f"  3. product: /readyz answered 200 after {time.monotonic() - started:.2f} s; entitlement is {state['status']}"
    )
    try:
        claims = client.verify_entitlement(public_key.read_text(), PRODUCT_CODE, 1)
    except (SidecarError, TokenError) as err:
        _say(f"  4. product: the attested token did NOT verify: {err}")
        return 1
    _say(
        f"  4. product: asked for a token with its own nonce and verified it itself "
        f"(PS256, key version {claims.public_key_version}, productCode {claims.product_code})"
    )

    # A burst of tagged usage, as a product would report it.
    rng = random.Random(2026)
    reported: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    events: list[dict[str, Any]] = []
    for i in range(60):
        dimension = DIMENSIONS[0] if i % 3 else DIMENSIONS[1]
        tags = {"tenant": rng.choice(["acme", "globex", "initech"])}
        if rng.random() < 0.5:
            tags["tier"] = rng.choice(["free", "pro"])
        quantity = rng.randint(1, 40)
        events.append({"dimension": dimension, "quantity": quantity, "tags": tags, "event_id": f"demo-{i}"})
        reported[dimension][_tags(tags)] += quantity
    client.report_usage_batch(events[:40])
    client.report_usage_batch(events[40:])
    client.report_usage_batch(events[30:35])  # a retry of events already sent: counted once (event_id)
    _say(f"  5. product: reported {len(events)} usage events (and re-sent 5 of them, which count once)")

    hour = int(clocks.emulator_clock.now() // HOUR * HOUR)
    clocks.move_to(hour + HOUR + 60)
    _say(f"  6. both clocks moved to {iso(hour + HOUR + 60)}: the hour of {iso(hour)} has closed")
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and len([r for r in emulator.state.accepted if r["operation"] == "MeterUsage"]) < 2
    ):
        time.sleep(0.1)
    records = [r for r in emulator.state.accepted if r["operation"] == "MeterUsage"]
    _say()
    _say("What the product reported, and the MeterUsage records the emulator accepted:")
    ok = len(records) == len(DIMENSIONS)
    for dimension in DIMENSIONS:
        record = next((r for r in records if r["dimension"] == dimension), None)
        total = sum(reported[dimension].values())
        if record is None:
            _say(f"  {dimension}: reported {total}, but NO record was accepted")
            ok = False
            continue
        request = record["request"]
        billed = {
            _tags({t["Key"]: t["Value"] for t in a.get("Tags", [])}): a["AllocatedUsageQuantity"]
            for a in request.get("UsageAllocations", [{"AllocatedUsageQuantity": request["UsageQuantity"]}])
        }
        _say(
            f"  {dimension}: reported {total}; billed {request['UsageQuantity']} for the hour of "
            f"{iso(request['Timestamp'])} (record {record['metering_record_id'][:8]}...)"
        )
        for tag_set in sorted(set(reported[dimension]) | set(billed)):
            _say(
                f"      {tag_set:<28} reported {reported[dimension].get(tag_set, 0):>4}   "
                f"billed {billed.get(tag_set, 0):>4}"
            )
        ok = ok and total == request["UsageQuantity"] and dict(reported[dimension]) == billed
    _say()
    return 0 if ok else 1
