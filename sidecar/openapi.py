"""The local API's OpenAPI description, kept in docs/openapi.json (tests/test_openapi.py checks the two agree).

Regenerate it with `.venv/bin/python -m sidecar.openapi > docs/openapi.json`.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.api import create_app
from sidecar.clock import SystemClock
from sidecar.config import Config
from sidecar.entitlement import EntitlementService
from sidecar.metrics import Metrics


def _no_aws(nonce: str) -> dict[str, Any]:
    raise RuntimeError("the OpenAPI document is built without calling RegisterUsage")


def document() -> dict[str, Any]:
    # The description does not depend on the configuration; a throwaway key only satisfies Config.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    config = Config(product_code="openapi", public_key_version=1, public_keys={1: key})
    metrics = Metrics()
    service = EntitlementService(
        config, _no_aws, clock=SystemClock(), wait=lambda seconds: True, metrics=metrics
    )
    description: dict[str, Any] = create_app(service, metrics).openapi()
    return description


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, sort_keys=True))
