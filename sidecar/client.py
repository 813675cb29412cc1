"""The product-side helper: what the product container uses to talk to the sidecar on localhost.

Standard library (urllib) plus ``sidecar.token`` only, so that a seller can vendor this one file
(and ``token.py``) into the product image without the sidecar's server dependencies.

The trust boundary is :meth:`SidecarClient.verify_entitlement`: the product makes its own nonce
and checks the RegisterUsage token with the public key baked into its image, so a buyer who
replaces the sidecar with a fake cannot forge entitlement
(reference/aws-metering-semantics.md §1.3.5 step 6, §7 item 4).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.token import TokenClaims, load_public_key, verify_token

__all__ = ["DEFAULT_BASE_URL", "SidecarClient", "SidecarError"]

DEFAULT_BASE_URL = "http://127.0.0.1:8787"
# A sidecar answer is a few KiB at most; a bound keeps a misbehaving peer from exhausting memory.
_MAX_BODY = 1 << 20


class SidecarError(Exception):
    """The sidecar answered with an error, ``{"error": CODE, "message": TEXT}``, or an unexpected status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"sidecar answered HTTP {self.status} {self.code}: {self.message}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The sidecar never redirects. Following one could carry the bearer token to another host, so a
    # 3xx surfaces as an error instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class SidecarClient:
    """A small blocking client for the sidecar's local HTTP API (see /work/shared DESIGN "Interfaces").

    Network failures (connection refused, timeouts) raise ``OSError`` (``urllib.error.URLError`` or
    ``TimeoutError``); answers other than the expected status raise :class:`SidecarError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 5.0,
        api_token: str | None = None,
    ) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url {base_url!r} must be an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_token = api_token
        # No proxy handler: the sidecar is on localhost, and an HTTP_PROXY meant for egress traffic
        # must not capture (or see) these calls. No redirects, see _NoRedirect.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def _send(self, method: str, path: str, body: object = None) -> tuple[int, str, bytes]:
        """One HTTP exchange: (status, reason, body). HTTP error statuses are returned, not raised."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_token is not None:
            headers["Authorization"] = f"Bearer {self.api_token}"
        # The scheme is checked in __init__ (http or https only), which is what S310 asks for.
        request = urllib.request.Request(  # noqa: S310
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.reason, response.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, str(exc.reason), exc.read(_MAX_BODY)
            finally:
                exc.close()

    def _call(self, method: str, path: str, body: object, expect: int) -> dict[str, Any]:
        status, reason, raw = self._send(method, path, body)
        if status != expect:
            raise _error_from(status, reason, raw)
        try:
            answer = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except ValueError:
            raise SidecarError(status, "invalid_response", f"{method} {path}: the body is not JSON") from None
        if not isinstance(answer, dict):
            raise SidecarError(status, "invalid_response", f"{method} {path}: expected a JSON object")
        return answer

    def ready(self) -> bool:
        """True when ``GET /readyz`` answers 200, that is once entitlement is verified."""
        try:
            status, _, _ = self._send("GET", "/readyz")
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout: float, interval: float = 0.2) -> None:
        """Poll ``/readyz`` until it answers 200; raise ``TimeoutError`` after ``timeout`` seconds."""
        url = self.base_url + "/readyz"
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, reason, raw = self._send("GET", "/readyz")
            except OSError as exc:
                last = f"no answer ({getattr(exc, 'reason', exc)})"
            else:
                if status == 200:
                    return
                last = str(_error_from(status, reason, raw))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{url} not ready after {timeout:g}s; last: {last}")
            time.sleep(min(interval, remaining))

    def entitlement(self) -> dict[str, Any]:
        """``GET /v1/entitlement``: status, product_code, signature, ... as the sidecar reports them.

        This is the sidecar's word only; use :meth:`verify_entitlement` to check it.
        """
        return self._call("GET", "/v1/entitlement", None, 200)

    def attest(self, nonce: str | None = None) -> str:
        """``POST /v1/entitlement/attest``: a RegisterUsage token minted for ``nonce``."""
        answer = self._call("POST", "/v1/entitlement/attest", {"nonce": nonce}, 200)
        signature = answer.get("signature")
        if not isinstance(signature, str) or not signature:
            raise SidecarError(200, "invalid_response", "the attest answer has no 'signature' string")
        return signature

    def verify_entitlement(
        self, public_key_pem: str | bytes, product_code: str, public_key_version: int = 1
    ) -> TokenClaims:
        """Prove entitlement without trusting the sidecar.

        A fresh nonce makes a replayed token fail, and the key from the product image makes a token
        from any other signer fail (§1.3.5). Raises ``sidecar.token.TokenError`` when it does not
        verify, and ``ValueError`` (or ``TokenError("sample_key")``) for an unusable key.
        """
        key = load_public_key(public_key_pem)  # before any I/O: a bad key is a build bug
        nonce = secrets.token_urlsafe(32)  # 43 chars; RegisterUsage allows up to 255 (§1.2)
        token = self.attest(nonce)
        return verify_token(
            token,
            {public_key_version: key},
            product_code=product_code,
            public_key_version=public_key_version,
            nonce=nonce,
        )

    def report_usage(
        self,
        dimension: str,
        quantity: int,
        tags: Mapping[str, str] | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/usage`` with one event. 202 means it is durable; an ``event_id`` makes a retry safe."""
        return self._call("POST", "/v1/usage", _event(dimension, quantity, tags, event_id), 202)

    def report_usage_batch(self, events: Iterable[Mapping[str, object]]) -> dict[str, Any]:
        """``POST /v1/usage`` with ``{"events": [...]}``; the sidecar stores all of them or none."""
        return self._call("POST", "/v1/usage", {"events": [dict(e) for e in events]}, 202)


def _event(
    dimension: str, quantity: int, tags: Mapping[str, str] | None, event_id: str | None
) -> dict[str, object]:
    event: dict[str, object] = {"dimension": dimension, "quantity": quantity, "tags": dict(tags or {})}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def _error_from(status: int, reason: str, raw: bytes) -> SidecarError:
    # The sidecar's errors are {"error": CODE, "message": TEXT}; anything else (a proxy page, a
    # different server on the port) is reported with its status and the start of its body.
    try:
        answer = json.loads(raw.decode("utf-8"))
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return SidecarError(status, answer["error"], str(answer.get("message", "")))
    text = raw[:200].decode("utf-8", "replace").strip()
    return SidecarError(status, f"http_{status}", f"{reason}: {text}" if text else reason)
