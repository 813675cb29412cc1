"""The sidecar's configuration: `METERING_*` environment variables, each also a flag (DESIGN.md, "Interfaces").

Invalid configuration stops the process at once with a message that names the variable and what it
expects (ConfigError). Parsing is pure: it takes a mapping of variables, so tests need no environment.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from sidecar.token import TokenError, load_public_key

PRODUCT_CODE_RE = re.compile(r"^[-a-zA-Z0-9/=:_.@]{1,255}$")  # ProductCode (reference §4.5)
DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_STATE_DIR = "/var/lib/metering"


class ConfigError(ValueError):
    """A configuration value is missing or invalid. The message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Config:
    product_code: str
    public_key_version: int
    public_keys: Mapping[int, RSAPublicKey]
    dimensions: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8787
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    api_token: str | None = None
    allow_non_loopback: bool = False
    # AWS: "retries for up to 30 minutes, with exponential back off" (reference §1.5).
    register_deadline: float = 1800.0
    # The first retry waits about this long; each next one doubles, up to a minute (sidecar.retry).
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 60.0
    # After a fatal RegisterUsage answer, a restarted container waits this long before asking again.
    denied_cooldown: float = 300.0
    # attest: at most this many RegisterUsage calls per second, well under AWS's 5/s per account (§1.5).
    attest_rate: float = 1.0
    # Metering (custom dimensions only).
    send_spread: float = 300.0
    send_zero_hours: bool = False
    heartbeat_dimension: str | None = None
    heartbeat_quantity: int = 0
    # Kubernetes gives 30 s by default between SIGTERM and SIGKILL; we stay well below it.
    shutdown_grace: float = 20.0
    tick: float = 15.0
    # Testing and demos only: a file holding seconds to add to the system clock.
    fake_clock_file: Path | None = None
    probe_listen: tuple[str, int] | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)


# (variable, flag, help). The flag names are the variables without the prefix, in kebab case.
VARIABLES: tuple[tuple[str, str], ...] = (
    ("METERING_PRODUCT_CODE", "the product code AWS Marketplace gave you (required)"),
    ("METERING_PUBLIC_KEY_VERSION", "the public key version AWS Marketplace gave you (default 1)"),
    ("METERING_PUBLIC_KEY", "the AWS Marketplace public key for that version, as PEM text"),
    ("METERING_PUBLIC_KEY_FILE", "... or a file holding it"),
    ("METERING_PUBLIC_KEY_FILES", "more key versions for rotation: VERSION=FILE,VERSION=FILE"),
    ("METERING_DIMENSIONS", "comma-separated custom dimension API names; empty: an hourly product"),
    ("METERING_LISTEN", f"HOST:PORT for the local API (default {DEFAULT_LISTEN})"),
    ("METERING_ALLOW_NON_LOOPBACK", "true to allow METERING_LISTEN on a non-loopback address"),
    ("METERING_STATE_DIR", f"where the ledger lives, an emptyDir in pods (default {DEFAULT_STATE_DIR})"),
    ("METERING_API_TOKEN", "if set, every API request except the probes needs 'Authorization: Bearer TOKEN'"),
    ("METERING_API_TOKEN_FILE", "... or a file holding the token"),
    (
        "METERING_REGISTER_DEADLINE",
        "seconds to keep retrying RegisterUsage on throttling and 5xx (default 1800)",
    ),
    (
        "METERING_RETRY_INITIAL_DELAY",
        "seconds before the first retry; doubles each time up to 60 (default 1)",
    ),
    ("METERING_RETRY_MAX_DELAY", "the longest wait between two retries, in seconds (default 60)"),
    (
        "METERING_DENIED_COOLDOWN",
        "seconds a restarted container waits after a fatal RegisterUsage answer (default 300)",
    ),
    ("METERING_ATTEST_RATE", "attest calls to RegisterUsage allowed per second (default 1)"),
    (
        "METERING_SEND_SPREAD",
        "seconds into the next hour over which pods spread their MeterUsage calls (default 300)",
    ),
    ("METERING_SEND_ZERO_HOURS", "true to send a zero record for hours with no usage (default false)"),
    (
        "METERING_HEARTBEAT_DIMENSION",
        "a dimension that gets METERING_HEARTBEAT_QUANTITY units for each pod-hour",
    ),
    ("METERING_HEARTBEAT_QUANTITY", "units per pod-hour for the heartbeat dimension (default 1)"),
    (
        "METERING_SHUTDOWN_GRACE",
        "seconds after SIGTERM to send the last records (default 20; keep it below the pod's grace)",
    ),
    ("METERING_TICK", "seconds between metering checks (default 15)"),
    ("METERING_FAKE_CLOCK_FILE", "testing and demos only: a file holding seconds to add to the system clock"),
    (
        "METERING_PROBE_LISTEN",
        "HOST:PORT for a probe-only listener (/healthz, /readyz) for kubelet, e.g. 0.0.0.0:8788",
    ),
    ("METERING_LOG_FORMAT", "json (default) or text"),
    ("METERING_LOG_LEVEL", "DEBUG, INFO (default), WARNING or ERROR"),
)


def flag_for(variable: str) -> str:
    return "--" + variable.removeprefix("METERING_").lower().replace("_", "-")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digits(text: str) -> bool:
    # str.isdigit() alone admits non-ASCII digits such as "²", which int() then refuses.
    return text.isascii() and text.isdigit()


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        # float() accepts "nan" and "inf": a NaN deadline would retry forever, a NaN rate never limits.
        raise ConfigError(name, f"expected a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum:g}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _read(name: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ConfigError(name, f"cannot read {path}: {err.strerror}") from None


def _key(name: str, pem: str) -> RSAPublicKey:
    try:
        return load_public_key(pem)
    except TokenError as err:
        raise ConfigError(name, f"refused: {err.message}") from None
    except ValueError as err:
        raise ConfigError(name, f"not a usable RSA public key in PEM form ({err})") from None


def _public_keys(env: Mapping[str, str], version: int) -> dict[int, RSAPublicKey]:
    keys: dict[int, RSAPublicKey] = {}
    pem, path = env.get("METERING_PUBLIC_KEY", "").strip(), env.get("METERING_PUBLIC_KEY_FILE", "").strip()
    if pem and path:
        raise ConfigError(
            "METERING_PUBLIC_KEY", "set METERING_PUBLIC_KEY or METERING_PUBLIC_KEY_FILE, not both"
        )
    if pem:
        keys[version] = _key("METERING_PUBLIC_KEY", pem)
    elif path:
        keys[version] = _key("METERING_PUBLIC_KEY_FILE", _read("METERING_PUBLIC_KEY_FILE", path))
    for item in filter(None, (s.strip() for s in env.get("METERING_PUBLIC_KEY_FILES", "").split(","))):
        number, sep, file = item.partition("=")
        if not sep or not _digits(number.strip()) or int(number) < 1 or not file.strip():
            raise ConfigError("METERING_PUBLIC_KEY_FILES", f"expected VERSION=FILE pairs, got {item!r}")
        if int(number) in keys:
            raise ConfigError(
                "METERING_PUBLIC_KEY_FILES",
                f"version {int(number)} is given twice (here and in METERING_PUBLIC_KEY*)",
            )
        keys[int(number)] = _key(
            "METERING_PUBLIC_KEY_FILES", _read("METERING_PUBLIC_KEY_FILES", file.strip())
        )
    if version not in keys:
        raise ConfigError(
            "METERING_PUBLIC_KEY",
            f"no public key for version {version}: set METERING_PUBLIC_KEY (PEM text) or METERING_PUBLIC_KEY_FILE "
            "to the key AWS Marketplace gave you with the product code",
        )
    return keys


def _listen(env: Mapping[str, str], name: str = "METERING_LISTEN") -> tuple[str, int]:
    raw = env.get(name, "").strip() or DEFAULT_LISTEN
    host, sep, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:8787; the server binds "::1", not "[::1]"
    if not sep or not host or not _digits(port) or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"expected HOST:PORT like {DEFAULT_LISTEN}, got {raw!r}")
    return host, int(port)


def _token(env: Mapping[str, str]) -> str | None:
    token, path = env.get("METERING_API_TOKEN", ""), env.get("METERING_API_TOKEN_FILE", "").strip()
    if token and path:
        raise ConfigError("METERING_API_TOKEN", "set METERING_API_TOKEN or METERING_API_TOKEN_FILE, not both")
    if path:
        token = _read("METERING_API_TOKEN_FILE", path)
    token = token.strip()
    if token and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ConfigError(
            "METERING_API_TOKEN", "the token must be at least 16 printable characters with no spaces"
        )
    return token or None


def load(env: Mapping[str, str]) -> Config:
    product_code = env.get("METERING_PRODUCT_CODE", "").strip()
    if not product_code:
        raise ConfigError("METERING_PRODUCT_CODE", "required: the product code AWS Marketplace gave you")
    if not PRODUCT_CODE_RE.match(product_code):
        raise ConfigError(
            "METERING_PRODUCT_CODE",
            f"{product_code[:40]!r} must be 1-255 characters of a-z A-Z 0-9 - / = : _ . @",
        )
    raw_version = env.get("METERING_PUBLIC_KEY_VERSION", "").strip() or "1"
    if not _digits(raw_version) or int(raw_version) < 1:
        raise ConfigError(
            "METERING_PUBLIC_KEY_VERSION", f"expected a whole number from 1, got {raw_version!r}"
        )
    version = int(raw_version)
    dimensions = tuple(d.strip() for d in env.get("METERING_DIMENSIONS", "").split(",") if d.strip())
    for dimension in dimensions:
        if len(dimension) > 255:
            raise ConfigError(
                "METERING_DIMENSIONS", f"dimension {dimension[:40]!r}... is longer than 255 characters"
            )
    if len(set(dimensions)) != len(dimensions):
        raise ConfigError("METERING_DIMENSIONS", "a dimension is listed twice")
    host, port = _listen(env)
    allow = _bool(env, "METERING_ALLOW_NON_LOOPBACK")
    if not _is_loopback(host) and not allow:
        raise ConfigError(
            "METERING_LISTEN",
            f"{host} is not a loopback address; the API is for the product in the same pod. "
            "Set METERING_ALLOW_NON_LOOPBACK=true (--allow-non-loopback) if you really mean it",
        )
    log_format = env.get("METERING_LOG_FORMAT", "").strip().lower() or "json"
    if log_format not in ("json", "text"):
        raise ConfigError("METERING_LOG_FORMAT", f"expected json or text, got {log_format!r}")
    log_level = env.get("METERING_LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("METERING_LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    state_dir = env.get("METERING_STATE_DIR", "").strip() or DEFAULT_STATE_DIR
    heartbeat = env.get("METERING_HEARTBEAT_DIMENSION", "").strip() or None
    if heartbeat is not None and heartbeat not in dimensions:
        raise ConfigError("METERING_HEARTBEAT_DIMENSION", f"{heartbeat!r} is not one of METERING_DIMENSIONS")
    raw_beat = env.get("METERING_HEARTBEAT_QUANTITY", "").strip() or "1"
    if not _digits(raw_beat) or not 1 <= int(raw_beat) <= 1_000_000:
        raise ConfigError(
            "METERING_HEARTBEAT_QUANTITY", f"expected a whole number from 1 to 1000000, got {raw_beat!r}"
        )
    fake_clock = env.get("METERING_FAKE_CLOCK_FILE", "").strip()
    probe_listen = (
        _listen(env, "METERING_PROBE_LISTEN") if env.get("METERING_PROBE_LISTEN", "").strip() else None
    )
    return Config(
        product_code=product_code,
        public_key_version=version,
        public_keys=_public_keys(env, version),
        dimensions=dimensions,
        host=host,
        port=port,
        state_dir=Path(state_dir),
        api_token=_token(env),
        allow_non_loopback=allow,
        register_deadline=_number(env, "METERING_REGISTER_DEADLINE", 1800.0),
        retry_initial_delay=_number(env, "METERING_RETRY_INITIAL_DELAY", 1.0, minimum=0.001),
        retry_max_delay=_number(env, "METERING_RETRY_MAX_DELAY", 60.0, minimum=0.001),
        denied_cooldown=_number(env, "METERING_DENIED_COOLDOWN", 300.0),
        attest_rate=_number(env, "METERING_ATTEST_RATE", 1.0, minimum=0.01),
        send_spread=_number(env, "METERING_SEND_SPREAD", 300.0),
        send_zero_hours=_bool(env, "METERING_SEND_ZERO_HOURS"),
        heartbeat_dimension=heartbeat,
        heartbeat_quantity=int(raw_beat) if heartbeat else 0,
        shutdown_grace=_number(env, "METERING_SHUTDOWN_GRACE", 20.0),
        tick=_number(env, "METERING_TICK", 15.0, minimum=0.01),
        fake_clock_file=Path(fake_clock) if fake_clock else None,
        probe_listen=probe_listen,
        log_format=log_format,
        log_level=log_level,
    )
