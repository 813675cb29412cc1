"""The benchmark's baseline: a bare FastAPI app on uvicorn with the sidecar's routes and status codes, and
none of the work (no validation, no ledger, no fsync, no middleware). It is run exactly like the sidecar
(same interpreter, same uvicorn settings as sidecar/run.py), so the ratio sidecar/baseline shows what the
sidecar's own work costs on this machine, whatever the machine's speed.

    python bench/baseline_app.py --port 8788
    python bench/baseline_app.py --port 8788 --libraries   # the memory floor, see load_libraries()
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# The same shape as the sidecar's answers, fixed: the baseline answers, it does not compute.
ENTITLEMENT = {
    "status": "entitled",
    "product_code": "bench-product",
    "public_key_version": 1,
    "nonce": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "signature": "eyJhbGciOiJQUzI1NiJ9." + "x" * 80 + "." + "y" * 342,
    "registered_at": "2026-11-26T10:30:00Z",
}


def create_app() -> FastAPI:
    # FastAPI configured as the sidecar configures it (NO_TELEMETRY in sidecar/api.py, not imported:
    # the baseline loads nothing of the sidecar): its built-in OpenTelemetry off.
    app = FastAPI(
        title="bench baseline",
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    # Every route is `async def`: the cheapest way FastAPI answers (a plain `def` runs in a worker thread).
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/v1/entitlement")
    async def entitlement() -> dict[str, Any]:
        return ENTITLEMENT

    @app.post("/v1/usage", status_code=202)
    async def usage(request: Request) -> JSONResponse:
        # The body is received (the sidecar must receive it too) but not parsed or stored.
        await request.body()
        return JSONResponse({"accepted": 1, "duplicates": 0}, status_code=202)

    return app


def load_libraries(env: dict[str, str]) -> list[Any]:
    """The memory floor (item 4): what the libraries the sidecar must use cost, used as the sidecar uses
    them, with none of its own code. boto3's Metering client (its default credential chain, from the
    same environment as the sidecar's) makes one RegisterUsage call to the emulator; cryptography loads
    the public key and verifies the token's PS256 signature; a prometheus_client registry with a
    counter; an SQLite connection in WAL mode. Returns what must stay alive, as it does in the sidecar."""
    import base64
    import secrets
    import sqlite3
    import tempfile

    import boto3
    from botocore.config import Config
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from prometheus_client import CollectorRegistry, Counter

    client = boto3.session.Session(region_name=env["AWS_REGION"]).client(
        "meteringmarketplace", config=Config(retries={"mode": "standard", "total_max_attempts": 1})
    )
    token = client.register_usage(
        ProductCode=env["METERING_PRODUCT_CODE"], PublicKeyVersion=1, Nonce=secrets.token_hex(32)
    )["Signature"]
    with open(env["METERING_PUBLIC_KEY_FILE"], "rb") as pem:
        key = serialization.load_pem_public_key(pem.read())
    assert isinstance(key, rsa.RSAPublicKey)
    header, payload, signature = token.split(".")
    key.verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        f"{header}.{payload}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    registry = CollectorRegistry()
    Counter("floor_events", "a counter, as the sidecar has", ["result"], registry=registry).labels("ok").inc()
    db = sqlite3.connect(tempfile.mkdtemp() + "/floor.db", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    return [client, key, registry, db]


def main() -> None:
    parser = argparse.ArgumentParser(description="the benchmark's bare-app baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--libraries", action="store_true", help="also load and use the sidecar's libraries (memory floor)"
    )
    args = parser.parse_args()
    kept = load_libraries(dict(os.environ)) if args.libraries else []
    # The same settings as sidecar/run.py, so that only the app differs.
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http="httptools",  # a dependency: C parsing, half h11's cost per request (bench/results.md)
            proxy_headers=False,
        )
    )
    server.run()
    del kept


if __name__ == "__main__":
    main()
