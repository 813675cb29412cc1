"""Entitlement at pod start: RegisterUsage with a fresh nonce, the token verified, and fail closed.

AWS: RegisterUsage is called "immediately at launch"; any error other than throttling means the container
must not run (reference/aws-metering-semantics.md §1.1, §1.4). We retry throttling, 5xx and the network for
up to 30 minutes (§1.5) and treat the rest as fatal, with a reason a buyer's SRE can act on. A fatal answer
is remembered in the state directory, so that a restarted container does not hammer RegisterUsage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sidecar import aws
from sidecar.clock import Clock, iso
from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.retry import Backoff, DeadlineExceeded, Stopped, retry_call
from sidecar.token import TokenError, verify_token

log = logging.getLogger("sidecar.entitlement")
DENIAL_FILE = "entitlement-denied.json"
ATTEST_CACHE_SIZE = 256

# What each fatal answer means for the buyer's SRE, and what to do (reference §1.4, §5.1, §7).
FATAL_REASONS = {
    "CustomerNotEntitledException": "the buyer's AWS account is not subscribed to this product in AWS Marketplace; "
    "subscribe to it, then restart the pod",
    "PlatformNotSupportedException": "AWS Marketplace refuses metering from here: the call must be signed by an EKS "
    "pod's IRSA role or an ECS task role, not a node or instance role, and must come from ECS or EKS",
    "InvalidRegionException": "RegisterUsage was sent to a different Region than the one the pod or task runs in; "
    "do not hard-code AWS_REGION, let EKS or ECS set it",
    "InvalidProductCodeException": "METERING_PRODUCT_CODE does not match the product published in AWS Marketplace "
    "(a seller configuration error)",
    "InvalidPublicKeyVersionException": "METERING_PUBLIC_KEY_VERSION is not a valid key version for this product "
    "(a seller configuration error)",
    "DisabledApiException": "the AWS Marketplace Metering API is disabled in this Region",
    "AccessDeniedException": "the pod's or task's IAM role may not call AWS Marketplace Metering; allow "
    "aws-marketplace:RegisterUsage and aws-marketplace:MeterUsage",
    "InvalidUsageDimensionException": "METERING_DIMENSIONS names a dimension this product does not have "
    "(a seller configuration error)",
    "InvalidEndpointRegionException": "MeterUsage was sent to a different Region than the one the pod or task runs "
    "in; do not hard-code AWS_REGION",
    "UnrecognizedClientException": "AWS did not recognise the credentials; check the IRSA role or task role",
    "NoCredentialsError": "no AWS credentials were found: on EKS annotate the ServiceAccount with "
    "eks.amazonaws.com/role-arn (IRSA); on ECS set a task role",
}


@dataclass(frozen=True)
class Entitlement:
    status: str  # pending | entitled | denied
    product_code: str
    public_key_version: int
    nonce: str | None = None
    signature: str | None = None
    registered_at: float | None = None
    reason: str | None = None
    reason_code: str | None = None
    attempts: int = 0


class AttestError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def fatal_reason(code: str, message: str) -> str:
    advice = FATAL_REASONS.get(code)
    return (
        f"RegisterUsage failed with {code}: {advice} (AWS said: {message})"
        if advice
        else (f"RegisterUsage failed with {code}: {message}")
    )


class EntitlementService:
    def __init__(
        self,
        config: Config,
        register: Callable[[str], dict[str, Any]],
        *,
        clock: Clock,
        wait: Callable[[float], bool],
        metrics: Metrics,
        backoff: Backoff | None = None,
        dry_run: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self._register = register  # nonce -> RegisterUsage response
        self._clock = clock
        self._wait = wait
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        # For custom-metered products, a DryRun MeterUsage checks the pod may meter (reference §2.4).
        self._dry_run = dry_run
        self._lock = threading.Lock()
        self._state = Entitlement("pending", config.product_code, config.public_key_version)
        self._attest_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._attest_tokens = max(1.0, config.attest_rate)
        self._attest_last = clock.now()

    # --- state -----------------------------------------------------------------------------------

    def snapshot(self) -> Entitlement:
        with self._lock:
            return self._state

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)
            status = self._state.status
        self._metrics.set_entitlement(status)

    def _denial_path(self) -> Path:
        return self.config.state_dir / DENIAL_FILE

    def _deny(self, code: str, reason: str) -> None:
        self._set(status="denied", reason=reason, reason_code=code)
        log.error("entitlement denied: %s", reason, extra={"code": code})
        if code == "RetryDeadlineExceeded":
            return  # a network outage, not an answer from AWS: a restarted container may try again at once
        record = {"code": code, "reason": reason, "at": self._clock.now()}
        try:
            self._denial_path().write_text(json.dumps(record))
        except OSError as err:
            log.warning("could not remember the denial in %s: %s", self._denial_path(), err)

    def _cooldown(self) -> float:
        """Seconds still to wait before asking AWS again, after an earlier container in this pod was denied."""
        try:
            record = json.loads(self._denial_path().read_text())
            remaining = float(record["at"]) + self.config.denied_cooldown - self._clock.now()
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring an unreadable %s: %s", self._denial_path(), err)
            return 0.0
        if remaining > 0:
            reason = f"{record.get('reason')} (an earlier start in this pod was refused; asking AWS again in {remaining:.0f} s)"
            self._set(status="denied", reason=reason, reason_code=str(record.get("code")))
        return max(0.0, remaining)

    # --- registration at start -------------------------------------------------------------------

    def register_at_start(self) -> Entitlement:
        """Runs until entitled, denied, or stopped. Never raises for AWS answers."""
        cooldown = self._cooldown()
        if cooldown > 0:
            log.warning("waiting %.0f s before calling RegisterUsage again after an earlier denial", cooldown)
            if self._wait(cooldown):
                return self.snapshot()
            self._set(status="pending", reason=None, reason_code=None)
        nonce = secrets.token_urlsafe(48)  # AWS allows up to 255 characters (reference §1.2)
        attempts = 0

        def attempt() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            self._set(attempts=attempts)
            return self._register(nonce)

        def on_retry(exc: BaseException, number: int, delay: float) -> None:
            code = aws.error_code(exc)
            self._metrics.register_calls.labels(purpose="start", outcome=code).inc()
            self._set(
                reason=f"retrying RegisterUsage after {code}: {aws.error_message(exc)}", reason_code=code
            )
            log.warning(
                "RegisterUsage attempt %d failed with %s; retrying in %.1f s",
                number,
                code,
                delay,
                extra={"code": code, "attempt": number},
            )

        try:
            response = retry_call(
                attempt,
                is_retryable=aws.is_retryable,
                deadline=self.config.register_deadline,
                backoff=self._backoff,
                clock=self._clock,
                wait=self._wait,
                on_retry=on_retry,
            )
        except Stopped:
            return self.snapshot()
        except DeadlineExceeded as err:
            code = aws.error_code(err.last)
            self._metrics.register_calls.labels(purpose="start", outcome=code).inc()
            self._deny(
                "RetryDeadlineExceeded",
                f"RegisterUsage kept failing for {self.config.register_deadline:.0f} s "
                f"({err.attempts} attempts; last: {code}: {aws.error_message(err.last)}); check the network path "
                "to the AWS Marketplace Metering endpoint and AWS's service health",
            )
            return self.snapshot()
        except Exception as exc:
            code = aws.error_code(exc)
            self._metrics.register_calls.labels(purpose="start", outcome=code).inc()
            self._deny(code, fatal_reason(code, aws.error_message(exc)))
            return self.snapshot()
        self._metrics.register_calls.labels(purpose="start", outcome="ok").inc()
        return self._accept(response, nonce)

    def _accept(self, response: dict[str, Any], nonce: str) -> Entitlement:
        token = str(response.get("Signature", ""))
        try:
            verify_token(
                token,
                self.config.public_keys,
                product_code=self.config.product_code,
                public_key_version=self.config.public_key_version,
                nonce=nonce,
            )
        except TokenError as err:
            self._deny(
                f"TokenInvalid:{err.check}",
                f"the RegisterUsage token failed verification ({err.check}): "
                f"{err.message}. Check METERING_PUBLIC_KEY against the key AWS Marketplace gave you",
            )
            return self.snapshot()
        rotation = response.get("PublicKeyRotationTimestamp")
        if rotation is not None:
            when = rotation.isoformat() if hasattr(rotation, "isoformat") else str(rotation)
            log.warning(
                "AWS says public key version %d has expired (rotation at %s); ask AWS Marketplace for the new "
                "key and set METERING_PUBLIC_KEY_VERSION and METERING_PUBLIC_KEY",
                self.config.public_key_version,
                when,
                extra={"public_key_rotation": when},
            )
        if self._dry_run is not None and not self._dry_run_ok():
            return self.snapshot()
        self._set(
            status="entitled",
            nonce=nonce,
            signature=token,
            registered_at=self._clock.now(),
            reason=None,
            reason_code=None,
        )
        with contextlib.suppress(OSError):
            self._denial_path().unlink(missing_ok=True)
        log.info(
            "entitled: RegisterUsage token verified",
            extra={
                "product_code": self.config.product_code,
                "public_key_version": self.config.public_key_version,
            },
        )
        return self.snapshot()

    def _dry_run_ok(self) -> bool:
        """A DryRun MeterUsage: for custom-metered products MeterUsage is the entitlement check, and a
        zero record would block the hour, so we never send one (reference §2.4, §7.5)."""

        def attempt() -> None:
            assert self._dry_run is not None
            try:
                self._dry_run()
            except Exception as exc:
                # The model says a permitted DryRun "returns DryRunOperation"; the shape is unconfirmed (§8).
                if aws.error_code(exc) != "DryRunOperation":
                    raise

        try:
            retry_call(
                attempt,
                is_retryable=aws.is_retryable,
                deadline=self.config.register_deadline,
                backoff=self._backoff,
                clock=self._clock,
                wait=self._wait,
            )
        except Stopped:
            return False
        except DeadlineExceeded as err:
            self._deny("RetryDeadlineExceeded", f"the DryRun MeterUsage kept failing: {err}")
            return False
        except Exception as exc:
            code = aws.error_code(exc)
            reason = fatal_reason(code, aws.error_message(exc)).replace(
                "RegisterUsage", "the DryRun MeterUsage", 1
            )
            self._deny(code, reason)
            return False
        log.info("DryRun MeterUsage succeeded: this pod may meter usage")
        return True

    # --- attest: RegisterUsage with the product's own nonce --------------------------------------

    def _take_attest_token(self) -> float:
        """Token bucket; returns 0 when a call may go now, else the seconds to wait."""
        now = self._clock.now()
        rate = self.config.attest_rate
        burst = max(1.0, rate)
        self._attest_tokens = min(burst, self._attest_tokens + (now - self._attest_last) * rate)
        self._attest_last = now
        if self._attest_tokens >= 1.0:
            self._attest_tokens -= 1.0
            return 0.0
        return (1.0 - self._attest_tokens) / rate

    def attest(self, nonce: str) -> dict[str, Any]:
        state = self.snapshot()
        if state.status != "entitled":
            self._metrics.attest_requests.labels(result="refused").inc()
            raise AttestError(
                503,
                "not_entitled",
                f"entitlement is {state.status}" + (f": {state.reason}" if state.reason else ""),
            )
        with self._lock:
            cached = self._attest_cache.get(nonce)
            if cached is not None:
                self._attest_cache.move_to_end(nonce)
                self._metrics.attest_requests.labels(result="cached").inc()
                return cached
            wait = self._take_attest_token()
        if wait > 0:
            self._metrics.attest_requests.labels(result="rate_limited").inc()
            raise AttestError(
                429,
                "rate_limited",
                f"attest is limited to {self.config.attest_rate:g} RegisterUsage "
                f"calls per second, to stay under AWS's account quota; retry in {wait:.2f} s",
                wait,
            )
        try:
            response = self._register(nonce)
        except Exception as exc:
            code = aws.error_code(exc)
            self._metrics.register_calls.labels(purpose="attest", outcome=code).inc()
            self._metrics.attest_requests.labels(result="error").inc()
            status = 503 if aws.is_retryable(exc) else 502
            raise AttestError(
                status, "aws_error", f"RegisterUsage failed with {code}: {aws.error_message(exc)}"
            ) from exc
        self._metrics.register_calls.labels(purpose="attest", outcome="ok").inc()
        answer = {
            "signature": str(response.get("Signature", "")),
            "nonce": nonce,
            "product_code": self.config.product_code,
            "public_key_version": self.config.public_key_version,
        }
        with self._lock:
            self._attest_cache[nonce] = answer
            while len(self._attest_cache) > ATTEST_CACHE_SIZE:
                self._attest_cache.popitem(last=False)
        self._metrics.attest_requests.labels(result="fresh").inc()
        return answer


def as_json(state: Entitlement) -> dict[str, Any]:
    data = asdict(state)
    data.pop("reason_code")
    data.pop("attempts")
    if data["registered_at"] is not None:
        data["registered_at"] = iso(data["registered_at"])
    if state.status != "denied":
        data.pop("reason")
    return data
