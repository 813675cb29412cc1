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
    assert "the sidecar exited with status 0" in out
    # The emulator saw the sidecar's registration and the product's attest, both answered 200.
    assert out.count("RegisterUsage  from ASIAEMU") == 2 and "->  200 OK" in out
    assert out.rstrip().endswith("Demo finished: all good.")
