"""`metering-sidecar run`: wires configuration, boto3, the entitlement service and the API, and runs them.

Lifecycle: the API comes up at once (so probes answer), RegisterUsage runs in a background thread, and
SIGTERM/SIGINT stop the server gracefully and interrupt any retry wait (uvicorn's own signal handling).
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

from sidecar import aws, logs
from sidecar.clock import SystemClock
from sidecar.config import Config, ConfigError, load
from sidecar.entitlement import EntitlementService
from sidecar.metrics import Metrics
from sidecar.region import RegionError, resolve_region
from sidecar.retry import Backoff

log = logging.getLogger("sidecar.run")


class Registrar:
    """Calls RegisterUsage. The boto3 client is made on first use, inside the retry policy, so that a
    credential endpoint that is not up yet is retried like any other transient failure."""

    def __init__(self, config: Config, region: str) -> None:
        self.config = config
        self.region = region
        self._setup: aws.AwsSetup | None = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._setup is None:
                self._setup = aws.metering_client(self.region)
                method = self._setup.credential_method
                log.info(
                    "AWS credentials: %s",
                    self._setup.credential_source,
                    extra={"credential_method": method, "region": self.region},
                )
                if method == "iam-role":
                    log.warning(
                        "the EC2 instance profile (node role) is not accepted by AWS Marketplace metering; "
                        "use IRSA on EKS or the task role on ECS"
                    )
            return self._setup.client

    def __call__(self, nonce: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client().register_usage(
            ProductCode=self.config.product_code, PublicKeyVersion=self.config.public_key_version, Nonce=nonce
        )
        return result


def _check_state_dir(config: Config) -> None:
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=config.state_dir):
            pass
    except OSError as err:
        raise ConfigError(
            "METERING_STATE_DIR", f"{config.state_dir} is not a writable directory ({err.strerror})"
        ) from None


def run(env: Mapping[str, str]) -> int:
    import uvicorn  # imported here: the other subcommands do not need it

    try:
        config = load(env)
        _check_state_dir(config)
    except ConfigError as err:
        print(f"metering-sidecar run: {err}", flush=True, file=sys.stderr)
        return 2
    logs.setup(config.log_format, config.log_level)
    for warning in aws.pod_identity_warnings(env):
        log.warning(warning)
    try:
        region, source = resolve_region(env)
    except RegionError as err:
        log.error("no Region: %s", err)
        return 2
    if not config.loopback:
        log.warning(
            "the API listens on %s, not on loopback: anything that can reach this address can ask it",
            config.host,
        )
    log.info(
        "starting",
        extra={
            "product_code": config.product_code,
            "region": region,
            "region_source": source,
            "dimensions": list(config.dimensions),
            "listen": f"{config.host}:{config.port}",
        },
    )

    from sidecar.api import create_app

    stop = threading.Event()
    metrics = Metrics()
    service = EntitlementService(
        config,
        Registrar(config, region),
        clock=SystemClock(),
        wait=stop.wait,
        metrics=metrics,
        backoff=Backoff(initial=config.retry_initial_delay),
    )
    app = create_app(service, metrics, config.api_token)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    registering = threading.Thread(target=service.register_at_start, name="register", daemon=True)

    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours makes that a
    # clean exit (status 0) instead of death by signal.
    caught: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    registering.start()
    try:
        server.run()
    finally:
        stop.set()
        registering.join(timeout=5)
    log.info("stopped", extra={"signal": caught[0] if caught else None})
    return 0 if server.started else 1
