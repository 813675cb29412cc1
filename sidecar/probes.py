"""A probe-only listener for the kubelet.

The API listens on loopback, but kubelet's httpGet probes connect to the pod's IP. Like Istio's status
port, this small server answers only /healthz and /readyz (no tokens, no usage), on METERING_PROBE_LISTEN.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.entitlement import Entitlement


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        body: dict[str, str | None]
        if path == "/healthz":
            status, body = 200, {"status": "ok"}
        elif path == "/readyz":
            state = self.server.state()
            ready = state.status == "entitled"
            status = 200 if ready else 503
            body = {"status": "ready" if ready else state.status, "reason": state.reason}
        else:
            status, body = (
                404,
                {"error": "not_found", "message": "this port answers only /healthz and /readyz"},
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: Callable[[], Entitlement]) -> None:
        self.state = state
        super().__init__(address, _Handler)


class ProbeServer:
    def __init__(self, host: str, port: int, state: Callable[[], Entitlement]) -> None:
        self._server = _Server((host, port), state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
