"""The README's first command: `metering-sidecar demo` runs end to end and says what happened."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_reports() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo"], capture_output=True, text=True, timeout=90, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "product: /readyz answered 200" in out
    assert "verified it itself (PS256" in out
    assert "exited with status 0" in out
    # The emulator saw the sidecar's registration and the product's attest, both answered 200.
    assert out.count("RegisterUsage  nonce") == 2
    # One MeterUsage per dimension for the closed hour, billed exactly what the product reported.
    assert out.count("MeterUsage     api_calls x") == 1 and out.count("MeterUsage     storage_gb x") == 1
    for line in out.splitlines():
        if "reported" in line and "billed" in line and "tenant=" in line:
            words = line.split()
            assert words[-3] == words[-1], line  # reported N   billed N
    assert out.rstrip().endswith("Demo finished: all good.")
