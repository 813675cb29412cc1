"""sidecar.region: AWS_REGION, then AWS_DEFAULT_REGION, then the ECS task metadata; never a default.

The ECS task metadata endpoint v4 is a real http.server on 127.0.0.1 serving `/task`, read through the
sidecar's own urllib code (reference/aws-metering-semantics.md §5.5).
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar.region import RegionError, resolve_region

TASK_ARN = "arn:aws:ecs:eu-central-1:111122223333:task/product-cluster/0123456789abcdef0"


@dataclass
class Metadata:
    """The fake endpoint: answers (status, body) in order, the last one repeating; records the paths asked."""

    answers: list[tuple[int, bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    base: str = ""

    def serve(self, *answers: tuple[int, Any]) -> None:
        self.answers = [
            (status, body if isinstance(body, bytes) else json.dumps(body).encode())
            for status, body in answers
        ]

    def env(self) -> dict[str, str]:
        return {"ECS_CONTAINER_METADATA_URI_V4": self.base}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        metadata = self.server.metadata
        metadata.paths.append(self.path)
        if self.path != "/v4/container-id/task":
            status, body = 404, b"{}"
        else:
            status, body = metadata.answers[0] if len(metadata.answers) == 1 else metadata.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    metadata: Metadata


@pytest.fixture
def metadata() -> Iterator[Metadata]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.metadata = Metadata(base=f"http://127.0.0.1:{server.server_address[1]}/v4/container-id")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.metadata
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def no_proxy_for_us(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy meant for egress must not capture the link-local metadata call: point one at a closed port.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")


def region_error(env: dict[str, str]) -> str:
    with pytest.raises(RegionError) as caught:
        resolve_region(env)
    return str(caught.value)


# --- precedence -------------------------------------------------------------------------------------


def test_aws_region_comes_first(metadata: Metadata) -> None:
    metadata.serve((200, {"TaskARN": TASK_ARN}))
    env = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2", **metadata.env()}
    assert resolve_region(env) == ("eu-west-1", "AWS_REGION")
    assert metadata.paths == [], "the metadata endpoint is not asked when a variable gives the Region"


def test_aws_default_region_comes_next(metadata: Metadata) -> None:
    metadata.serve((200, {"TaskARN": TASK_ARN}))
    env = {"AWS_REGION": "  ", "AWS_DEFAULT_REGION": "us-west-2", **metadata.env()}
    assert resolve_region(env) == ("us-west-2", "AWS_DEFAULT_REGION")
    assert metadata.paths == []


def test_surrounding_space_is_ignored() -> None:
    assert resolve_region({"AWS_REGION": " ap-northeast-1\n"}) == ("ap-northeast-1", "AWS_REGION")


@pytest.mark.parametrize("name", ["AWS_REGION", "AWS_DEFAULT_REGION"])
@pytest.mark.parametrize("value", ["us-east", "US-EAST-1", "useast1", "eu-west-1a", "us east 1", "global"])
def test_a_name_that_is_not_a_region_is_refused(name: str, value: str) -> None:
    message = region_error({name: value})
    assert name in message and repr(value) in message


def test_a_bad_aws_region_does_not_fall_through_to_the_next_source() -> None:
    assert "AWS_REGION" in region_error({"AWS_REGION": "moon-1a", "AWS_DEFAULT_REGION": "eu-west-1"})


@pytest.mark.parametrize("region", ["us-gov-west-1", "cn-northwest-1", "ap-southeast-5", "il-central-1"])
def test_other_partitions_and_new_regions(region: str) -> None:
    assert resolve_region({"AWS_REGION": region}) == (region, "AWS_REGION")


# --- ECS task metadata, over real HTTP --------------------------------------------------------------


def test_the_task_arn_gives_the_region(metadata: Metadata) -> None:
    metadata.serve((200, {"TaskARN": TASK_ARN, "AvailabilityZone": "us-west-2a"}))
    assert resolve_region(metadata.env()) == ("eu-central-1", "ECS task metadata")
    assert metadata.paths == ["/v4/container-id/task"]


def test_a_govcloud_task_arn(metadata: Metadata) -> None:
    metadata.serve((200, {"TaskARN": "arn:aws-us-gov:ecs:us-gov-west-1:111122223333:task/c/0123"}))
    assert resolve_region(metadata.env())[0] == "us-gov-west-1"


def test_a_trailing_slash_on_the_metadata_uri(metadata: Metadata) -> None:
    metadata.serve((200, {"TaskARN": TASK_ARN}))
    assert resolve_region({"ECS_CONTAINER_METADATA_URI_V4": metadata.base + "/"})[0] == "eu-central-1"


@pytest.mark.parametrize("arn", [None, "", "not-an-arn", "arn:aws:ecs::111122223333:task/c/1"])
def test_the_availability_zone_is_the_fallback(metadata: Metadata, arn: str | None) -> None:
    metadata.serve((200, {"TaskARN": arn, "AvailabilityZone": "ap-southeast-2b"}))
    assert resolve_region(metadata.env()) == ("ap-southeast-2", "ECS task metadata")


@pytest.mark.parametrize(
    "document",
    [{}, {"Cluster": "c"}, {"TaskARN": "arn:aws:ecs", "AvailabilityZone": "nowhere"}, [], "a string", 7],
    ids=["empty", "no-fields", "unusable-fields", "list", "string", "number"],
)
def test_metadata_without_a_region_is_an_error(metadata: Metadata, document: Any) -> None:
    metadata.serve((200, document))
    message = region_error(metadata.env())
    assert "names no Region" in message and metadata.base + "/task" in message
    assert len(metadata.paths) == 1, "an answer without a Region is not retried"


def test_a_transient_failure_is_retried(metadata: Metadata) -> None:
    metadata.serve((500, b"busy"), (200, {"TaskARN": TASK_ARN}))
    assert resolve_region(metadata.env())[0] == "eu-central-1"
    assert len(metadata.paths) == 2


@pytest.mark.parametrize("answer", [(500, b"busy"), (404, b"{}"), (200, b"<html>not json</html>")])
def test_a_metadata_endpoint_that_keeps_failing_is_an_error(
    metadata: Metadata, answer: tuple[int, bytes]
) -> None:
    metadata.serve(answer)
    message = region_error(metadata.env())
    assert "could not read the ECS task metadata" in message and metadata.base + "/task" in message
    assert len(metadata.paths) == 3


def test_a_metadata_endpoint_that_is_down_is_an_error_naming_the_url() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_address[1]}/v4/gone"
    server.server_close()  # nothing listens there any more
    message = region_error({"ECS_CONTAINER_METADATA_URI_V4": url})
    assert f"could not read the ECS task metadata at {url}/task" in message


class _NotHttp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def test_a_metadata_endpoint_that_does_not_speak_http_is_an_error() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _NotHttp) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/v4/x"
            message = region_error({"ECS_CONTAINER_METADATA_URI_V4": url})
        finally:
            server.shutdown()
            thread.join(timeout=10)
    assert f"could not read the ECS task metadata at {url}/task" in message


# --- no source: never a default ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [{}, {"AWS_REGION": "", "AWS_DEFAULT_REGION": "  ", "ECS_CONTAINER_METADATA_URI_V4": ""}],
    ids=["unset", "empty"],
)
def test_no_source_is_an_error_that_never_defaults(env: dict[str, str]) -> None:
    def no_metadata(url: str) -> Any:
        raise AssertionError(f"no metadata endpoint was configured, yet {url} was asked")

    with pytest.raises(RegionError) as caught:
        region = resolve_region(env, get_json=no_metadata)
        pytest.fail(f"resolved {region} from nothing; it must never default (least of all to us-east-1)")
    message = str(caught.value)
    assert "never guesses" in message and "AWS_REGION" in message


def test_the_injected_reader_is_used() -> None:
    asked: list[str] = []

    def get_json(url: str) -> Any:
        asked.append(url)
        return {"AvailabilityZone": "sa-east-1c"}

    env = {"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4/abc"}
    assert resolve_region(env, get_json=get_json) == ("sa-east-1", "ECS task metadata")
    assert asked == ["http://127.0.0.1:9/v4/abc/task"]
