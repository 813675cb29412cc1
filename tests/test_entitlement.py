"""Entitlement at pod start, attest, the retry policy and the one place that classifies AWS errors.

RegisterUsage is a script (tests/entitlement_fakes.py) answering with real PS256 tokens or with the
exceptions botocore raises; time is a frozen clock that the injected `wait` moves, so nothing sleeps.
"""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    CredentialRetrievalError,
    NoCredentialsError,
    ReadTimeoutError,
)
from entitlement_fakes import (
    PRODUCT,
    T0,
    VERSION,
    FakeTime,
    Rig,
    client_error,
    config,
    forever,
    internal_error,
    rig,
    stranger,
    throttled,
    token,
    unreachable,
)

from sidecar import aws
from sidecar.clock import SettableClock
from sidecar.emulator.signer import Signer
from sidecar.entitlement import DENIAL_FILE, AttestError, as_json
from sidecar.retry import Backoff, DeadlineExceeded, Stopped, retry_call
from sidecar.token import load_public_key, verify_token

URL = "http://127.0.0.1:9/"


def started(
    tmp_path: Path, signer: Signer, script: Any = (), time: FakeTime | None = None, **changes: Any
) -> Rig:
    """A service that has run register_at_start once."""
    r = rig(config(tmp_path, signer, **changes), signer, script, time)
    r.service.register_at_start()
    return r


def verifies(signer: Signer, signature: str, nonce: str) -> None:
    claims = verify_token(
        signature,
        {VERSION: load_public_key(signer.public_pem())},
        product_code=PRODUCT,
        public_key_version=VERSION,
        nonce=nonce,
    )
    assert claims.nonce == nonce


def attest_error(r: Rig, nonce: str) -> AttestError:
    with pytest.raises(AttestError) as caught:
        r.service.attest(nonce)
    return caught.value


# --- register_at_start ------------------------------------------------------------------------------


def test_entitled_on_first_try(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer)
    state = r.service.snapshot()

    assert state.status == "entitled"
    assert state.attempts == 1 and r.register.calls == 1
    assert state.nonce == r.register.nonces[0]
    assert state.signature is not None
    verifies(signer, state.signature, state.nonce)
    assert state.registered_at == T0
    assert state.reason is None and state.reason_code is None
    assert r.time.waits == []
    assert (r.gauge("entitled"), r.gauge("pending"), r.gauge("denied")) == (1.0, 0.0, 0.0)
    assert r.register_calls("start", "ok") == 1
    assert not (tmp_path / DENIAL_FILE).exists()


def test_the_nonce_is_fresh_for_each_start(tmp_path: Path, signer: Signer) -> None:
    first, second = started(tmp_path, signer), started(tmp_path, signer)
    assert first.register.nonces[0] != second.register.nonces[0]
    # AWS allows up to 255 characters (reference §1.2); long enough not to be guessed.
    assert 32 <= len(first.register.nonces[0]) <= 255


def test_throttled_three_times_then_entitled(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, [throttled(), throttled(), throttled()], retry_initial_delay=1.0)
    state = r.service.snapshot()

    assert state.status == "entitled"
    assert state.attempts == 4 and r.register.calls == 4
    assert len(set(r.register.nonces)) == 1, "one registration, retried with the same nonce"
    # Jittered exponential backoff: each wait in [d/2, d] with d = 1, 2, 4 s.
    assert len(r.time.waits) == 3
    for wait, ceiling in zip(r.time.waits, (1.0, 2.0, 4.0), strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert state.registered_at == pytest.approx(T0 + sum(r.time.waits))
    assert r.register_calls("start", "ThrottlingException") == 3
    assert r.register_calls("start", "ok") == 1


@pytest.mark.parametrize(
    "failure",
    [
        internal_error,
        unreachable,
        lambda: client_error("ServiceUnavailable", "Service Unavailable", status=503),
        lambda: ConnectionClosedError(endpoint_url=URL),
        lambda: CredentialRetrievalError(provider="container-role", error_msg="timed out"),
    ],
    ids=["500", "connection", "503", "closed", "credentials"],
)
def test_transient_failures_are_retried(tmp_path: Path, signer: Signer, failure: Any) -> None:
    r = started(tmp_path, signer, [failure()])
    assert r.service.snapshot().status == "entitled"
    assert r.register.calls == 2 and len(r.time.waits) == 1


def test_500s_outlasting_the_deadline_deny(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, forever(internal_error), register_deadline=10.0)
    state = r.service.snapshot()

    assert state.status == "denied"
    assert state.reason_code == "RetryDeadlineExceeded"
    assert state.reason is not None
    assert "InternalServiceErrorException" in state.reason and "network path" in state.reason
    # The last wait is cut to the deadline, then one more attempt, then no more.
    assert sum(r.time.waits) == pytest.approx(10.0)
    assert r.register.calls == len(r.time.waits) + 1 == state.attempts
    assert r.gauge("denied") == 1.0
    assert r.register_calls("start", "InternalServiceErrorException") == r.register.calls
    # A network outage is not an answer from AWS: no cooldown for the next container.
    assert not (tmp_path / DENIAL_FILE).exists()


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("CustomerNotEntitledException", "subscribe"),
        ("PlatformNotSupportedException", "IRSA role or an ECS task role"),
        ("InvalidRegionException", "do not hard-code AWS_REGION"),
        ("InvalidProductCodeException", "METERING_PRODUCT_CODE"),
        ("InvalidPublicKeyVersionException", "METERING_PUBLIC_KEY_VERSION"),
        ("AccessDeniedException", "aws-marketplace:RegisterUsage"),
    ],
)
def test_fatal_answers_deny_at_once(tmp_path: Path, signer: Signer, code: str, advice: str) -> None:
    r = started(tmp_path, signer, forever(lambda: client_error(code, "the words AWS used")))
    state = r.service.snapshot()

    assert r.register.calls == 1 and r.time.waits == []
    assert state.status == "denied" and state.reason_code == code
    assert state.reason is not None
    assert code in state.reason and advice in state.reason and "the words AWS used" in state.reason
    assert r.register_calls("start", code) == 1
    assert json.loads((tmp_path / DENIAL_FILE).read_text())["code"] == code


def test_no_credentials_is_fatal_and_says_how_to_get_them(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, [NoCredentialsError()])
    state = r.service.snapshot()
    assert r.register.calls == 1
    assert state.status == "denied" and state.reason_code == "NoCredentialsError"
    assert state.reason is not None and "eks.amazonaws.com/role-arn" in state.reason


@pytest.mark.parametrize(
    ("answer", "check"),
    [
        (lambda nonce: {"Signature": token(stranger(), nonce)}, "signature"),
        (lambda nonce: {"Signature": "not.a-token"}, "format"),
        (lambda nonce: {}, "format"),
    ],
    ids=["wrong-key", "garbage", "no-signature"],
)
def test_a_token_that_does_not_verify_denies(tmp_path: Path, signer: Signer, answer: Any, check: str) -> None:
    r = started(tmp_path, signer, [answer])
    state = r.service.snapshot()
    assert r.register.calls == 1
    assert state.status == "denied" and state.reason_code == f"TokenInvalid:{check}"
    assert state.reason is not None and "METERING_PUBLIC_KEY" in state.reason
    assert state.signature is None


@pytest.mark.parametrize(
    ("claims", "check"),
    [
        ({"nonce": "a-nonce-from-another-request"}, "nonce"),
        ({"productCode": "someone-elses-product"}, "product_code"),
        ({"publicKeyVersion": 2}, "public_key_version"),
    ],
)
def test_a_token_for_another_request_denies(
    tmp_path: Path, signer: Signer, claims: dict[str, Any], check: str
) -> None:
    r = started(tmp_path, signer, [lambda nonce: {"Signature": token(signer, nonce, **claims)}])
    assert r.service.snapshot().reason_code == f"TokenInvalid:{check}"


def test_a_denial_makes_the_next_start_wait_for_the_cooldown(tmp_path: Path, signer: Signer) -> None:
    time = FakeTime()
    first = started(
        tmp_path, signer, [client_error("CustomerNotEntitledException")], time, denied_cooldown=300.0
    )
    assert first.service.snapshot().status == "denied"
    assert json.loads((tmp_path / DENIAL_FILE).read_text())["at"] == T0

    # The container restarts 100 s later, in the same pod (same state dir, same clock).
    time.clock.advance(100)
    calls_while_waiting: list[int] = []
    states_while_waiting: list[str] = []
    later = FakeTime(clock=time.clock)

    def watch(seconds: float) -> None:
        calls_while_waiting.append(second.register.calls)
        states_while_waiting.append(second.service.snapshot().status)

    later.on_wait = watch
    second = rig(config(tmp_path, signer, denied_cooldown=300.0), signer, time=later)
    second.service.register_at_start()

    assert later.waits == [200.0]
    assert calls_while_waiting == [0], "RegisterUsage must not be called during the cooldown"
    assert states_while_waiting == ["denied"]
    assert second.register.calls == 1, "after the cooldown it asks AWS again"
    assert second.service.snapshot().status == "entitled"
    assert not (tmp_path / DENIAL_FILE).exists(), "an entitled start forgets the denial"


def test_while_cooling_down_the_reason_is_the_earlier_denial(tmp_path: Path, signer: Signer) -> None:
    started(tmp_path, signer, [client_error("CustomerNotEntitledException")])
    # Stopped during the cooldown wait: still denied, with the earlier reason, and AWS not asked.
    r = started(tmp_path, signer, time=FakeTime(stop_at=1))
    state = r.service.snapshot()
    assert r.register.calls == 0
    assert state.status == "denied" and state.reason_code == "CustomerNotEntitledException"
    assert state.reason is not None
    assert "subscribe" in state.reason and "asking AWS again in 300 s" in state.reason


def test_after_the_cooldown_it_calls_at_once(tmp_path: Path, signer: Signer) -> None:
    time = FakeTime()
    started(tmp_path, signer, [client_error("CustomerNotEntitledException")], time, denied_cooldown=300.0)
    time.clock.advance(301)
    r = started(tmp_path, signer, time=FakeTime(clock=time.clock), denied_cooldown=300.0)
    assert r.time.waits == [] and r.register.calls == 1
    assert r.service.snapshot().status == "entitled"


def test_an_unreadable_denial_file_is_ignored(tmp_path: Path, signer: Signer) -> None:
    (tmp_path / DENIAL_FILE).write_text("{not json")
    r = started(tmp_path, signer)
    assert r.time.waits == [] and r.service.snapshot().status == "entitled"


def test_stop_during_a_retry_wait_returns_without_denial(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, forever(throttled), FakeTime(stop_at=2))
    state = r.service.snapshot()
    assert r.register.calls == 2
    assert state.status == "pending"
    assert state.reason_code == "ThrottlingException"
    assert state.reason is not None and state.reason.startswith("retrying RegisterUsage")
    assert not (tmp_path / DENIAL_FILE).exists()
    assert r.gauge("pending") == 1.0


def test_a_key_rotation_timestamp_is_logged(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    rotation = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)

    def answer(nonce: str) -> dict[str, Any]:
        return {"Signature": token(signer, nonce), "PublicKeyRotationTimestamp": rotation}

    with caplog.at_level(logging.WARNING, logger="sidecar.entitlement"):
        r = started(tmp_path, signer, [answer])
    assert r.service.snapshot().status == "entitled"
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("2026-12-01" in w and "METERING_PUBLIC_KEY_VERSION" in w for w in warnings), warnings


def test_as_json_shows_the_reason_only_when_denied(tmp_path: Path, signer: Signer) -> None:
    entitled = as_json(started(tmp_path, signer).service.snapshot())
    assert "reason" not in entitled and entitled["registered_at"] == "2026-11-26T10:30:00Z"
    denied = as_json(
        started(tmp_path, signer, [client_error("CustomerNotEntitledException")]).service.snapshot()
    )
    assert denied["status"] == "denied" and "subscribe" in denied["reason"]
    assert {"reason_code", "attempts"}.isdisjoint(denied)


# --- attest -----------------------------------------------------------------------------------------


def test_attest_is_refused_before_entitlement(tmp_path: Path, signer: Signer) -> None:
    r = rig(config(tmp_path, signer), signer)
    err = attest_error(r, "product-nonce")
    assert (err.status, err.code) == (503, "not_entitled")
    assert r.register.calls == 0


def test_attest_is_refused_when_denied(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, [client_error("CustomerNotEntitledException")])
    err = attest_error(r, "product-nonce")
    assert (err.status, err.code) == (503, "not_entitled")
    assert "denied" in err.message and "subscribe" in err.message
    assert r.register.calls == 1


def test_attest_calls_register_usage_with_the_callers_nonce(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer)
    answer = r.service.attest("product-nonce-1")

    assert r.register.nonces == [r.service.snapshot().nonce, "product-nonce-1"]
    assert answer["nonce"] == "product-nonce-1"
    assert answer["product_code"] == PRODUCT and answer["public_key_version"] == VERSION
    verifies(signer, answer["signature"], "product-nonce-1")
    assert r.register_calls("attest", "ok") == 1


def test_attest_caches_by_nonce(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer)
    first = r.service.attest("product-nonce-1")
    again = r.service.attest("product-nonce-1")
    assert again == first
    assert r.register.calls == 2, "the second answer for the same nonce comes from the cache"


def test_attest_is_rate_limited(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, attest_rate=1.0)
    r.service.attest("n-1")
    err = attest_error(r, "n-2")
    assert (err.status, err.code) == (429, "rate_limited")
    assert err.retry_after == pytest.approx(1.0)
    assert r.register.calls == 2, "a limited call does not reach AWS"
    # The clock is frozen: still limited; a cached nonce is still served.
    assert attest_error(r, "n-3").status == 429
    assert r.service.attest("n-1")["nonce"] == "n-1"

    r.time.clock.advance(1.0)
    assert r.service.attest("n-2")["nonce"] == "n-2"
    assert r.register.calls == 3


def test_attest_allows_a_burst_of_the_rate(tmp_path: Path, signer: Signer) -> None:
    r = started(tmp_path, signer, attest_rate=4.0)
    for n in range(4):
        r.service.attest(f"n-{n}")
    err = attest_error(r, "n-4")
    assert err.status == 429 and err.retry_after == pytest.approx(0.25)
    r.time.clock.advance(0.25)
    r.service.attest("n-4")


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (throttled, 503),
        (internal_error, 503),
        (unreachable, 503),
        (lambda: client_error("CustomerNotEntitledException"), 502),
        (lambda: client_error("InvalidPublicKeyVersionException"), 502),
    ],
    ids=["throttled", "500", "connection", "not-entitled", "key-version"],
)
def test_attest_maps_aws_errors(tmp_path: Path, signer: Signer, failure: Any, status: int) -> None:
    r = started(tmp_path, signer, [None, failure()], attest_rate=10.0)
    err = attest_error(r, "n-1")
    assert (err.status, err.code) == (status, "aws_error")
    assert aws.error_code(failure()) in err.message
    # A failure is not cached: the same nonce asks AWS again.
    assert r.service.attest("n-1")["nonce"] == "n-1"
    assert r.register.calls == 3
    assert r.service.snapshot().status == "entitled", "an attest failure does not change entitlement"


# --- sidecar.retry ----------------------------------------------------------------------------------


class Flaky:
    """Fails with the given exceptions in order, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def retry(fn: Flaky, time: FakeTime, deadline: float = 100.0, **kwargs: Any) -> str:
    return retry_call(
        fn,
        is_retryable=aws.is_retryable,
        deadline=deadline,
        backoff=Backoff(initial=1.0, maximum=8.0, rng=random.Random(1)),
        clock=time.clock,
        wait=time.wait,
        **kwargs,
    )


def test_retry_call_returns_at_once_on_success() -> None:
    time = FakeTime()
    assert retry(Flaky(), time) == "done"
    assert time.waits == []


def test_retry_call_retries_retryable_errors() -> None:
    time, seen = FakeTime(), []
    fn = Flaky(throttled(), unreachable())
    result = retry(
        fn, time, on_retry=lambda exc, attempt, delay: seen.append((aws.error_code(exc), attempt, delay))
    )
    assert result == "done" and fn.calls == 3
    assert [(code, attempt) for code, attempt, _ in seen] == [
        ("ThrottlingException", 1),
        ("EndpointConnectionError", 2),
    ]
    assert [delay for _, _, delay in seen] == time.waits


def test_retry_call_raises_a_fatal_error_unchanged() -> None:
    time, fatal = FakeTime(), client_error("CustomerNotEntitledException")
    fn = Flaky(fatal)
    with pytest.raises(type(fatal)) as caught:
        retry(fn, time)
    assert caught.value is fatal
    assert fn.calls == 1 and time.waits == []


def test_retry_call_gives_up_at_the_deadline() -> None:
    time = FakeTime()
    fn = Flaky(*(internal_error() for _ in range(100)))
    with pytest.raises(DeadlineExceeded) as caught:
        retry(fn, time, deadline=30.0)
    assert aws.error_code(caught.value.last) == "InternalServiceErrorException"
    assert caught.value.attempts == fn.calls == len(time.waits) + 1
    assert sum(time.waits) == pytest.approx(30.0)
    assert max(time.waits) <= 8.0, "the backoff maximum caps every wait"
    assert f"after {fn.calls} attempts" in str(caught.value)


def test_retry_call_with_no_deadline_left_does_not_wait() -> None:
    time = FakeTime()
    with pytest.raises(DeadlineExceeded) as caught:
        retry(Flaky(throttled()), time, deadline=0.0)
    assert caught.value.attempts == 1 and time.waits == []


def test_retry_call_stops_when_the_wait_is_interrupted() -> None:
    time = FakeTime(stop_at=1)
    fn = Flaky(throttled(), throttled())
    with pytest.raises(Stopped) as caught:
        retry(fn, time)
    assert fn.calls == 1
    assert caught.value.__cause__ is not None
    assert aws.error_code(caught.value.__cause__) == "ThrottlingException"


def test_retry_call_uses_the_injected_clock() -> None:
    # A clock that jumps past the deadline during the first wait: the next failure is the last.
    clock = SettableClock(T0, frozen=True)
    time = FakeTime(clock=clock, on_wait=lambda seconds: clock.advance(1000))
    fn = Flaky(throttled(), throttled(), throttled())
    with pytest.raises(DeadlineExceeded):
        retry(fn, time, deadline=60.0)
    assert fn.calls == 2


@pytest.mark.parametrize("seed", range(20))
def test_backoff_stays_within_its_bounds(seed: int) -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, rng=random.Random(seed))
    for attempt in range(1, 12):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= backoff.delay(attempt) <= ceiling
    assert backoff.delay(0) <= 0.5 and backoff.delay(-3) <= 0.5
    assert backoff.delay(200) <= 10.0


def test_backoff_is_jittered() -> None:
    backoff = Backoff(initial=4.0, rng=random.Random(3))
    assert len({backoff.delay(1) for _ in range(10)}) > 1


# --- sidecar.aws: one place classifies errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (throttled(), "ThrottlingException"),
        (internal_error(), "InternalServiceErrorException"),
        (client_error("SomethingNew", "Service Unavailable", status=503), "SomethingNew"),
        (unreachable(), "EndpointConnectionError"),
        (ConnectionClosedError(endpoint_url=URL), "ConnectionClosedError"),
        (ReadTimeoutError(endpoint_url=URL), "ReadTimeoutError"),
        (
            CredentialRetrievalError(provider="container-role", error_msg="timed out"),
            "CredentialRetrievalError",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_retryable(exc: BaseException, code: str) -> None:
    assert aws.is_retryable(exc)
    assert aws.error_code(exc) == code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (client_error("CustomerNotEntitledException"), "CustomerNotEntitledException"),
        (client_error("AccessDeniedException", status=403), "AccessDeniedException"),
        (NoCredentialsError(), "NoCredentialsError"),
        (ValueError("a bug, not AWS"), "ValueError"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_not_retryable(exc: BaseException, code: str) -> None:
    assert not aws.is_retryable(exc)
    assert aws.error_code(exc) == code


def test_error_message_is_aws_message_for_client_errors() -> None:
    assert aws.error_message(client_error("ThrottlingException", "Rate exceeded")) == "Rate exceeded"
    assert aws.error_message(unreachable()) == f'Could not connect to the endpoint URL: "{URL}"'


IRSA = {
    "AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/product",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
}
POD_IDENTITY = {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
}


@pytest.mark.parametrize(
    "uri", ["http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials"]
)
def test_pod_identity_alone_is_warned_about(uri: str) -> None:
    warnings = aws.pod_identity_warnings({**POD_IDENTITY, "AWS_CONTAINER_CREDENTIALS_FULL_URI": uri})
    assert len(warnings) == 1
    assert "Pod Identity" in warnings[0] and "Use IRSA" in warnings[0]


def test_pod_identity_next_to_irsa_notes_that_irsa_wins() -> None:
    warnings = aws.pod_identity_warnings({**IRSA, **POD_IDENTITY})
    assert len(warnings) == 1
    assert "IRSA first" in warnings[0]


def test_static_keys_are_warned_about() -> None:
    warnings = aws.pod_identity_warnings({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"})
    assert len(warnings) == 1
    assert "long-term access keys are not supported" in warnings[0]


@pytest.mark.parametrize(
    "env",
    [
        IRSA,
        {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc", "AWS_REGION": "eu-west-1"},
        # Temporary keys (with a session token), and a loopback credential server as tests use.
        {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "t"},
        {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:8790/_emulator/credentials"},
        {},
    ],
    ids=["irsa", "ecs-task-role", "session-keys", "loopback-credentials", "nothing"],
)
def test_supported_setups_get_no_warnings(env: dict[str, str]) -> None:
    assert aws.pod_identity_warnings(env) == []
