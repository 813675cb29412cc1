"""sidecar.config: every METERING_* variable, and every refusal names its variable.

Parsing is pure (a mapping in, a Config out); one test runs `metering-sidecar run` for real to show that a
bad value stops the process at once, exit status 2, with the variable's name on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import DEFAULT_STATE_DIR, Config, ConfigError, load
from sidecar.emulator.signer import Signer
from sidecar.token import AWS_SAMPLE_PUBLIC_KEY_PEM, load_public_key


@pytest.fixture(scope="module")
def pem(signer: Signer) -> str:
    return signer.public_pem()


@pytest.fixture
def env(pem: str) -> dict[str, str]:
    """The least that loads: a product code and a key."""
    return {"METERING_PRODUCT_CODE": "prod-abc123", "METERING_PUBLIC_KEY": pem}


def refused(env: dict[str, str], variable: str, *fragments: str) -> str:
    """load(env) fails with a ConfigError for `variable` whose message has every fragment in it."""
    with pytest.raises(ConfigError) as caught:
        load(env)
    message = str(caught.value)
    assert caught.value.variable == variable, message
    assert message.startswith(f"{variable}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def key_file(directory: Path, name: str, signer: Signer) -> str:
    path = directory / name
    path.write_text(signer.public_pem())
    return str(path)


def test_the_defaults(env: dict[str, str], signer: Signer) -> None:
    config = load(env)
    assert config.product_code == "prod-abc123"
    assert config.public_key_version == 1
    assert list(config.public_keys) == [1]
    assert config.public_keys[1].public_numbers() == load_public_key(signer.public_pem()).public_numbers()
    assert config.dimensions == ()
    assert (config.host, config.port, config.loopback) == ("127.0.0.1", 8787, True)
    assert config.state_dir == Path(DEFAULT_STATE_DIR)
    assert config.api_token is None and config.allow_non_loopback is False
    assert (config.register_deadline, config.retry_initial_delay) == (1800.0, 1.0)
    assert (config.denied_cooldown, config.attest_rate) == (300.0, 1.0)
    assert (config.log_format, config.log_level) == ("json", "INFO")


def test_every_variable_is_read(env: dict[str, str], tmp_path: Path) -> None:
    config = load(
        {
            **env,
            "METERING_PRODUCT_CODE": "  a-Z_0/9=:.@x  ",
            "METERING_PUBLIC_KEY_VERSION": "3",
            "METERING_DIMENSIONS": " requests, storage_gb ,,",
            "METERING_LISTEN": "localhost:9000",
            "METERING_STATE_DIR": str(tmp_path),
            "METERING_API_TOKEN": "0123456789abcdef-token",
            "METERING_REGISTER_DEADLINE": "90",
            "METERING_RETRY_INITIAL_DELAY": "0.25",
            "METERING_DENIED_COOLDOWN": "0",
            "METERING_ATTEST_RATE": "2.5",
            "METERING_LOG_FORMAT": "TEXT",
            "METERING_LOG_LEVEL": "debug",
        }
    )
    assert config.product_code == "a-Z_0/9=:.@x"
    assert config.public_key_version == 3 and list(config.public_keys) == [3]
    assert config.dimensions == ("requests", "storage_gb")
    assert (config.host, config.port) == ("localhost", 9000)
    assert config.state_dir == tmp_path
    assert config.api_token == "0123456789abcdef-token"
    assert config.register_deadline == 90.0 and config.retry_initial_delay == 0.25
    assert config.denied_cooldown == 0.0 and config.attest_rate == 2.5
    assert (config.log_format, config.log_level) == ("text", "DEBUG")


# --- product code and key version -------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_the_product_code_is_required(env: dict[str, str], value: str | None) -> None:
    del env["METERING_PRODUCT_CODE"]
    if value is not None:
        env["METERING_PRODUCT_CODE"] = value
    refused(env, "METERING_PRODUCT_CODE", "required")


@pytest.mark.parametrize("value", ["prod abc", "prod#1", "x" * 256, "prödukt"])
def test_a_product_code_outside_the_aws_pattern_is_refused(env: dict[str, str], value: str) -> None:
    refused({**env, "METERING_PRODUCT_CODE": value}, "METERING_PRODUCT_CODE", "1-255 characters")


def test_a_product_code_of_255_characters_is_fine(env: dict[str, str]) -> None:
    assert load({**env, "METERING_PRODUCT_CODE": "p" * 255}).product_code == "p" * 255


@pytest.mark.parametrize("value", ["0", "x", "-1", "1.5", "²"])
def test_a_bad_key_version_is_refused(env: dict[str, str], value: str) -> None:
    refused({**env, "METERING_PUBLIC_KEY_VERSION": value}, "METERING_PUBLIC_KEY_VERSION", repr(value))


# --- public keys ------------------------------------------------------------------------------------


def test_the_key_from_a_file(env: dict[str, str], tmp_path: Path, signer: Signer) -> None:
    del env["METERING_PUBLIC_KEY"]
    config = load({**env, "METERING_PUBLIC_KEY_FILE": key_file(tmp_path, "key.pem", signer)})
    assert list(config.public_keys) == [1]


def test_a_key_is_required(env: dict[str, str]) -> None:
    del env["METERING_PUBLIC_KEY"]
    refused(env, "METERING_PUBLIC_KEY", "no public key for version 1", "METERING_PUBLIC_KEY_FILE")


def test_pem_and_file_together_are_refused(env: dict[str, str], tmp_path: Path, signer: Signer) -> None:
    refused(
        {**env, "METERING_PUBLIC_KEY_FILE": key_file(tmp_path, "key.pem", signer)},
        "METERING_PUBLIC_KEY",
        "not both",
    )


def test_an_unreadable_key_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    del env["METERING_PUBLIC_KEY"]
    missing = tmp_path / "nowhere.pem"
    refused({**env, "METERING_PUBLIC_KEY_FILE": str(missing)}, "METERING_PUBLIC_KEY_FILE", str(missing))
    refused({**env, "METERING_PUBLIC_KEY_FILE": str(tmp_path)}, "METERING_PUBLIC_KEY_FILE", "cannot read")


@pytest.mark.parametrize(
    "text", ["not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]
)
def test_text_that_is_not_a_key_is_refused(env: dict[str, str], text: str) -> None:
    refused({**env, "METERING_PUBLIC_KEY": text}, "METERING_PUBLIC_KEY", "RSA public key")


def test_the_aws_sample_key_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    refused({**env, "METERING_PUBLIC_KEY": AWS_SAMPLE_PUBLIC_KEY_PEM}, "METERING_PUBLIC_KEY", "sample key")
    sample = tmp_path / "sample.pem"
    sample.write_text(AWS_SAMPLE_PUBLIC_KEY_PEM)
    del env["METERING_PUBLIC_KEY"]
    refused({**env, "METERING_PUBLIC_KEY_FILE": str(sample)}, "METERING_PUBLIC_KEY_FILE", "sample key")
    refused({**env, "METERING_PUBLIC_KEY_FILES": f"1={sample}"}, "METERING_PUBLIC_KEY_FILES", "sample key")


def test_rotation_keys_add_versions(env: dict[str, str], tmp_path: Path, signer: Signer) -> None:
    two, three = key_file(tmp_path, "2.pem", signer), key_file(tmp_path, "3.pem", signer)
    config = load({**env, "METERING_PUBLIC_KEY_FILES": f" 2={two} , 3 = {three} ,"})
    assert sorted(config.public_keys) == [1, 2, 3]


def test_a_version_given_twice_is_refused(env: dict[str, str], tmp_path: Path, signer: Signer) -> None:
    # METERING_PUBLIC_KEY holds version 1 already: a second key for 1 must not silently replace it.
    one = key_file(tmp_path, "1.pem", signer)
    refused({**env, "METERING_PUBLIC_KEY_FILES": f"1={one}"}, "METERING_PUBLIC_KEY_FILES", "given twice")


def test_the_current_version_may_come_from_the_rotation_list(
    env: dict[str, str], tmp_path: Path, signer: Signer
) -> None:
    del env["METERING_PUBLIC_KEY"]
    config = load(
        {
            **env,
            "METERING_PUBLIC_KEY_VERSION": "2",
            "METERING_PUBLIC_KEY_FILES": f"2={key_file(tmp_path, '2.pem', signer)}",
        }
    )
    assert config.public_key_version == 2 and list(config.public_keys) == [2]


def test_a_version_without_its_key_is_refused(env: dict[str, str], tmp_path: Path, signer: Signer) -> None:
    del env["METERING_PUBLIC_KEY"]
    refused(
        {
            **env,
            "METERING_PUBLIC_KEY_VERSION": "3",
            "METERING_PUBLIC_KEY_FILES": f"2={key_file(tmp_path, '2.pem', signer)}",
        },
        "METERING_PUBLIC_KEY",
        "no public key for version 3",
    )


@pytest.mark.parametrize(
    "pair", ["2", "2:/k.pem", "x=/k.pem", "0=/k.pem", "-2=/k.pem", "2=", "=/k.pem", "²=/k.pem"]
)
def test_bad_rotation_pairs_are_refused(env: dict[str, str], pair: str) -> None:
    refused(
        {**env, "METERING_PUBLIC_KEY_FILES": pair}, "METERING_PUBLIC_KEY_FILES", "VERSION=FILE", repr(pair)
    )


def test_an_unreadable_rotation_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    refused(
        {**env, "METERING_PUBLIC_KEY_FILES": f"2={tmp_path / 'gone.pem'}"},
        "METERING_PUBLIC_KEY_FILES",
        "cannot read",
        "gone.pem",
    )


# --- dimensions -------------------------------------------------------------------------------------


def test_empty_dimensions_mean_an_hourly_product(env: dict[str, str]) -> None:
    assert load({**env, "METERING_DIMENSIONS": " , ,"}).dimensions == ()


def test_a_dimension_listed_twice_is_refused(env: dict[str, str]) -> None:
    refused({**env, "METERING_DIMENSIONS": "requests,storage, requests"}, "METERING_DIMENSIONS", "twice")


def test_dimension_names_are_at_most_255_characters(env: dict[str, str]) -> None:
    assert load({**env, "METERING_DIMENSIONS": "d" * 255}).dimensions == ("d" * 255,)
    refused({**env, "METERING_DIMENSIONS": "ok," + "d" * 256}, "METERING_DIMENSIONS", "longer than 255")


# --- listen address ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("127.0.0.2:1", "127.0.0.2", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:8787", "::1", 8787),
        ("::1:8787", "::1", 8787),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_loopback_listen_addresses(env: dict[str, str], value: str, host: str, port: int) -> None:
    config = load({**env, "METERING_LISTEN": value})
    assert (config.host, config.port, config.loopback) == (host, port, True)


@pytest.mark.parametrize(
    "value",
    [
        "8787",
        "127.0.0.1",
        "127.0.0.1:",
        ":8787",
        "[]:8787",
        "127.0.0.1:http",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:²",
    ],
)
def test_bad_listen_forms_are_refused(env: dict[str, str], value: str) -> None:
    refused({**env, "METERING_LISTEN": value}, "METERING_LISTEN", "HOST:PORT", repr(value))


@pytest.mark.parametrize("value", ["0.0.0.0:8787", "pod.local:8787", "[::]:8787", "192.0.2.10:8787"])
def test_non_loopback_needs_the_explicit_switch(env: dict[str, str], value: str) -> None:
    refused(
        {**env, "METERING_LISTEN": value},
        "METERING_LISTEN",
        "not a loopback address",
        "METERING_ALLOW_NON_LOOPBACK=true",
    )
    config = load({**env, "METERING_LISTEN": value, "METERING_ALLOW_NON_LOOPBACK": "true"})
    assert config.allow_non_loopback is True and config.loopback is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("Yes", True), ("ON", True), ("0", False), ("no", False), ("off", False), ("", False)],
)
def test_booleans(env: dict[str, str], value: str, expected: bool) -> None:
    assert load({**env, "METERING_ALLOW_NON_LOOPBACK": value}).allow_non_loopback is expected


@pytest.mark.parametrize("value", ["maybe", "2", "y"])
def test_a_bad_boolean_is_refused(env: dict[str, str], value: str) -> None:
    refused({**env, "METERING_ALLOW_NON_LOOPBACK": value}, "METERING_ALLOW_NON_LOOPBACK", "true or false")


# --- numbers, logging -------------------------------------------------------------------------------

NUMBERS = [
    "METERING_REGISTER_DEADLINE",
    "METERING_RETRY_INITIAL_DELAY",
    "METERING_DENIED_COOLDOWN",
    "METERING_ATTEST_RATE",
]


@pytest.mark.parametrize("variable", NUMBERS)
@pytest.mark.parametrize("value", ["soon", "1s", "-1", "nan", "inf", "-inf"])
def test_a_bad_number_is_refused(env: dict[str, str], variable: str, value: str) -> None:
    refused({**env, variable: value}, variable, value)


@pytest.mark.parametrize(
    ("variable", "value"), [("METERING_RETRY_INITIAL_DELAY", "0"), ("METERING_ATTEST_RATE", "0")]
)
def test_numbers_that_must_be_positive(env: dict[str, str], variable: str, value: str) -> None:
    refused({**env, variable: value}, variable, "must be at least")


@pytest.mark.parametrize(
    ("variable", "value"), [("METERING_LOG_FORMAT", "xml"), ("METERING_LOG_LEVEL", "TRACE")]
)
def test_bad_log_settings_are_refused(env: dict[str, str], variable: str, value: str) -> None:
    refused({**env, variable: value}, variable, repr(value))


# --- API token --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["short", "fifteen-chars-x", "sixteen chars xx", "sixteen-chars-\x01x"])
def test_a_weak_or_odd_api_token_is_refused(env: dict[str, str], token: str) -> None:
    refused({**env, "METERING_API_TOKEN": token}, "METERING_API_TOKEN", "at least 16 printable characters")


def test_the_api_token_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("0123456789abcdef\n")  # as `echo` or a Kubernetes Secret writes it
    assert load({**env, "METERING_API_TOKEN_FILE": str(path)}).api_token == "0123456789abcdef"
    refused(
        {**env, "METERING_API_TOKEN_FILE": str(path), "METERING_API_TOKEN": "0123456789abcdef"},
        "METERING_API_TOKEN",
        "not both",
    )
    refused(
        {**env, "METERING_API_TOKEN_FILE": str(tmp_path / "gone")}, "METERING_API_TOKEN_FILE", "cannot read"
    )


def test_an_empty_token_file_means_no_token(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    assert load({**env, "METERING_API_TOKEN_FILE": str(path)}).api_token is None


def test_config_is_frozen(env: dict[str, str]) -> None:
    config: Any = load(env)
    with pytest.raises(AttributeError):
        config.product_code = "other"
    assert isinstance(config, Config)


# --- the real command -------------------------------------------------------------------------------


def run_sidecar(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`metering-sidecar run` with only the given variables (and PATH), bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "run", *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "args", "variable"),
    [
        ({"METERING_PRODUCT_CODE": ""}, [], "METERING_PRODUCT_CODE"),
        ({}, ["--product-code", "not a code"], "METERING_PRODUCT_CODE"),
        ({"METERING_PUBLIC_KEY": AWS_SAMPLE_PUBLIC_KEY_PEM}, [], "METERING_PUBLIC_KEY"),
        ({"METERING_LISTEN": "0.0.0.0:8787"}, [], "METERING_LISTEN"),
        ({"METERING_REGISTER_DEADLINE": "soon"}, [], "METERING_REGISTER_DEADLINE"),
        ({"METERING_STATE_DIR": "{tmp}/a-file"}, [], "METERING_STATE_DIR"),
    ],
    ids=["missing", "flag", "sample-key", "listen", "number", "state-dir"],
)
def test_run_with_bad_config_exits_2_naming_the_variable(
    env: dict[str, str], tmp_path: Path, changes: dict[str, str], args: list[str], variable: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    changes = {k: v.replace("{tmp}", str(tmp_path)) for k, v in changes.items()}
    result = run_sidecar(
        {**env, "METERING_STATE_DIR": str(tmp_path / "state"), "AWS_REGION": "eu-west-1", **changes},
        *args,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"metering-sidecar run: {variable}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_run_without_a_region_exits_2_and_says_how_to_set_one(env: dict[str, str], tmp_path: Path) -> None:
    result = run_sidecar({**env, "METERING_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "AWS_REGION" in result.stderr and "never guesses" in result.stderr
    assert "Traceback" not in result.stderr
