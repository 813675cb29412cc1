"""The ECS task definitions (manifests/ecs): valid RegisterTaskDefinition input, and our contract.

They are validated as they are, against botocore's own ECS model with botocore's own ParamValidator: the
files are exactly what `aws ecs register-task-definition --cli-input-json file://...` takes. Then the
rules that make the sidecar work on ECS: awsvpc (one localhost for the task), the product waits for the
sidecar to be HEALTHY (so at shutdown it stops first), the health check is /readyz (HEALTHY means
entitled), the task role, the contract's environment, awslogs, and a stopTimeout above the sidecar's grace.
tests/test_image.py runs the Fargate definition's sidecar container as ECS would, with the real image.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from conftest import PRODUCT

from sidecar import config
from sidecar.emulator.signer import Signer

ROOT = Path(__file__).resolve().parent.parent
ECS = ROOT / "manifests" / "ecs"
FILES = {"FARGATE": ECS / "task-definition-fargate.json", "EC2": ECS / "task-definition-ec2.json"}
SIDECAR = "metering-sidecar"

# The container contract's environment, in its order, for ECS: METERING_PROBE_LISTEN, METERING_POD_NAME and
# METERING_POD_UID are Kubernetes only (kubelet's probes; fieldRefs), and the public key is PEM text in
# METERING_PUBLIC_KEY because a task definition cannot make a file (no ConfigMap volumes on ECS).
CONTRACT_ENV = {
    "METERING_PRODUCT_CODE": None,
    "METERING_PUBLIC_KEY_VERSION": "1",
    "METERING_PUBLIC_KEY": None,
    "METERING_DIMENSIONS": None,
    "METERING_LISTEN": "127.0.0.1:8787",
    "METERING_STATE_DIR": "/var/lib/metering",
    "METERING_SHUTDOWN_GRACE": "20",
    "METERING_LOG_FORMAT": "json",
}
PLACEHOLDER = re.compile(r"REPLACE_WITH_[A-Z_]+")


def load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def containers(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in task["containerDefinitions"]}


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


@pytest.fixture(params=sorted(FILES), ids=str.lower)
def task(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, load(FILES[request.param])


def test_valid_register_task_definition_input_as_is(task: tuple[str, dict[str, Any]]) -> None:
    _, definition = task
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(definition, shape)
    assert not report.has_errors(), report.generate_report()


def test_awsvpc_and_the_launch_type(task: tuple[str, dict[str, Any]]) -> None:
    launch_type, definition = task
    # In bridge mode every container has its own network namespace: the product could not reach the
    # sidecar on 127.0.0.1:8787. awsvpc gives the task one namespace (host mode does too, but shares it
    # with the instance and every other task on it, and Fargate does not have it).
    assert definition["networkMode"] == "awsvpc"
    assert definition["requiresCompatibilities"] == [launch_type]
    if launch_type == "FARGATE":
        # A Fargate task size: 0.5 vCPU takes 1 to 4 GB.
        assert definition["cpu"] == "512" and int(definition["memory"]) in range(1024, 4097, 1024)
        assert definition["runtimePlatform"] == {
            "operatingSystemFamily": "LINUX",
            "cpuArchitecture": "X86_64",
        }


def test_the_task_role_and_the_execution_role(task: tuple[str, dict[str, Any]]) -> None:
    _, definition = task
    arn = re.compile(r"^arn:aws:iam::REPLACE_WITH_ACCOUNT_ID:role/[\w+=,.@-]+$")
    assert arn.match(definition["taskRoleArn"]), "metering must be signed with the task role"
    assert arn.match(definition["executionRoleArn"])  # pulls the image, writes the awslogs streams
    trust = load(ECS / "task-role-trust-policy.json")["Statement"][0]
    assert (
        trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    )
    policy = load(ROOT / "manifests" / "iam-policy.json")["Statement"][0]
    assert set(policy["Action"]) == {"aws-marketplace:RegisterUsage", "aws-marketplace:MeterUsage"}


def test_every_other_container_waits_for_the_sidecar_to_be_healthy(task: tuple[str, dict[str, Any]]) -> None:
    _, definition = task
    by_name = containers(definition)
    assert by_name[SIDECAR]["essential"] is True
    assert "dependsOn" not in by_name[SIDECAR]
    others = [c for name, c in by_name.items() if name != SIDECAR]
    assert others
    for container in others:
        # Startup waits for HEALTHY; ECS reverses dependencies at shutdown, so the product stops first and
        # the sidecar still takes usage while it does.
        assert {"containerName": SIDECAR, "condition": "HEALTHY"} in container["dependsOn"], container["name"]


def test_the_health_check_is_readyz_within_ecs_limits(task: tuple[str, dict[str, Any]]) -> None:
    _, definition = task
    check = containers(definition)[SIDECAR]["healthCheck"]
    command = check["command"]
    assert command[0] == "CMD" and command[1] == "python3"  # no curl in the slim image
    assert "'http://127.0.0.1:8787/readyz'" in command[-1]  # 200 only once entitled
    compile(command[-1], "healthCheck", "exec")
    assert 5 <= check["interval"] <= 300 and 2 <= check["timeout"] <= 60
    assert 1 <= check["retries"] <= 10 and 0 <= check["startPeriod"] <= 300
    # RegisterUsage is retried; give it ECS's longest start period before failures count.
    assert check["startPeriod"] == 300
    assert check["timeout"] < check["interval"]


def test_the_sidecar_container_follows_the_contract(task: tuple[str, dict[str, Any]]) -> None:
    launch_type, definition = task
    sidecar = containers(definition)[SIDECAR]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sidecar["image"].endswith(f"/metering-sidecar:{version}")
    assert sidecar["command"] == ["run"] and "entryPoint" not in sidecar  # the image's ENTRYPOINT
    env = environment(sidecar)
    assert list(env) == list(CONTRACT_ENV)
    for name, value in CONTRACT_ENV.items():
        if value is not None:
            assert env[name] == value, name
    known = {name for name, _ in config.VARIABLES}
    assert set(env) <= known
    assert sidecar["user"] == "65532:65532" and sidecar["readonlyRootFilesystem"] is True
    assert sidecar["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}}
    # The contract's resources: 128 MiB limit (a hard limit on ECS), 64 MiB reserved.
    assert sidecar["memory"] == 128 and sidecar["memoryReservation"] == 64
    # The state dir: a task volume. ECS copies the image's VOLUME path into it, with the image's
    # ownership (65532), so the non-root sidecar can write its ledger there.
    volumes = {v["name"]: v for v in definition["volumes"]}
    mount = sidecar["mountPoints"]
    assert mount == [
        {"sourceVolume": "metering-state", "containerPath": "/var/lib/metering", "readOnly": False}
    ]
    assert volumes["metering-state"] == {"name": "metering-state"}  # task storage, gone with the task
    # stopTimeout: SIGTERM, then the sidecar's grace to send the last records, then SIGKILL.
    grace = float(env["METERING_SHUTDOWN_GRACE"])
    assert sidecar["stopTimeout"] >= grace + 5
    if launch_type == "FARGATE":
        assert sidecar["stopTimeout"] <= 120  # Fargate's maximum


def test_the_environment_is_accepted_by_the_sidecar(task: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """With the placeholders filled in, the sidecar's own configuration loader takes it."""
    _, definition = task
    env = environment(containers(definition)[SIDECAR])
    filled = {
        **env,
        "METERING_PRODUCT_CODE": PRODUCT,
        "METERING_PUBLIC_KEY": Signer.generate().public_pem(),
        "METERING_DIMENSIONS": "requests,storage_gb",
        "METERING_STATE_DIR": str(tmp_path),
    }
    loaded = config.load(filled)
    assert loaded.product_code == PRODUCT and loaded.public_key_version == 1
    assert (loaded.host, loaded.port) == ("127.0.0.1", 8787) and loaded.loopback
    assert loaded.shutdown_grace == 20.0 and loaded.probe_listen is None


def test_awslogs_everywhere(task: tuple[str, dict[str, Any]]) -> None:
    _, definition = task
    for container in definition["containerDefinitions"]:
        logging = container["logConfiguration"]
        assert logging["logDriver"] == "awslogs", container["name"]
        options = logging["options"]
        assert options["awslogs-region"] == "REPLACE_WITH_REGION"
        assert options["awslogs-group"] == "REPLACE_WITH_LOG_GROUP"
        assert options["awslogs-stream-prefix"] == container["name"]


def test_fargate_and_ec2_differ_only_where_they_must() -> None:
    fargate, ec2 = load(FILES["FARGATE"]), load(FILES["EC2"])
    for key in ("family", "requiresCompatibilities", "runtimePlatform"):
        fargate.pop(key, None)
        ec2.pop(key, None)
    assert fargate == ec2


def test_every_placeholder_is_explained_in_the_readme() -> None:
    readme = (ECS / "README.md").read_text()
    used: set[str] = set()
    for path in [*FILES.values(), ECS / "task-role-trust-policy.json"]:
        used |= set(PLACEHOLDER.findall(path.read_text()))
    assert used, "the files have placeholders"
    missing = {p for p in used if p not in readme}
    assert not missing, f"not in manifests/ecs/README.md: {sorted(missing)}"
