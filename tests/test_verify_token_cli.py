"""`metering-sidecar verify-token`, run as a real process: 0 verified, 1 a check failed, 2 bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from entitlement_fakes import PRODUCT, stranger, token

from sidecar.emulator.signer import Signer
from sidecar.token import AWS_SAMPLE_PUBLIC_KEY_PEM

pytestmark = pytest.mark.slow
NONCE = "debug-nonce-42"


@pytest.fixture
def key(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "aws-marketplace.pem"
    path.write_text(signer.public_pem())
    return path


@pytest.fixture
def good(signer: Signer) -> str:
    return token(signer, NONCE)


def verify(
    key: Path, tok: str, *extra: str, product: str = PRODUCT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """verify-token TOKEN --public-key KEY --product-code PRODUCT [extra...], bounded in time."""
    command = ["verify-token", tok, "--public-key", str(key), "--product-code", product, *extra]
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_good_token_verifies(key: Path, good: str) -> None:
    result = verify(key, good, "--nonce", NONCE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("token verified")
    assert f'"nonce": "{NONCE}"' in result.stdout and f'"productCode": "{PRODUCT}"' in result.stdout


def test_the_token_from_stdin(key: Path, good: str) -> None:
    result = verify(key, "-", "--nonce", NONCE, stdin=good + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("token verified")


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        (["--nonce", "another-nonce"], "nonce"),
        ([], "nonce"),  # the token has a nonce, and none was sent
        (["--nonce", NONCE, "--public-key-version", "2"], "public_key_version"),
    ],
    ids=["wrong-nonce", "no-nonce", "wrong-version"],
)
def test_a_failed_check_is_exit_1_naming_it(key: Path, good: str, extra: list[str], check: str) -> None:
    result = verify(key, good, *extra)
    assert result.returncode == 1, result.stderr
    assert f"token refused: check '{check}' failed" in result.stdout


def test_another_product_is_refused(key: Path, good: str) -> None:
    result = verify(key, good, "--nonce", NONCE, product="other-product")
    assert result.returncode == 1 and "check 'product_code' failed" in result.stdout


def test_a_token_from_another_key_is_refused(key: Path) -> None:
    result = verify(key, token(stranger(), NONCE), "--nonce", NONCE)
    assert result.returncode == 1 and "check 'signature' failed" in result.stdout


def test_a_tampered_token_is_refused(key: Path, signer: Signer, good: str) -> None:
    # The payload of a token for another nonce, under this token's signature.
    header, _, signature = good.split(".")
    swapped = token(signer, "another-nonce").split(".")[1]
    result = verify(key, f"{header}.{swapped}.{signature}", "--nonce", "another-nonce")
    assert result.returncode == 1 and "check 'signature' failed" in result.stdout


def test_the_aws_sample_key_is_refused(tmp_path: Path, good: str) -> None:
    sample = tmp_path / "sample.pem"
    sample.write_text(AWS_SAMPLE_PUBLIC_KEY_PEM)
    result = verify(sample, good, "--nonce", NONCE)
    assert result.returncode == 1
    assert "refused" in result.stderr and "sample key" in result.stderr
    assert "token verified" not in result.stdout


@pytest.mark.parametrize("content", [None, "not a PEM key"], ids=["missing", "not-a-key"])
def test_an_unusable_key_file_is_exit_2(tmp_path: Path, good: str, content: str | None) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_text(content)
    result = verify(path, good, "--nonce", NONCE)
    assert result.returncode == 2
    assert f"--public-key {path}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_key_file_is_exit_2(tmp_path: Path, good: str) -> None:
    # A directory: read fails with an OSError for any user, root included.
    result = verify(tmp_path, good, "--nonce", NONCE)
    assert result.returncode == 2
    assert "cannot read it" in result.stderr
