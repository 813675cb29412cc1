"""The localhost HTTP API that the product container asks (DESIGN.md, "The local HTTP API").

JSON with snake_case fields; every error is `{"error": CODE, "message": TEXT}` with the right status.
Security, after AWS's Secrets Manager agent (reference/anchors.md §3.7): loopback by default, an
optional bearer token on everything but the probes, and any request that carries X-Forwarded-For is
refused, since it came through a proxy and not from the pod itself.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidecar import __version__
from sidecar.allocations import EventError
from sidecar.entitlement import AttestError, Entitlement, EntitlementService, as_json
from sidecar.ledger import LedgerError
from sidecar.metrics import Metrics
from sidecar.usage import UsageService, UsageUnavailable

PROBES = {"/healthz", "/readyz"}
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


class ErrorBody(BaseModel):
    error: str = Field(description="a stable machine-readable code")
    message: str = Field(description="what went wrong, for a person")


class AttestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nonce: str = Field(
        min_length=1, max_length=255, description="your own fresh random nonce (AWS allows 255 characters)"
    )


class AttestResponse(BaseModel):
    signature: str = Field(
        description="the RegisterUsage JWT (PS256); verify it with the AWS Marketplace public key"
    )
    nonce: str
    product_code: str
    public_key_version: int


class EntitlementResponse(BaseModel):
    status: str = Field(description="pending | entitled | denied")
    product_code: str
    public_key_version: int
    nonce: str | None = None
    signature: str | None = Field(None, description="the raw RegisterUsage JWT")
    registered_at: str | None = None
    reason: str | None = Field(None, description="why, when denied")


class Probe(BaseModel):
    status: str
    reason: str | None = None


def _json_bytes(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse renders it (compact, UTF-8)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


# What each endpoint's body must look like, added to its 422 so that the field is named even when the
# body is missing or not JSON at all.
EXPECTED_BODY = {"/v1/entitlement/attest": 'a JSON object {"nonce": "<1 to 255 characters>"}'}


def _field_errors(exc: RequestValidationError, path: str) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # Its loc is ("body", <character offset>): the offset is not a field name.
            error = err.get("ctx", {}).get("error", "")
            parts.append(f"body: not valid JSON ({error})" if error else "body: not valid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    expected = EXPECTED_BODY.get(path)
    return "; ".join(parts) + (f"; expected {expected}" if expected else "")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API token"},
    403: {"model": ErrorBody, "description": "a proxied request (X-Forwarded-For)"},
}


class UsageEvent(BaseModel):
    """One usage event, for the API description (the sidecar validates it by AWS's rules)."""

    dimension: str = Field(description="one of METERING_DIMENSIONS")
    quantity: int = Field(ge=0, le=2_147_483_647)
    tags: dict[str, str] = Field(
        default_factory=dict, description="at most 5; keys 1-100, values 1-256 characters"
    )
    event_id: str | None = Field(
        None, min_length=1, max_length=128, description="a repeated event_id is counted once"
    )


class UsageBatch(BaseModel):
    events: list[UsageEvent] = Field(min_length=1, max_length=10_000)


class Accepted(BaseModel):
    accepted: int
    duplicates: int


USAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/UsageEvent"},
                        {"$ref": "#/components/schemas/UsageBatch"},
                    ]
                }
            }
        },
    }
}


class Guard:
    """Refuses proxied requests and checks the API token. Plain ASGI: Starlette's BaseHTTPMiddleware
    (`@app.middleware`) adds a task group and memory streams to every call, a quarter of a cheap request's
    cost (measured with bench/, see bench/results.md)."""

    def __init__(self, app: Any, api_token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_token}".encode() if api_token else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if b"x-forwarded-for" in headers or b"forwarded" in headers:
                refused = _error(
                    403,
                    "forwarded_request_refused",
                    "requests that carry X-Forwarded-For or Forwarded are refused: this API is for the pod itself",
                )
                await refused(scope, receive, send)
                return
            given = headers.get(b"authorization", b"")
            if (
                self.expected
                and scope["path"] not in PROBES
                and not hmac.compare_digest(given, self.expected)
            ):
                unauthorized = _error(
                    401,
                    "unauthorized",
                    "send the API token as 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await unauthorized(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    service: EntitlementService,
    metrics: Metrics,
    api_token: str | None = None,
    usage: UsageService | None = None,
) -> FastAPI:
    app = FastAPI(
        title="metering-sidecar local API",
        version=__version__,
        description="Asked by the product container over localhost: may I run, and this much was used.",
        responses=ERRORS,
        # The sidecar's telemetry is its Prometheus /metrics and its logs. FastAPI's own OpenTelemetry
        # (0.142+) has no SDK to report to here, yet asks the OTel globals on every request.
        telemetry=NO_TELEMETRY,
    )

    document = app.openapi

    def openapi() -> dict[str, Any]:
        # The usage body is validated by AWS's rules in sidecar.allocations; describe it for readers too.
        if app.openapi_schema is None:
            schema = document()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            template = "#/components/schemas/{model}"
            components["UsageEvent"] = UsageEvent.model_json_schema(ref_template=template)
            batch = UsageBatch.model_json_schema(ref_template=template)
            batch.pop("$defs", None)
            components["UsageBatch"] = batch
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(Guard, api_token=api_token)
    entitlement_body: tuple[Entitlement | None, bytes] = (None, b"")  # a state and its JSON

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _field_errors(exc, request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.get("/healthz", response_model=Probe, tags=["probes"], summary="the process is alive")
    async def healthz() -> Probe:
        return Probe(status="ok")

    @app.get(
        "/readyz",
        response_model=Probe,
        tags=["probes"],
        summary="200 only once entitlement is verified",
        responses={503: {"model": Probe, "description": "pending, or denied with the reason"}},
    )
    async def readyz() -> Any:
        state = service.snapshot()
        if state.status == "entitled":
            return Probe(status="ready")
        return JSONResponse(Probe(status=state.status, reason=state.reason).model_dump(), status_code=503)

    @app.get(
        "/v1/entitlement",
        # Documents the answer; the answer itself is as_json's: nonce, signature and registered_at are
        # always there (null until entitled), `reason` only when denied (DESIGN.md, "Interfaces").
        response_model=EntitlementResponse,
        tags=["entitlement"],
        summary="the entitlement state and the RegisterUsage token",
    )
    async def entitlement() -> Response:
        # Answered as bytes made once per entitlement state (the state is immutable and changes rarely):
        # this is the route a product may poll, and FastAPI's response_model check on every call would
        # cost more than the rest of the request (bench/results.md). response_model still documents it.
        nonlocal entitlement_body
        state = service.snapshot()
        if entitlement_body[0] is not state:  # the cache holds the old state: `is` cannot be fooled
            entitlement_body = (state, _json_bytes(as_json(state)))
        return Response(entitlement_body[1], media_type="application/json")

    @app.post(
        "/v1/entitlement/attest",
        response_model=AttestResponse,
        tags=["entitlement"],
        summary="RegisterUsage with your own nonce; verify the token yourself",
        responses={
            422: {"model": ErrorBody},
            429: {"model": ErrorBody},
            502: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
    )
    def attest(body: AttestRequest) -> Any:
        try:
            return service.attest(body.nonce)
        except AttestError as err:
            headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
            return _error(err.status, err.code, err.message, headers)

    @app.post(
        "/v1/usage",
        status_code=202,
        response_model=Accepted,
        tags=["usage"],
        openapi_extra=USAGE_BODY,
        summary='report usage: one event or {"events": [...]}; 202 once durably stored',
        responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def report_usage(request: Request) -> Any:
        if usage is None or not usage.dimensions:
            return _error(
                404, "no_usage_api", "this product has no custom dimensions (METERING_DIMENSIONS is empty)"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            metrics.events.labels(result="refused").inc()
            return _error(422, "invalid_request", "body: not valid JSON")
        events = []
        try:
            events = usage.parse(body)
            result = await usage.ingest_async(events)
        except EventError as err:
            if isinstance(err, LedgerError):  # refused by the ledger: parse() did not count it yet
                metrics.events.labels(result="refused").inc(len(events))
            return _error(422, "invalid_request", f"{err.field}: {err.message}")
        except UsageUnavailable as err:
            return _error(err.status, err.code, err.message)
        usage.counted(result)
        # A Response goes out as is: FastAPI's response_model round trip (Accepted documents it) would be
        # a tenth of a single event's cost.
        return Response(
            _json_bytes({"accepted": result.accepted, "duplicates": result.duplicates}),
            status_code=202,
            media_type="application/json",
        )

    @app.get(
        "/v1/usage",
        tags=["usage"],
        summary="the hourly records and their state (open, sealed, sent, rejected, carried)",
    )
    def list_usage() -> dict[str, Any]:
        return {"records": usage.records() if usage is not None else []}

    @app.get(
        "/v1/status", tags=["usage"], summary="metering health: last success, failures, oldest unsent record"
    )
    def status() -> dict[str, Any]:
        if usage is None:
            return {"entitlement": service.snapshot().status, "metering": "hourly product: no usage API"}
        return usage.status()

    @app.get(
        "/metrics",
        tags=["observability"],
        summary="Prometheus text format",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
