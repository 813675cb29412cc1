"""Retries as policy: which errors (aws.is_retryable), what backoff, what deadline. No loops elsewhere.

Waiting goes through an injectable `wait(seconds) -> stopped` so that shutdown interrupts it and tests
turn it off; time goes through an injectable clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sidecar.clock import Clock

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d = initial * 2**n, capped."""

    initial: float = 1.0
    maximum: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        jitter: float = self.rng.uniform(0, ceiling / 2)
        return ceiling / 2 + jitter


class DeadlineExceeded(Exception):
    def __init__(self, last: BaseException, attempts: int, seconds: float) -> None:
        super().__init__(f"still failing after {attempts} attempts over {seconds:.0f} s; last error: {last}")
        self.last = last
        self.attempts = attempts


class Stopped(Exception):
    """Shutdown was requested while waiting to retry."""


def retry_call(
    fn: Callable[[], T],
    *,
    is_retryable: Callable[[BaseException], bool],
    deadline: float,
    backoff: Backoff,
    clock: Clock,
    wait: Callable[[float], bool],
    on_retry: Callable[[BaseException, int, float], None] = lambda exc, attempt, delay: None,
) -> T:
    """Call `fn` until it succeeds, fails for good, or retryable failures outlast `deadline` seconds."""
    start = clock.now()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            elapsed = clock.now() - start
            if elapsed >= deadline:
                raise DeadlineExceeded(exc, attempt, elapsed) from exc
            delay = min(backoff.delay(attempt), deadline - elapsed)
            on_retry(exc, attempt, delay)
            if wait(delay):
                raise Stopped from exc
