"""`metering-sidecar run`: wires configuration, boto3, entitlement, metering and the API, and runs them.

Lifecycle: the API comes up at once (so probes answer); RegisterUsage runs in a background thread, and
the metering loop in another. On SIGTERM or SIGINT, uvicorn stops taking requests and finishes those in
flight; then the sidecar seals the current partial hour (the pod's last record) and sends what is
unsent, within METERING_SHUTDOWN_GRACE, and exits 0.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from sidecar import aws, logs
from sidecar.allocations import hour_start
from sidecar.clock import Clock, FileOffsetClock, SystemClock
from sidecar.config import Config, ConfigError, load
from sidecar.entitlement import EntitlementService
from sidecar.metrics import Metrics
from sidecar.region import RegionError, resolve_region
from sidecar.retry import Backoff

log = logging.getLogger("sidecar.run")


class AwsCalls:
    """The sidecar's calls to AWS. The boto3 client is made on first use, inside the retry policy, so that
    a credential endpoint that is not up yet is retried like any other transient failure."""

    def __init__(self, config: Config, region: str, clock: Clock) -> None:
        self.config = config
        self.region = region
        self._clock = clock
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

    def register(self, nonce: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client().register_usage(
            ProductCode=self.config.product_code, PublicKeyVersion=self.config.public_key_version, Nonce=nonce
        )
        return result

    def meter(self, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.client().meter_usage(**params)
        return result

    def dry_run(self) -> None:
        self.client().meter_usage(
            ProductCode=self.config.product_code,
            # A few minutes back: inside AWS's 6-hour window, yet never "in the future" for a pod whose
            # clock runs a little ahead of AWS's.
            Timestamp=int(self._clock.now()) - 300,
            UsageDimension=self.config.dimensions[0],
            UsageQuantity=0,
            DryRun=True,
        )


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
    clock: Clock = FileOffsetClock(config.fake_clock_file) if config.fake_clock_file else SystemClock()
    if config.fake_clock_file:
        log.warning(
            "METERING_FAKE_CLOCK_FILE is set: time comes from %s (testing only)", config.fake_clock_file
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
    calls = AwsCalls(config, region, clock)
    service = EntitlementService(
        config,
        calls.register,
        clock=clock,
        wait=stop.wait,
        metrics=metrics,
        backoff=Backoff(initial=config.retry_initial_delay, maximum=config.retry_max_delay),
        dry_run=calls.dry_run if config.dimensions else None,
    )
    meter = None
    usage = None
    if config.dimensions:
        from sidecar.ledger import Ledger
        from sidecar.meter import Meter, MeterSettings
        from sidecar.usage import UsageService

        ledger = Ledger(config.state_dir / "ledger.db")
        settings = MeterSettings(
            product_code=config.product_code,
            dimensions=config.dimensions,
            send_spread=config.send_spread,
            send_zero_hours=config.send_zero_hours,
            heartbeat_dimension=config.heartbeat_dimension,
            heartbeat_quantity=config.heartbeat_quantity,
            tick=config.tick,
        )
        meter = Meter(
            settings,
            ledger,
            calls.meter,
            clock=clock,
            metrics=metrics,
            backoff=Backoff(initial=config.retry_initial_delay * 5, maximum=config.retry_max_delay),
            rng=random.Random(),
        )
        usage = UsageService(ledger, meter, service, clock, metrics)
    app = create_app(service, metrics, config.api_token, usage)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http="httptools",  # a dependency: C parsing, half h11's cost per request (bench/results.md)
            proxy_headers=False,  # the API refuses proxied requests (api.Guard): nothing to rewrite
        )
    )
    threads = [threading.Thread(target=service.register_at_start, name="register", daemon=True)]
    if meter is not None:
        threads.append(threading.Thread(target=meter.run, args=(stop.wait,), name="meter", daemon=True))

    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours makes that a
    # clean exit (status 0) instead of death by signal. The first signal starts the grace period.
    caught: list[tuple[int, float]] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, time.monotonic()))

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    probes = None
    if config.probe_listen is not None:
        from sidecar.probes import ProbeServer

        try:
            probes = ProbeServer(*config.probe_listen, service.snapshot)
        except OSError as err:
            log.error("cannot listen for probes on %s:%d: %s", *config.probe_listen, err)
            return 2
        probes.start()
        log.info(
            "probe listener (/healthz, /readyz only)",
            extra={"probe_listen": f"{config.probe_listen[0]}:{config.probe_listen[1]}"},
        )
    for thread in threads:
        thread.start()
    # Everything made at start-up (modules, boto3's service model) lives as long as the process: keep it
    # out of the garbage collector's way, so collections scan only what requests create (bench/results.md).
    gc.freeze()
    begun = time.monotonic()
    try:
        server.run()
    finally:
        stop.set()
        if probes is not None:
            probes.stop()
        if usage is not None:
            usage.accepting = False
        for thread in threads:
            thread.join(timeout=5)
    unsent = 0
    if meter is not None:
        # The grace period counts from the signal (uvicorn's own shutdown already used some of it).
        signalled = caught[0][1] if caught else begun
        left = max(1.0, config.shutdown_grace - (time.monotonic() - signalled))
        last_hour = hour_start(clock.now())
        unsent = meter.flush(clock.now() + left, threading.Event().wait)
        log.info(
            "final flush done" if not unsent else "final flush left records unsent; they stay in the ledger",
            extra={"unsent_records": unsent, "last_hour": last_hour},
        )
        meter.ledger.close()
    log.info("stopped", extra={"signal": caught[0][0] if caught else None})
    return 0 if server.started else 1
