"""`metering-sidecar demo`: the emulator, the sidecar and a small simulated product, with no AWS account.

The sidecar runs as a real process pointed at the emulator through boto3's own variables
(AWS_ENDPOINT_URL_MARKETPLACE_METERING, and container credentials that the emulator serves), exactly as
it would in a pod. The "product" waits for /readyz, then asks for a token with its own nonce and verifies
it itself with the public key. Everything stays on 127.0.0.1 and is shut down at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sidecar.client import SidecarClient, SidecarError
from sidecar.clock import SettableClock, iso
from sidecar.emulator.faults import Faults
from sidecar.emulator.server import CREDENTIALS_PATH, Emulator, EmulatorServer
from sidecar.emulator.signer import Signer
from sidecar.emulator.state import EmulatorState, Settings
from sidecar.token import TokenError

PRODUCT_CODE = "demo-product-code"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str = "") -> None:
    print(text, flush=True)


def demo(keep_logs: bool = False) -> int:
    signer = Signer.generate()
    settings = Settings(region=REGION, products={PRODUCT_CODE: []})
    emulator = Emulator(EmulatorState(settings, SettableClock(), signer), Faults())
    with tempfile.TemporaryDirectory(prefix="metering-demo-") as tmp, EmulatorServer(emulator) as server:
        work = Path(tmp)
        (work / "public.pem").write_text(signer.public_pem())
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(work),
            "METERING_PRODUCT_CODE": PRODUCT_CODE,
            "METERING_PUBLIC_KEY_FILE": str(work / "public.pem"),
            "METERING_LISTEN": f"127.0.0.1:{port}",
            "METERING_STATE_DIR": str(work / "state"),
            "METERING_LOG_FORMAT": "text",
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING": server.url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + CREDENTIALS_PATH,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "demo-pod-1",
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        }
        _say("metering-sidecar demo: everything below runs on 127.0.0.1; no AWS account is involved.")
        _say(
            f"  1. AWS Marketplace Metering emulator at {server.url} (region {REGION}, product {PRODUCT_CODE})"
        )
        log_path = work / "sidecar.log"
        with log_path.open("w") as log_file:
            sidecar = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
            _say(
                f"  2. sidecar started (pid {sidecar.pid}), API on 127.0.0.1:{port}, pointed at the emulator through"
            )
            _say(
                "     AWS_ENDPOINT_URL_MARKETPLACE_METERING, with container credentials served by the emulator"
            )
            status = 1
            try:
                status = _product(SidecarClient(f"http://127.0.0.1:{port}"), work / "public.pem")
            finally:
                sidecar.send_signal(signal.SIGTERM)
                try:
                    code = sidecar.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    sidecar.kill()
                    code = sidecar.wait()
                _say(f"  5. SIGTERM sent; the sidecar exited with status {code}")
        _say()
        _say(
            "What the emulator saw (the sidecar's RegisterUsage at start, then the product's attest, each with its own nonce):"
        )
        for call in emulator.calls:
            outcome = call["error"] or "OK"
            nonce = str((call.get("request") or {}).get("Nonce", ""))[:12]
            _say(
                f"  {iso(call['at'])}  {call['operation']:<14} from {call['caller']}  nonce {nonce}...  ->  "
                f"{call['status']} {outcome}"
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


def _product(client: SidecarClient, public_key: Path) -> int:
    """The simulated product: wait for entitlement, then check the token with the key baked into it."""
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
        f"  4. product: asked for a token with its own nonce and verified it itself (PS256, key version "
        f"{claims.public_key_version}, nonce {claims.nonce[:12] if claims.nonce else '-'}..., productCode {claims.product_code})"
    )
    return 0
