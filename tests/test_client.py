"""sidecar.client against a fake sidecar: a stdlib http.server on 127.0.0.1, real HTTP, ephemeral port.

The fake is deliberately dumb (a route table and a request log) so that the tests read as "the
sidecar answers X, the client does Y". The real sidecar API is tested elsewhere.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sidecar.client import SidecarClient, SidecarError
from sidecar.token import AWS_SAMPLE_PUBLIC_KEY_PEM, TokenError

PRODUCT = "prod-abc123"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Reply = tuple[int, Any]  # (status, JSON value or raw bytes)


@dataclass
class FakeSidecar:
    url: str = ""
    routes: dict[tuple[str, str], Callable[[Seen], Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def route(self, method: str, path: str, reply: Callable[[Seen], Reply] | Reply) -> None:
        self.routes[(method, path)] = reply if callable(reply) else (lambda _seen: reply)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, dict(self.headers), json.loads(raw) if raw else None)
        fake = self.server.fake
        fake.seen.append(seen)
        handler = fake.routes.get((self.command, self.path))
        status, value = handler(seen) if handler else (404, {"error": "not_found", "message": self.path})
        if isinstance(value, bytes):
            body, kind = value, "text/plain"
        else:
            body, kind = json.dumps(value).encode(), "application/json"
        self.send_response(status)
        if status in (301, 302, 303, 307, 308):
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    fake: FakeSidecar


@pytest.fixture
def fake() -> Iterator[FakeSidecar]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeSidecar(url=f"http://127.0.0.1:{server.server_address[1]}")
    # A short poll interval: shutdown() waits for it, and every test stops a server.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def seller_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def seller_pem(seller_key: rsa.RSAPrivateKey) -> str:
    return (
        seller_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_ps256(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    head = b64u(json.dumps({"alg": "PS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims).encode())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return f"{head}.{body}.{b64u(key.sign(f'{head}.{body}'.encode(), pss, hashes.SHA256()))}"


def attest_with(key: rsa.RSAPrivateKey) -> Callable[[Seen], Reply]:
    """An honest sidecar: RegisterUsage with the caller's nonce, signed by ``key``."""

    def reply(seen: Seen) -> Reply:
        claims = {"productCode": PRODUCT, "publicKeyVersion": 1, "nonce": seen.body["nonce"], "iat": 1}
        return 200, {"signature": sign_ps256(key, claims)}

    return reply


def test_ready(fake: FakeSidecar) -> None:
    client = SidecarClient(fake.url, timeout=2)
    fake.route("GET", "/readyz", (503, {"error": "not_ready", "message": "registering"}))
    assert client.ready() is False
    fake.route("GET", "/readyz", (200, {"status": "ready"}))
    assert client.ready() is True


def test_ready_is_false_when_nothing_listens() -> None:
    assert SidecarClient(closed_port_url(), timeout=2).ready() is False


def test_wait_ready_returns_once_ready(fake: FakeSidecar) -> None:
    answers = iter([(503, {"error": "not_ready", "message": "registering"})] * 2)
    fake.route("GET", "/readyz", lambda _seen: next(answers, (200, {})))
    SidecarClient(fake.url, timeout=2).wait_ready(timeout=10, interval=0.01)
    assert fake.paths() == ["/readyz"] * 3


def test_wait_ready_timeout_names_url_and_last_answer(fake: FakeSidecar) -> None:
    fake.route("GET", "/readyz", (503, {"error": "denied", "message": "CustomerNotEntitledException"}))
    with pytest.raises(TimeoutError) as info:
        SidecarClient(fake.url, timeout=2).wait_ready(timeout=0.2, interval=0.05)
    text = str(info.value)
    assert f"{fake.url}/readyz" in text
    assert "503" in text and "denied" in text and "CustomerNotEntitledException" in text


def test_wait_ready_timeout_when_nothing_listens() -> None:
    url = closed_port_url()
    with pytest.raises(TimeoutError, match="no answer") as info:
        SidecarClient(url, timeout=2).wait_ready(timeout=0.1, interval=0.05)
    assert f"{url}/readyz" in str(info.value)


def test_entitlement(fake: FakeSidecar) -> None:
    answer = {"status": "entitled", "product_code": PRODUCT, "public_key_version": 1}
    fake.route("GET", "/v1/entitlement", (200, answer))
    assert SidecarClient(fake.url + "/", timeout=2).entitlement() == answer


def test_error_answer_becomes_sidecar_error(fake: FakeSidecar) -> None:
    fake.route("GET", "/v1/entitlement", (503, {"error": "denied", "message": "no subscription"}))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2).entitlement()
    assert (info.value.status, info.value.code, info.value.message) == (503, "denied", "no subscription")


def test_non_json_error_answer(fake: FakeSidecar) -> None:
    fake.route("GET", "/v1/entitlement", (500, b"Internal Server Error"))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2).entitlement()
    assert (info.value.status, info.value.code) == (500, "http_500")
    assert "Internal Server Error" in info.value.message


def test_bearer_token_is_sent_only_when_configured(fake: FakeSidecar) -> None:
    fake.route("GET", "/v1/entitlement", (200, {}))
    SidecarClient(fake.url, timeout=2, api_token="s3cret").entitlement()
    SidecarClient(fake.url, timeout=2).entitlement()
    assert fake.seen[0].headers.get("Authorization") == "Bearer s3cret"
    assert "Authorization" not in fake.seen[1].headers


def test_attest_posts_the_nonce(fake: FakeSidecar) -> None:
    fake.route("POST", "/v1/entitlement/attest", (200, {"signature": "a.b.c"}))
    assert SidecarClient(fake.url, timeout=2).attest("n-1") == "a.b.c"
    assert fake.seen[0].body == {"nonce": "n-1"}
    assert fake.seen[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("answer", [{}, {"signature": ""}, {"signature": 5}, ["a.b.c"]])
def test_attest_without_a_signature(fake: FakeSidecar, answer: object) -> None:
    fake.route("POST", "/v1/entitlement/attest", (200, answer))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2).attest("n")
    assert info.value.code == "invalid_response"


def test_verify_entitlement(fake: FakeSidecar, seller_key: rsa.RSAPrivateKey, seller_pem: str) -> None:
    fake.route("POST", "/v1/entitlement/attest", attest_with(seller_key))
    client = SidecarClient(fake.url, timeout=2)
    first = client.verify_entitlement(seller_pem, PRODUCT)
    second = client.verify_entitlement(seller_pem.encode(), PRODUCT, public_key_version=1)
    assert first.product_code == PRODUCT and first.public_key_version == 1
    # The client, not the sidecar, chose each nonce, and each call used a fresh one.
    assert [first.nonce, second.nonce] == [s.body["nonce"] for s in fake.seen]
    assert first.nonce and second.nonce and first.nonce != second.nonce


def test_verify_entitlement_refuses_a_replayed_token(
    fake: FakeSidecar, seller_key: rsa.RSAPrivateKey, seller_pem: str
) -> None:
    # A fake sidecar that replays a genuine token captured earlier, for someone else's nonce.
    old = sign_ps256(seller_key, {"productCode": PRODUCT, "publicKeyVersion": 1, "nonce": "captured"})
    fake.route("POST", "/v1/entitlement/attest", (200, {"signature": old}))
    with pytest.raises(TokenError) as info:
        SidecarClient(fake.url, timeout=2).verify_entitlement(seller_pem, PRODUCT)
    assert info.value.check == "nonce"


def test_verify_entitlement_refuses_a_forged_token(fake: FakeSidecar, seller_pem: str) -> None:
    # A fake sidecar that signs with its own key, echoing the nonce correctly.
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake.route("POST", "/v1/entitlement/attest", attest_with(forger))
    with pytest.raises(TokenError) as info:
        SidecarClient(fake.url, timeout=2).verify_entitlement(seller_pem, PRODUCT)
    assert info.value.check == "signature"


def test_verify_entitlement_refuses_the_sample_key_before_any_request(fake: FakeSidecar) -> None:
    with pytest.raises(TokenError) as info:
        SidecarClient(fake.url, timeout=2).verify_entitlement(AWS_SAMPLE_PUBLIC_KEY_PEM, PRODUCT)
    assert info.value.check == "sample_key"
    assert fake.seen == []


def test_report_usage(fake: FakeSidecar) -> None:
    fake.route("POST", "/v1/usage", (202, {"accepted": 1}))
    client = SidecarClient(fake.url, timeout=2)
    assert client.report_usage("requests", 3) == {"accepted": 1}
    client.report_usage("requests", 4, tags={"team": "a"}, event_id="e-1")
    assert [s.body for s in fake.seen] == [
        {"dimension": "requests", "quantity": 3, "tags": {}},
        {"dimension": "requests", "quantity": 4, "tags": {"team": "a"}, "event_id": "e-1"},
    ]


def test_report_usage_batch(fake: FakeSidecar) -> None:
    fake.route("POST", "/v1/usage", (202, {"accepted": 2}))
    events = [{"dimension": "a", "quantity": 1, "tags": {}}, {"dimension": "b", "quantity": 2, "tags": {}}]
    assert SidecarClient(fake.url, timeout=2).report_usage_batch(iter(events)) == {"accepted": 2}
    assert fake.seen[0].body == {"events": events}


def test_report_usage_rejected(fake: FakeSidecar) -> None:
    fake.route("POST", "/v1/usage", (422, {"error": "invalid_field", "message": "quantity: must be >= 0"}))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2).report_usage("requests", -1)
    assert (info.value.status, info.value.code) == (422, "invalid_field")
    assert "quantity" in str(info.value)


def test_report_usage_requires_202(fake: FakeSidecar) -> None:
    # 202 is the sidecar's "durable" promise; a bare 200 is some other server, not an acknowledgement.
    fake.route("POST", "/v1/usage", (200, {}))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2).report_usage("requests", 1)
    assert info.value.status == 200


def test_redirects_are_not_followed(fake: FakeSidecar) -> None:
    fake.route("GET", "/v1/entitlement", (302, {}))
    fake.route("GET", "/elsewhere", (200, {"status": "entitled"}))
    with pytest.raises(SidecarError) as info:
        SidecarClient(fake.url, timeout=2, api_token="s3cret").entitlement()
    assert info.value.status == 302
    assert fake.paths() == ["/v1/entitlement"]


def test_proxy_environment_is_ignored(fake: FakeSidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    # An egress proxy setting must not capture localhost calls; this "proxy" refuses connections.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, closed_port_url())
    fake.route("GET", "/readyz", (200, {}))
    assert SidecarClient(fake.url, timeout=2).ready() is True


@pytest.mark.parametrize("url", ["file:///etc/passwd", "127.0.0.1:8787", "ftp://127.0.0.1/"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        SidecarClient(url)
