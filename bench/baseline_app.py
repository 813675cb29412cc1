"""The benchmark's baseline: a bare FastAPI app on uvicorn with the sidecar's routes and status codes, and
none of the work (no validation, no ledger, no fsync, no middleware). It is run exactly like the sidecar
(same interpreter, same uvicorn settings as sidecar/run.py), so the ratio sidecar/baseline shows what the
sidecar's own work costs on this machine, whatever the machine's speed.

    python bench/baseline_app.py --port 8788
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description="the benchmark's bare-app baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
