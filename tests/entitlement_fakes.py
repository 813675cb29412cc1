"""Shared by test_entitlement.py and test_api.py: a Config, RegisterUsage as a script, and injected time.

RegisterUsage answers with real PS256 tokens from an emulator Signer, or fails with the exceptions botocore
really raises (ClientError built the way botocore builds it, EndpointConnectionError, ...). Time is a
frozen SettableClock; waiting advances it at once and records how long the service asked to wait.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from sidecar.clock import SettableClock
from sidecar.config import Config
from sidecar.emulator.signer import Signer
from sidecar.entitlement import EntitlementService
from sidecar.metrics import Metrics
from sidecar.retry import Backoff
from sidecar.token import load_public_key

PRODUCT = "prod-sidecar-0001"
VERSION = 1
# 2026-11-26T10:30:00Z
T0 = 1795689000.0
IAT = 1795689000

# One answer of the fake RegisterUsage: raise it, return it, call it with the nonce for the response, or
# None for a good token.
Outcome = BaseException | dict[str, Any] | Callable[[str], dict[str, Any]] | None


@functools.cache
def stranger() -> Signer:
    """A second key pair: its tokens must never verify against the configured key."""
    return Signer.generate()


def client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    """A ClientError as botocore raises it for an AWS JSON error answer."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message or f"{code} from the test"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "RegisterUsage",
    )


def throttled() -> ClientError:
    return client_error("ThrottlingException", "Rate exceeded")


def internal_error() -> ClientError:
    return client_error("InternalServiceErrorException", "An internal error has occurred", status=500)


def unreachable() -> EndpointConnectionError:
    return EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")


def config(state_dir: Path, signer: Signer, **changes: Any) -> Config:
    settings: dict[str, Any] = {
        "product_code": PRODUCT,
        "public_key_version": VERSION,
        "public_keys": {VERSION: load_public_key(signer.public_pem())},
        "state_dir": state_dir,
        "register_deadline": 60.0,
    }
    settings.update(changes)
    return Config(**settings)


def token(signer: Signer, nonce: str, /, **claims: Any) -> str:
    """A RegisterUsage Signature with the claims AWS sends; keyword arguments override them."""
    body: dict[str, Any] = {"productCode": PRODUCT, "publicKeyVersion": VERSION, "nonce": nonce, "iat": IAT}
    body.update(claims)
    return signer.sign(body)


class FakeRegister:
    """RegisterUsage(nonce) as a script of outcomes; once the script runs out, a good token every time."""

    def __init__(self, signer: Signer, script: Iterable[Outcome] = ()) -> None:
        self.signer = signer
        self.nonces: list[str] = []  # one per call
        self._script: Iterator[Outcome] = iter(script)

    @property
    def calls(self) -> int:
        return len(self.nonces)

    def __call__(self, nonce: str) -> dict[str, Any]:
        self.nonces.append(nonce)
        outcome = next(self._script, None)
        if outcome is None:
            return {"Signature": token(self.signer, nonce)}
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return outcome(nonce)
        return outcome


def forever(make: Callable[[], BaseException]) -> Iterator[BaseException]:
    """A script that fails the same way on every call (a fresh exception each time, as botocore does)."""
    return (make() for _ in itertools.count())


@dataclass
class FakeTime:
    """A frozen clock, and a `wait` that moves it instead of sleeping. `stop_at` makes the Nth wait a stop."""

    clock: SettableClock = field(default_factory=lambda: SettableClock(T0, frozen=True))
    waits: list[float] = field(default_factory=list)
    stop_at: int | None = None
    on_wait: Callable[[float], None] = lambda seconds: None

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.on_wait(seconds)
        if self.stop_at is not None and len(self.waits) >= self.stop_at:
            return True
        self.clock.advance(seconds)
        return False


@dataclass
class Rig:
    service: EntitlementService
    register: FakeRegister
    time: FakeTime
    metrics: Metrics

    def gauge(self, state: str) -> float | None:
        return self.metrics.registry.get_sample_value("metering_entitlement_state", {"state": state})

    def register_calls(self, purpose: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "metering_register_usage_calls_total", {"purpose": purpose, "outcome": outcome}
        )
        return value or 0.0


def rig(
    cfg: Config,
    signer: Signer,
    script: Iterable[Outcome] = (),
    time: FakeTime | None = None,
) -> Rig:
    """An EntitlementService with a scripted RegisterUsage, injected time and a seeded backoff."""
    register = FakeRegister(signer, script)
    time = time or FakeTime()
    metrics = Metrics()
    service = EntitlementService(
        cfg,
        register,
        clock=time.clock,
        wait=time.wait,
        metrics=metrics,
        backoff=Backoff(initial=cfg.retry_initial_delay, rng=random.Random(7)),
    )
    return Rig(service, register, time, metrics)
