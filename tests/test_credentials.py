"""Credential paths through boto3's real default chain, as the sidecar process uses it.

IRSA: AssumeRoleWithWebIdentity against moto's STS server (AWS_ENDPOINT_URL_STS), as on EKS.
ECS: container credentials from a loopback endpoint (the emulator's), as on ECS.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Emu
from sidecar_proc import Sidecar, log_lines, sidecar_env, start_sidecar

ROLE_ARN = "arn:aws:iam::111122223333:role/metering-sidecar-irsa"


def irsa_env(emu: Emu, tmp_path: Path, sts_url: str) -> dict[str, str]:
    token = tmp_path / "token"
    # The projected ServiceAccount token: an opaque JWT to the SDK, which passes it to STS.
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVtbzpzaWRlY2FyIn0.c2ln")
    env = sidecar_env(
        emu,
        tmp_path,
        AWS_ROLE_ARN=ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
        AWS_ENDPOINT_URL_STS=sts_url,
    )
    del env["AWS_CONTAINER_CREDENTIALS_FULL_URI"], env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    return env


def test_irsa_through_sts(emu: Emu, tmp_path: Path, sts_url: str) -> None:
    sidecar = start_sidecar(irsa_env(emu, tmp_path, sts_url), tmp_path / "sidecar.log")
    try:
        assert sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled", sidecar.logs()
    finally:
        sidecar.stop()
    sources = [line for line in log_lines(sidecar) if line["msg"].startswith("AWS credentials")]
    assert sources and sources[0]["credential_method"] == "assume-role-with-web-identity"
    assert "IRSA" in sources[0]["msg"]
    callers = {c["caller"] for c in emu.calls() if c["operation"] == "RegisterUsage"}
    # moto's STS issued the temporary key; the emulator saw that key, not the container credentials.
    assert len(callers) == 1 and not next(iter(callers)).startswith("ASIAEMU")
    assert "SecretAccessKey" not in sidecar.logs() and "secret" not in sidecar.logs().lower()


def test_pod_identity_next_to_irsa_warns_and_irsa_wins(emu: Emu, tmp_path: Path, sts_url: str) -> None:
    env = irsa_env(emu, tmp_path, sts_url)
    # What EKS Pod Identity injects. boto3 tries IRSA first, so this address is never contacted.
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://169.254.170.23/v1/credentials"
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(tmp_path / "eks-pod-identity-token")
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    try:
        assert sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled", sidecar.logs()
    finally:
        sidecar.stop()
    warnings = [line["msg"] for line in log_lines(sidecar) if line["level"] == "warning"]
    assert any("Pod Identity" in w and "IRSA first" in w for w in warnings), warnings
    methods = [line.get("credential_method") for line in log_lines(sidecar) if "credential_method" in line]
    assert methods == ["assume-role-with-web-identity"]


def test_ecs_container_credentials_from_loopback(emu: Emu, tmp_path: Path) -> None:
    token_file = tmp_path / "auth-token"
    token_file.write_text("ecs-task-token-1")  # no trailing newline: botocore refuses CR/LF in the header
    env = sidecar_env(emu, tmp_path)
    del env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token_file)
    sidecar: Sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    try:
        assert sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled", sidecar.logs()
    finally:
        sidecar.stop()
    methods = [line.get("credential_method") for line in log_lines(sidecar) if "credential_method" in line]
    assert methods == ["container-role"]
    calls = [c for c in emu.calls() if c["operation"] == "RegisterUsage"]
    assert calls[0]["caller"].startswith("ASIAEMU")
    # The emulator knew the secret it issued, so the SigV4 signature was checked in full.
    assert emu.emulator.secrets[calls[0]["caller"]]
