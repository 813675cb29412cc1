"""docs/openapi.json is the local API's description, generated from the app; it must not drift from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.openapi import document

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = "run `.venv/bin/python -m sidecar.openapi > docs/openapi.json` and commit the result"


def rendered() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def test_docs_openapi_json_matches_the_app() -> None:
    assert DOCS.exists(), f"docs/openapi.json is missing: {REGENERATE}"
    assert DOCS.read_text() == rendered(), (
        f"docs/openapi.json is out of date with sidecar/api.py: {REGENERATE}"
    )


def test_it_describes_the_interfaces_of_the_design() -> None:
    paths = document()["paths"]
    for path, method in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/entitlement", "get"),
        ("/v1/entitlement/attest", "post"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not in the API description"
    attest = document()["components"]["schemas"]["AttestRequest"]
    assert attest["required"] == ["nonce"] and attest["additionalProperties"] is False
    assert attest["properties"]["nonce"]["maxLength"] == 255


@pytest.mark.slow
def test_the_regenerate_command_prints_the_same_document(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.openapi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    assert result.stdout == rendered()
