"""The local HTTP API over real HTTP: uvicorn on 127.0.0.1, an ephemeral port, httpx and SidecarClient.

The EntitlementService behind it has a scripted RegisterUsage that signs real PS256 tokens
(tests/entitlement_fakes.py); the tests drive its state and read it back through the API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from entitlement_fakes import (
    PRODUCT,
    VERSION,
    Rig,
    client_error,
    config,
    rig,
    stranger,
    throttled,
    token,
)

from sidecar.api import create_app
from sidecar.client import SidecarClient
from sidecar.emulator.signer import Signer
from sidecar.token import TokenError, load_public_key, verify_token

API_TOKEN = "test-api-token-0123456789"
PROBES = ["/healthz", "/readyz"]
PROTECTED = [
    ("GET", "/v1/entitlement"),
    ("POST", "/v1/entitlement/attest"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/path"),
]


@dataclass
class Sidecar:
    url: str
    rig: Rig
    http: httpx.Client

    def client(self, api_token: str | None = None) -> SidecarClient:
        return SidecarClient(self.url, timeout=10, api_token=api_token)

    def register(self) -> None:
        self.rig.service.register_at_start()


class Switch:
    """An ASGI app that hands each request to the app of the current test: one server for the module."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@dataclass
class Server:
    url: str
    switch: Switch


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """uvicorn on 127.0.0.1, port 0, in a background thread (stopped through its should_exit flag)."""
    switch = Switch()
    server = uvicorn.Server(uvicorn.Config(switch, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # waits for an event (the socket is bound), not for time
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Server(f"http://127.0.0.1:{port}", switch)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"


Serve = Callable[..., Sidecar]


@pytest.fixture
def serve(server: Server, tmp_path: Path, signer: Signer) -> Iterator[Serve]:
    """Puts a fresh app (its own service, script, metrics and API token) behind the server."""
    clients: list[httpx.Client] = []

    def start(
        script: Any = (), api_token: str | None = None, key: Signer | None = None, **changes: Any
    ) -> Sidecar:
        key = key or signer
        r = rig(config(tmp_path, key, **changes), key, script)
        server.switch.app = create_app(r.service, r.metrics, api_token)
        http = httpx.Client(base_url=server.url, timeout=10, trust_env=False)
        clients.append(http)
        return Sidecar(server.url, r, http)

    yield start
    server.switch.app = None
    for http in clients:
        http.close()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """Asserts the status and the {"error", "message"} shape; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def verifies(signer: Signer, signature: str, nonce: str) -> None:
    verify_token(
        signature,
        {VERSION: load_public_key(signer.public_pem())},
        product_code=PRODUCT,
        public_key_version=VERSION,
        nonce=nonce,
    )


# --- probes -----------------------------------------------------------------------------------------


def test_healthz(serve: Serve) -> None:
    response = serve().http.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_follows_entitlement(serve: Serve) -> None:
    sidecar = serve()
    pending = sidecar.http.get("/readyz")
    assert pending.status_code == 503
    assert pending.json()["status"] == "pending"

    sidecar.register()
    ready = sidecar.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_while_retrying_shows_why(serve: Serve) -> None:
    sidecar = serve([throttled()])
    sidecar.rig.time.stop_at = 1  # stop in the first retry wait
    sidecar.register()
    body = sidecar.http.get("/readyz").json()
    assert body["status"] == "pending" and "ThrottlingException" in body["reason"]


def test_readyz_when_denied_gives_the_reason(serve: Serve) -> None:
    sidecar = serve([client_error("CustomerNotEntitledException", "not subscribed")])
    sidecar.register()
    response = sidecar.http.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "denied"
    assert "CustomerNotEntitledException" in body["reason"] and "subscribe" in body["reason"]


# --- /v1/entitlement --------------------------------------------------------------------------------


def test_entitlement_while_pending(serve: Serve) -> None:
    body = serve().http.get("/v1/entitlement").json()
    assert body == {
        "status": "pending",
        "product_code": PRODUCT,
        "public_key_version": VERSION,
        "nonce": None,
        "signature": None,
        "registered_at": None,
    }


def test_entitlement_when_entitled(serve: Serve, signer: Signer) -> None:
    sidecar = serve()
    sidecar.register()
    response = sidecar.http.get("/v1/entitlement")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "status",
        "product_code",
        "public_key_version",
        "nonce",
        "signature",
        "registered_at",
    }
    assert body["status"] == "entitled"
    assert (body["product_code"], body["public_key_version"]) == (PRODUCT, VERSION)
    assert body["nonce"] == sidecar.rig.register.nonces[0]
    assert body["registered_at"] == "2026-11-26T10:30:00Z"  # T0, as ISO 8601 UTC
    verifies(signer, body["signature"], body["nonce"])


def test_entitlement_when_denied_has_the_reason(serve: Serve) -> None:
    sidecar = serve([client_error("InvalidRegionException", "wrong Region")])
    sidecar.register()
    body = sidecar.http.get("/v1/entitlement").json()
    assert body["status"] == "denied"
    assert "InvalidRegionException" in body["reason"] and "AWS_REGION" in body["reason"]
    assert body["signature"] is None and body["nonce"] is None
    assert {"reason_code", "attempts"}.isdisjoint(body)


# --- attest -----------------------------------------------------------------------------------------


def test_attest_returns_a_token_for_the_callers_nonce(serve: Serve, signer: Signer) -> None:
    sidecar = serve()
    sidecar.register()
    response = sidecar.http.post("/v1/entitlement/attest", json={"nonce": "product-made-nonce"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["nonce"] == "product-made-nonce"
    assert (body["product_code"], body["public_key_version"]) == (PRODUCT, VERSION)
    verifies(signer, body["signature"], "product-made-nonce")
    assert sidecar.rig.register.nonces[-1] == "product-made-nonce"


def test_attest_before_entitlement_is_503(serve: Serve) -> None:
    response = serve().http.post("/v1/entitlement/attest", json={"nonce": "n"})
    assert "pending" in error_of(response, 503, "not_entitled")


def test_attest_rate_limit_is_429_with_retry_after(serve: Serve) -> None:
    sidecar = serve(attest_rate=1.0)
    sidecar.register()
    assert sidecar.http.post("/v1/entitlement/attest", json={"nonce": "n-1"}).status_code == 200
    limited = sidecar.http.post("/v1/entitlement/attest", json={"nonce": "n-2"})
    assert "retry in 1.00 s" in error_of(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("failure", "status"),
    [(throttled(), 503), (client_error("CustomerNotEntitledException"), 502)],
    ids=["throttled", "fatal"],
)
def test_attest_aws_errors(serve: Serve, failure: BaseException, status: int) -> None:
    sidecar = serve([None, failure])
    sidecar.register()
    response = sidecar.http.post("/v1/entitlement/attest", json={"nonce": "n-1"})
    assert "RegisterUsage failed with" in error_of(response, status, "aws_error")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "nonce"),
        ({"nonce": ""}, "nonce"),
        ({"nonce": "n" * 256}, "nonce"),
        ({"nonce": 12345}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"nonce": "ok", "extra": 1}, "extra"),
        (["nonce"], "body"),
        (b"nonce=abc", "body"),
        (b"{not json", "body"),
        (None, "body"),
    ],
    ids=[
        "missing",
        "empty",
        "256-chars",
        "number",
        "null",
        "extra-field",
        "list",
        "form",
        "not-json",
        "no-body",
    ],
)
def test_attest_invalid_requests_are_422(serve: Serve, body: Any, named: str) -> None:
    sidecar = serve()
    sidecar.register()
    headers = {"Content-Type": "application/json"}
    if isinstance(body, bytes) or body is None:
        response = sidecar.http.post("/v1/entitlement/attest", content=body or b"", headers=headers)
    else:
        response = sidecar.http.post("/v1/entitlement/attest", json=body)
    message = error_of(response, 422, "invalid_request")
    assert f"{named}:" in message, message
    assert '{"nonce"' in message, "every 422 says what the body should be"
    assert sidecar.rig.register.calls == 1, "nothing reaches AWS"


def test_a_nonce_of_255_characters_is_accepted(serve: Serve) -> None:
    sidecar = serve()
    sidecar.register()
    assert sidecar.http.post("/v1/entitlement/attest", json={"nonce": "n" * 255}).status_code == 200


# --- security: token, proxies -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PROBES)
def test_probes_need_no_token(serve: Serve, path: str) -> None:
    sidecar = serve(api_token=API_TOKEN)
    sidecar.register()
    assert sidecar.http.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-0123456789",
        f"bearer {API_TOKEN}",
        API_TOKEN,
        f"Bearer {API_TOKEN}x",
        "Bearer",
    ],
    ids=["none", "wrong", "lowercase-scheme", "no-scheme", "longer", "empty"],
)
def test_everything_else_needs_the_token(
    serve: Serve, method: str, path: str, authorization: str | None
) -> None:
    sidecar = serve(api_token=API_TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = sidecar.http.request(method, path, headers=headers, json={"nonce": "n"})
    error_of(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert sidecar.rig.register.calls == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/entitlement", 200),
        ("POST", "/v1/entitlement/attest", 200),
        ("GET", "/metrics", 200),
        ("GET", "/no/such/path", 404),
    ],
)
def test_with_the_token_it_answers(serve: Serve, method: str, path: str, status: int) -> None:
    sidecar = serve(api_token=API_TOKEN)
    sidecar.register()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    assert sidecar.http.request(method, path, headers=headers, json={"nonce": "n"}).status_code == status


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_a_configured_token_none_is_needed(serve: Serve, method: str, path: str) -> None:
    sidecar = serve()
    sidecar.register()
    response = sidecar.http.request(method, path, json={"nonce": "n"})
    assert response.status_code == (404 if path == "/no/such/path" else 200)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/healthz"), ("GET", "/readyz"), *PROTECTED], ids=lambda v: v
)
@pytest.mark.parametrize("api_token", [None, API_TOKEN], ids=["auth-off", "auth-on"])
def test_a_forwarded_request_is_refused_everywhere(
    serve: Serve, method: str, path: str, api_token: str | None
) -> None:
    sidecar = serve(api_token=api_token)
    sidecar.register()
    headers = {"X-Forwarded-For": "127.0.0.1", "Authorization": f"Bearer {API_TOKEN}"}
    response = sidecar.http.request(method, path, headers=headers, json={"nonce": "n"})
    assert "X-Forwarded-For" in error_of(response, 403, "forwarded_request_refused")
    assert sidecar.rig.register.calls == 1, "the refused attest did not reach AWS"


def test_a_request_with_a_forwarded_header_is_refused_too(serve: Serve) -> None:
    sidecar = serve()
    sidecar.register()
    response = sidecar.http.get("/v1/entitlement", headers={"Forwarded": "for=10.0.0.1"})
    error_of(response, 403, "forwarded_request_refused")


def test_an_unknown_path_is_404_in_the_error_shape(serve: Serve) -> None:
    error_of(serve().http.get("/v2/nothing"), 404, "not_found")


def test_a_wrong_method_is_405_in_the_error_shape(serve: Serve) -> None:
    error_of(serve().http.delete("/v1/entitlement"), 405, "method_not_allowed")


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_are_prometheus_text(serve: Serve) -> None:
    sidecar = serve([throttled()])
    sidecar.register()
    response = sidecar.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert "# TYPE metering_entitlement_state gauge" in lines
    assert 'metering_entitlement_state{state="entitled"} 1.0' in lines
    assert 'metering_entitlement_state{state="pending"} 0.0' in lines
    assert 'metering_register_usage_calls_total{outcome="ThrottlingException",purpose="start"} 1.0' in lines
    assert 'metering_register_usage_calls_total{outcome="ok",purpose="start"} 1.0' in lines


# --- the product's own client: a fake sidecar cannot fool it -----------------------------------------


def test_the_product_client_verifies_entitlement(serve: Serve, signer: Signer) -> None:
    sidecar = serve(api_token=API_TOKEN)
    sidecar.register()
    client = sidecar.client(API_TOKEN)
    client.wait_ready(timeout=10)
    assert client.entitlement()["status"] == "entitled"
    claims = client.verify_entitlement(signer.public_pem(), PRODUCT)
    assert claims.product_code == PRODUCT and claims.nonce == sidecar.rig.register.nonces[-1]


def test_the_product_client_refuses_a_token_from_another_key(serve: Serve) -> None:
    sidecar = serve()
    sidecar.register()
    with pytest.raises(TokenError) as caught:
        sidecar.client().verify_entitlement(stranger().public_pem(), PRODUCT)
    assert caught.value.check == "signature"


def test_a_fake_sidecar_with_its_own_key_cannot_fool_the_product(serve: Serve, signer: Signer) -> None:
    # The buyer runs a sidecar configured with a key pair of their own: it calls itself entitled ...
    fake = serve(key=stranger())
    fake.register()
    assert fake.client().entitlement()["status"] == "entitled"
    # ... but the product checks with the key baked into its image.
    with pytest.raises(TokenError) as caught:
        fake.client().verify_entitlement(signer.public_pem(), PRODUCT)
    assert caught.value.check == "signature"


def test_a_sidecar_replaying_an_old_token_cannot_fool_the_product(serve: Serve, signer: Signer) -> None:
    sidecar = serve([None, lambda nonce: {"Signature": token(signer, "an-old-nonce")}])
    sidecar.register()
    with pytest.raises(TokenError) as caught:
        sidecar.client().verify_entitlement(signer.public_pem(), PRODUCT)
    assert caught.value.check == "nonce"
