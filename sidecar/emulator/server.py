"""The emulator's HTTP front: the AWS JSON 1.1 wire protocol on `POST /`, and the `/_emulator/` admin API.

Wire protocol (reference/aws-metering-semantics.md §4): `X-Amz-Target: AWSMPMeteringService.<Op>`,
`Content-Type: application/x-amz-json-1.1`, SigV4 for service `aws-marketplace`, errors as
`{"__type", "message"}` with AWS's status codes, and the request id in `x-amzn-RequestId`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.clock import SettableClock, iso
from sidecar.emulator import model
from sidecar.emulator.errors import AwsError
from sidecar.emulator.faults import FaultRule, Faults, RateLimiter
from sidecar.emulator.sigv4 import authenticate
from sidecar.emulator.state import Customer, EmulatorState

log = logging.getLogger("sidecar.emulator")
JSON_11 = "application/x-amz-json-1.1"
CREDENTIALS_PATH = "/_emulator/credentials"
MAX_CALL_LOG = 100_000
POLL_INTERVAL = 0.05  # seconds; socketserver's default of 0.5 makes every stop() take up to half a second


class _Drop(Exception):
    """Close the connection without an answer."""


class Emulator:
    """The state, faults, credentials and call log behind one HTTP server."""

    def __init__(self, state: EmulatorState, faults: Faults | None = None) -> None:
        self.state = state
        self.faults = faults or Faults()
        self.limiter = RateLimiter()
        self.secrets: dict[str, str] = {}  # access key id -> secret, for full SigV4 verification
        self._container_creds: dict[str, dict[str, str]] = {}  # authorization token -> credentials
        self.calls: list[dict[str, Any]] = []
        self._seq = 0
        self._log_lock = threading.Lock()

    # --- credentials -----------------------------------------------------------------------------

    def add_static_credentials(self, access_key_id: str, secret: str) -> None:
        self.secrets[access_key_id] = secret

    def container_credentials(self, authorization: str) -> dict[str, str]:
        """ECS-style credentials; one stable identity per authorization token (one token = one pod)."""
        with self._log_lock:
            creds = self._container_creds.get(authorization)
            if creds is None:
                creds = {
                    "AccessKeyId": "ASIAEMU" + secrets.token_hex(6).upper(),
                    "SecretAccessKey": secrets.token_urlsafe(30),
                    "Token": secrets.token_urlsafe(48),
                    "RoleArn": "arn:aws:iam::111122223333:role/metering-emulator-task-role",
                }
                self._container_creds[authorization] = creds
                self.secrets[creds["AccessKeyId"]] = creds["SecretAccessKey"]
        # Expiration is real time: botocore refreshes against its own clock.
        expiration = datetime.fromtimestamp(time.time() + 6 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {**creds, "Expiration": expiration}

    # --- call log --------------------------------------------------------------------------------

    def log_call(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self._seq += 1
            entry = {"seq": self._seq, "at": self.state.clock.now(), **entry}
            self.calls.append(entry)
            if len(self.calls) > MAX_CALL_LOG:
                del self.calls[: len(self.calls) - MAX_CALL_LOG]
        outcome = f"{entry['status']} {entry['error']}" if entry.get("error") else str(entry["status"])
        faults = f" faults={','.join(entry['faults'])}" if entry.get("faults") else ""
        log.info(
            "%s %s caller=%s -> %s%s%s",
            iso(entry["at"]),
            entry["operation"],
            entry.get("caller") or "-",
            outcome,
            _summary(entry),
            faults,
        )

    # --- the service call ------------------------------------------------------------------------

    def call(
        self, headers: dict[str, str], body: bytes, drop: Callable[[], None]
    ) -> tuple[int, dict[str, Any]]:
        entry: dict[str, Any] = {"operation": "?", "caller": None, "faults": [], "request": None}
        try:
            status, payload = self._call(headers, body, entry)
        except _Drop:
            entry.update(status=0, error="ConnectionDropped")
            self.log_call(entry)
            drop()
            raise
        except AwsError as err:
            status, payload = err.status, err.body()
            entry["error"] = err.type
        except Exception:
            # A bug of ours, or input nothing anticipated: answer as AWS does for its own failures (a
            # retryable 500), and keep it in the call log, rather than dropping the connection silently.
            log.exception("the emulator failed on a %s call", entry["operation"])
            error = AwsError(
                "InternalServiceErrorException", "An internal error has occurred. Retry your request."
            )
            status, payload = error.status, error.body()
            entry["error"] = "EmulatorFailure"
        entry["status"] = status
        entry.setdefault("error", None)
        entry["response"] = payload
        if "drop_response" in entry["faults"]:
            entry.update(status=0, error="ResponseDropped")
            self.log_call(entry)
            drop()
            raise _Drop
        self.log_call(entry)
        return status, payload

    def _call(
        self, headers: dict[str, str], body: bytes, entry: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        target = headers.get("x-amz-target", "")
        prefix, _, operation = target.partition(".")
        entry["operation"] = operation or target or "?"
        if prefix != model.TARGET_PREFIX or operation not in model.OPERATIONS:
            raise AwsError("UnknownOperationException", f"Unknown operation '{target}'.")
        if headers.get("content-type", "").split(";")[0].strip() != JSON_11:
            raise AwsError("SerializationException", f"Content-Type must be {JSON_11}.")
        identity = authenticate(
            method="POST",
            path="/",
            headers=headers,
            body=body,
            service=model.SIGNING_NAME,
            secrets=self.secrets,
            strict=self.state.settings.strict_auth,
        )
        entry["caller"] = identity.access_key_id
        try:
            params = json.loads(body or b"{}", parse_constant=_not_json)
        except ValueError:
            raise AwsError("SerializationException", "The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise AwsError("SerializationException", "The request body must be a JSON object.")
        entry["request"] = params
        for rule in self.faults.draw(operation):
            entry["faults"].append(rule.kind)
            if rule.kind == "latency":
                time.sleep(rule.latency_ms / 1000)
            elif rule.kind == "drop":
                raise _Drop
            elif rule.kind == "unavailable":
                return 503, {"message": "Service Unavailable"}
            error = rule.error_for(operation)
            if error is not None:
                raise error
        if self.state.settings.rate_limits and not self.limiter.allow(
            self.state.account_of(identity.access_key_id), operation
        ):
            entry["faults"].append("quota")
            raise AwsError("ThrottlingException", "Rate exceeded")
        result = self.state.handle(operation, params, identity)
        if "unprocessed" in entry["faults"] and operation == "BatchMeterUsage":
            result = {"Results": [], "UnprocessedRecords": params["UsageRecords"]}
        return 200, result


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, nor does AWS.
    raise ValueError(f"{constant} is not a JSON value")


def _hour_shown(timestamp: Any) -> str:
    try:
        return iso(float(timestamp))[:13] + ":00Z"
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"  # the request was refused; the log line must still be written


def _summary(entry: dict[str, Any]) -> str:
    req = entry.get("request") or {}
    if entry["operation"] == "MeterUsage":
        hour = _hour_shown(req.get("Timestamp"))
        extra = " dry-run" if req.get("DryRun") else ""
        return f" dimension={req.get('UsageDimension')} hour={hour} quantity={req.get('UsageQuantity', 0)}{extra}"
    if entry["operation"] == "RegisterUsage":
        return f" product={req.get('ProductCode')} key_version={req.get('PublicKeyVersion')}"
    if entry["operation"] == "BatchMeterUsage":
        return f" records={len(req.get('UsageRecords') or [])}"
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately; without this, Nagle and delayed ACKs add ~40 ms per call.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return  # calls are logged once, on one line, by Emulator.log_call

    def _send(
        self,
        status: int,
        payload: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith("/_emulator/"):
            self._admin("POST", body)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload = self.server.emulator.call(headers, body, self._drop)
        except _Drop:
            return
        self._send(status, payload, JSON_11, {"x-amzn-RequestId": str(uuid.uuid4())})

    def do_GET(self) -> None:
        self._admin("GET", b"")

    def do_DELETE(self) -> None:
        self._admin("DELETE", self._body())

    def _admin(self, method: str, body: bytes) -> None:
        try:
            data = json.loads(body) if body else {}
            if not isinstance(data, dict):
                raise ValueError("the request body must be a JSON object")
            status, payload = admin(
                self.server.emulator, method, self.path.split("?")[0], data, self.headers.get("Authorization")
            )
        except (ValueError, TypeError, KeyError) as err:
            status, payload = 400, {"error": "bad_request", "message": str(err)}
        if isinstance(payload, str):
            self._send(status, payload.encode(), "application/x-pem-file")
        else:
            self._send(status, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)


def admin(
    emu: Emulator, method: str, path: str, data: dict[str, Any], authorization: str | None
) -> tuple[int, Any]:
    """The /_emulator/ control and inspection API. Returns (status, JSON payload or PEM text)."""
    state = emu.state
    route = (method, path.rstrip("/"))
    if route == ("GET", CREDENTIALS_PATH):
        if not authorization:
            return 401, {"code": "MissingAuthorization", "message": "Send the container authorization token."}
        return 200, emu.container_credentials(authorization)
    if route == ("GET", "/_emulator/records"):
        with state.lock:
            return 200, {"records": list(state.accepted)}
    if route == ("GET", "/_emulator/calls"):
        with emu._log_lock:
            return 200, {"calls": list(emu.calls)}
    if route == ("GET", "/_emulator/registrations"):
        with state.lock:
            return 200, {"registrations": list(state.registrations)}
    if route == ("GET", "/_emulator/public-key"):
        return 200, state.signer.public_pem()
    if route == ("GET", "/_emulator/clock"):
        return 200, _clock(emu)
    if route == ("POST", "/_emulator/clock"):
        clock = state.clock
        if not isinstance(clock, SettableClock):
            return 409, {"error": "clock_fixed", "message": "this emulator runs on the system clock"}
        if "now" in data:
            clock.set(epoch(data["now"]))
        if "advance" in data:
            clock.advance(float(data["advance"]))
        if "frozen" in data:
            clock.freeze(bool(data["frozen"]))
        return 200, _clock(emu)
    if route == ("GET", "/_emulator/faults"):
        return 200, {"faults": emu.faults.snapshot()}
    if route == ("POST", "/_emulator/faults"):
        rule = emu.faults.add(FaultRule.from_dict(data))
        return 201, rule.to_dict()
    if route == ("DELETE", "/_emulator/faults"):
        emu.faults.clear()
        return 200, {"faults": []}
    if route == ("POST", "/_emulator/entitlement"):
        entitled = bool(data["entitled"])
        with state.lock:
            if data.get("caller"):
                state.caller_entitlement[data["caller"]] = entitled
            else:
                state.settings.entitled = entitled
        return 200, {"entitled": entitled, "caller": data.get("caller")}
    if route == ("POST", "/_emulator/platform"):
        with state.lock:
            if data.get("supported", True):
                state.unsupported_callers.discard(data["caller"])
            else:
                state.unsupported_callers.add(data["caller"])
        return 200, {"caller": data["caller"], "supported": data.get("supported", True)}
    if route == ("POST", "/_emulator/products"):
        dims = [str(d) for d in data.get("dimensions", [])]
        with state.lock:
            state.settings.products[str(data["product_code"])] = dims
        return 200, {"products": state.settings.products}
    if route == ("POST", "/_emulator/key-versions"):
        with state.lock:
            rotation = data.get("rotation_timestamp")
            state.settings.key_versions[int(data["version"])] = None if rotation is None else epoch(rotation)
        return 200, {"key_versions": state.settings.key_versions}
    if route == ("POST", "/_emulator/customers"):
        customer = customer_from(data)
        state.add_customer(customer)
        return 201, customer.__dict__
    if route == ("POST", "/_emulator/registration-tokens"):
        customer = customer_from(data)
        state.add_customer(customer)
        token = state.new_registration_token(customer, data.get("expires_in"))
        return 201, {"registration_token": token, **customer.__dict__}
    if route == ("POST", "/_emulator/reset"):
        state.reset()
        emu.faults.clear()
        with emu._log_lock:
            emu.calls.clear()
        return 200, {"reset": True}
    if route == ("GET", "/_emulator/settings"):
        return 200, {k: v for k, v in state.settings.__dict__.items() if k != "accounts"}
    return 404, {"error": "not_found", "message": f"no admin route {method} {path}"}


def customer_from(data: dict[str, Any]) -> Customer:
    known = {
        "product_code",
        "customer_identifier",
        "customer_aws_account_id",
        "license_arn",
        "subscribed",
        "expires_in",
    }
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not (data.get("customer_identifier") or data.get("customer_aws_account_id")):
        raise ValueError("a customer needs customer_identifier or customer_aws_account_id")
    return Customer(
        product_code=str(data["product_code"]),
        customer_identifier=data.get("customer_identifier"),
        customer_aws_account_id=data.get("customer_aws_account_id"),
        license_arn=data.get("license_arn"),
        subscribed=bool(data.get("subscribed", True)),
    )


def epoch(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError(f"a time must be epoch seconds or ISO 8601, got {value!r}")


def _clock(emu: Emulator) -> dict[str, Any]:
    now = emu.state.clock.now()
    return {"now": now, "iso": iso(now), "frozen": bool(getattr(emu.state.clock, "frozen", False))}


class EmulatorServer:
    """Runs an Emulator on a real socket. Port 0 picks a free port; `url` tells which."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self._server = _Server((host, port), emulator)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        # A short poll interval: stop() waits for the serve loop to notice, up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,), name="emulator", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(POLL_INTERVAL)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
