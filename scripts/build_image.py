"""Build the metering-sidecar image offline, and report its size.

    .venv/bin/python scripts/build_image.py [--tag metering-sidecar:test] [--base-image IMAGE]

1. The base. By default the image is built FROM `metering-base:bookworm`, a Debian bookworm made here
   with `debootstrap --variant=minbase` (plus python3, python3-venv, libssl3 and ca-certificates, which
   is what python:3.11-slim-bookworm offers) and `docker import`, because no registry can be reached
   to pull python:3.11-slim-bookworm. An existing `metering-base:bookworm` is reused (--rebuild-base
   makes it again). Any other --base-image is used as it is, e.g. python:3.11-slim-bookworm where it
   can be pulled. The Debian mirror is the one apt is configured with (or --mirror).
2. The wheelhouse. `pip install` inside a build cannot reach PyPI here, so the host builds the wheels:
   the runtime dependencies only ([project.dependencies] and what they need, markers evaluated, no
   dev extras), at exactly the versions pinned in requirements.lock, with `pip wheel --no-deps`, plus
   the project's own wheel. They go to build/wheels, the only part of the context that .dockerignore
   lets through. Their shared libraries are stripped there (`strip` from binutils; without it the build
   only says so): cryptography's and httptools' ship with symbol tables or debug information.
3. `docker build --network none`: no step of the build needs a network (everything is local), so the
   build is given none at all. That also keeps it away from the default bridge, which must not be used.
4. The size: the image, its base, and what our layers add, printed and written to build/image-size.txt
   (key=value lines, for the benchmark to reuse).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "metering-base:bookworm"
DEFAULT_TAG = "metering-sidecar:test"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What the minbase rootfs needs to be a Python base like python:3.11-slim-bookworm: the interpreter and
# its whole standard library (python3-venv pulls libpython3.11-stdlib and ensurepip's wheels), TLS, and
# the CA bundle. debootstrap resolves their dependencies itself.
BASE_PACKAGES = ("python3-minimal", "python3-venv", "libssl3", "ca-certificates")
# `docker import` gives an image with no configuration at all; these match python:3.11-slim-bookworm.
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
WHEELHOUSE = ROOT / "build" / "wheels"  # inside the build context: the Dockerfile copies it
SIZE_FILE = ROOT / "build" / "image-size.txt"
APT_SOURCES = Path("/etc/apt")


def log(message: str) -> None:
    print(f"[build_image] {message}", flush=True)


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(list(cmd), check=True, env=None if env is None else dict(env))


def output(cmd: Sequence[str]) -> str:
    return subprocess.run(list(cmd), check=True, text=True, capture_output=True).stdout.strip()


# --- the Debian mirror -----------------------------------------------------------------------------


def _deb822_mirrors(text: str) -> Iterable[tuple[str, list[str]]]:
    """(URI, suites) for each enabled `Types: deb` stanza of a .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


def _one_line_mirrors(text: str) -> Iterable[tuple[str, list[str]]]:
    """(URI, [suite]) for each `deb [options] URI suite components` line of a .list file."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        parts = line.split()
        if len(parts) >= 3:
            yield parts[1], [parts[2]]


def apt_mirror(apt_dir: Path = APT_SOURCES) -> str | None:
    """The Debian mirror that apt uses for bookworm itself (not -updates or -security), if any."""
    files: list[tuple[Path, bool]] = [(apt_dir / "sources.list", False)]
    files += [(p, True) for p in sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    files += [(p, False) for p in sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path, deb822 in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri, suites in (_deb822_mirrors if deb822 else _one_line_mirrors)(text):
            if SUITE in suites and uri.startswith(("http://", "https://")):
                return uri.rstrip("/")
    return None


# --- 1. the base image -----------------------------------------------------------------------------


def build_local_base(image: str, mirror: str) -> None:
    """debootstrap a minbase bookworm with Python into a temporary directory and `docker import` it."""
    if os.geteuid() != 0:
        sys.exit("debootstrap needs root to build the local base image")
    if shutil.which("debootstrap") is None:
        sys.exit("debootstrap is not installed (apt-get install debootstrap), and the base image is missing")
    with tempfile.TemporaryDirectory(prefix="metering-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                SUITE,
                str(rootfs),
                mirror,
            ]
        )
        # The package caches and lists are of no use in an image.
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        for mount in ("proc", "sys", "dev/pts"):
            if os.path.ismount(rootfs / mount):
                sys.exit(f"{rootfs / mount} is still mounted after debootstrap; not importing it")
        changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
        log(f"$ tar -C {rootfs} -c . | docker import {' '.join(changes)} - {image}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        imported = subprocess.run(
            ["docker", "import", *changes, "-", image], stdin=tar.stdout, capture_output=True, text=True
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            sys.exit(f"docker import failed: {imported.stderr.strip()}")


# --- 2. the wheelhouse -----------------------------------------------------------------------------


def locked_versions(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def runtime_closure(roots: Iterable[str]) -> set[str]:
    """The distributions the runtime dependencies need, from the installed metadata, without extras."""
    seen: set[str] = set()
    todo: list[tuple[Requirement, str]] = [(Requirement(r), "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not _applies(req.marker, extra):
            continue
        name = canonicalize_name(req.name)
        first = name not in seen
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{name} is a runtime dependency but is not installed here: run `make setup` first")
        # A dependency's own requirements once, plus those of each extra it is asked for.
        for raw in dist.requires or []:
            child = Requirement(raw)
            if first and (child.marker is None or _applies(child.marker, "")):
                todo.append((child, ""))
            for wanted in req.extras:
                if child.marker is not None and _applies(child.marker, wanted):
                    todo.append((child, wanted))
    return seen


def _applies(marker: Marker, extra: str) -> bool:
    return marker.evaluate({"extra": extra})


def runtime_pins(root: Path = ROOT) -> list[str]:
    """`name==version` for every runtime distribution, at the version requirements.lock pins."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = locked_versions(root / "requirements.lock")
    own = canonicalize_name(project["name"])
    result = []
    for name in sorted(runtime_closure(project["dependencies"]) - {own}):
        if name not in pins:
            sys.exit(f"{name} is a runtime dependency but requirements.lock does not pin it: run `make lock`")
        installed = importlib.metadata.version(name)
        if installed != pins[name]:
            sys.exit(
                f"{name}: requirements.lock pins {pins[name]} but {installed} is installed: run `make setup`"
            )
        result.append(f"{name}=={pins[name]}")
    return result


def build_wheelhouse(wheelhouse: Path, pins: Sequence[str]) -> list[Path]:
    """Exactly these wheels, and the project's, end up in the wheelhouse, so the image gets exactly these.

    Wheels already there at the pinned version are kept (pip is not asked again); any other is removed.
    The project's own wheel is always built afresh.
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wanted = {canonicalize_name(name): Version(version) for name, version in (p.split("==") for p in pins)}
    kept: set[str] = set()
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if wanted.get(name) == version and name not in kept:
            kept.add(name)
        else:
            wheel.unlink()
    missing = [f"{name}=={version}" for name, version in wanted.items() if name not in kept]
    # setuptools builds the project in build/lib and build/bdist.*, and would carry a module deleted
    # from sidecar/ into the wheel from there: start them clean.
    for scratch in [ROOT / "build" / "lib", *(ROOT / "build").glob("bdist.*")]:
        shutil.rmtree(scratch, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse)]
    for cmd in ([*pip, *missing] if missing else [], [*pip, str(ROOT)]):
        if not cmd:
            continue
        log("$ " + " ".join(cmd))
        # pip's output (warnings about this machine's index settings) is shown only when it fails.
        # A fixed SOURCE_DATE_EPOCH makes the project's wheel the same bytes when the sources are the
        # same, so that docker's layer cache holds across builds.
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"pip wheel failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    wheels = sorted(wheelhouse.glob("*.whl"))
    if len(wheels) != len(pins) + 1:
        sys.exit(f"expected {len(pins) + 1} wheels in {wheelhouse}, found {len(wheels)}")
    if len(kept):
        log(f"{len(kept)} wheels reused from {wheelhouse}")
    return wheels


def strip_wheel(wheel: Path, strip: str) -> int:
    """Remove the symbol tables and debug sections of the wheel's shared libraries (`strip
    --strip-unneeded`: the code and what the dynamic linker needs stay), and put their new sha256 and
    size in RECORD. Returns the bytes saved once installed.

    cryptography's Rust extension ships with its symbol table (14.4 MB, 11.6 MB stripped), httptools'
    Cython parsers with their debug information (1.6 MB, 0.26 MB). The zip is rewritten with the same
    members in the same order, with the same dates, modes and compression, so the result is the same
    bytes every time; a wheel whose libraries strip makes no smaller is left as it is, so a reused
    wheel is not rewritten and docker's layer cache holds.
    """
    with zipfile.ZipFile(wheel) as source:
        infos = source.infolist()
        contents = {info.filename: source.read(info) for info in infos}
    changed: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="metering-strip-") as tmp:
        original, stripped = Path(tmp) / "in.so", Path(tmp) / "out.so"
        for name, data in contents.items():
            if not (name.endswith(".so") or ".so." in name) or not data.startswith(b"\x7fELF"):
                continue
            original.write_bytes(data)
            result = subprocess.run(
                [strip, "--strip-unneeded", "-o", str(stripped), str(original)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:  # e.g. a library for another architecture: it stays as it is
                log(f"strip failed on {name} in {wheel.name}, left as it is: {result.stderr.strip()}")
                continue
            smaller = stripped.read_bytes()
            if len(smaller) < len(data):
                changed[name] = smaller
    if not changed:
        return 0
    # The wheel's own RECORD (top level), a CSV file: paths with a comma are quoted.
    record = next(name for name in contents if re.fullmatch(r"[^/]+\.dist-info/RECORD", name))
    lines = []
    for line in contents[record].decode().splitlines(keepends=True):
        row = next(csv.reader([line]), None)
        if row and row[0] in changed:
            new = changed[row[0]]
            digest = base64.urlsafe_b64encode(hashlib.sha256(new).digest()).rstrip(b"=").decode()
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow([row[0], f"sha256={digest}", len(new)])
            line = out.getvalue() + line[len(line.rstrip("\r\n")) :]  # the line's own ending
        lines.append(line)
    saved = sum(len(contents[name]) - len(data) for name, data in changed.items())
    contents.update(changed)
    contents[record] = "".join(lines).encode()
    fd, scratch = tempfile.mkstemp(prefix=wheel.name + ".", suffix=".tmp", dir=wheel.parent)
    os.close(fd)
    try:
        os.chmod(scratch, wheel.stat().st_mode & 0o777)  # mkstemp's 0600 otherwise
        with zipfile.ZipFile(scratch, "w") as target:
            for info in infos:  # the same ZipInfo: name, date, mode, compression; only sizes and CRCs differ
                target.writestr(info, contents[info.filename])
        os.replace(scratch, wheel)
    except BaseException:
        os.unlink(scratch)
        raise
    return saved


def strip_wheelhouse(wheels: Iterable[Path]) -> None:
    strip = shutil.which("strip")
    if strip is None:
        log("strip (binutils) is not installed: the wheels' shared libraries keep their symbol tables")
        return
    for wheel in wheels:
        saved = strip_wheel(wheel, strip)
        if saved:
            log(f"stripped the shared libraries of {wheel.name}: {mb(saved)} smaller installed")


# --- 3. and 4. the image, its size, and the leftovers of earlier builds -----------------------------


def image_id(image: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def remove_leftovers(tag: str, previous: str | None) -> None:
    """Each build leaves the image the tag pointed to, and its build stage, untagged: remove them, but
    keep the newest build stage, which is the cache of the next build."""
    current = image_id(tag)
    stale: list[str] = []
    if previous and previous != current:
        stale.append(previous)
    stages = output(
        ["docker", "images", "--quiet", "--no-trunc", "--filter", "dangling=true",
         "--filter", "label=metering-sidecar.stage=build"]
    ).split()  # fmt: skip
    stale += stages[1:]  # newest first
    for image in stale:
        # An image that a container still uses stays; that is not an error.
        subprocess.run(["docker", "image", "rm", image], capture_output=True, text=True)
    if stale:
        log(f"removed {len(stale)} image(s) left by earlier builds")


# --- the sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    image: int
    base: int
    layers: list[tuple[int, str]]  # our layers, newest first: (bytes, the instruction)

    @property
    def added(self) -> int:
        return self.image - self.base


def image_size(image: str) -> int:
    return int(output(["docker", "image", "inspect", "-f", "{{.Size}}", image]))


def measure(tag: str, base: str) -> Sizes:
    """Sizes from `docker image inspect`; the layers above the base from `docker history`."""
    base_layers = len(output(["docker", "history", "-q", "--no-trunc", base]).splitlines())
    rows = output(
        ["docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", tag]
    )
    ours = rows.splitlines()[: -base_layers or None]
    layers = []
    for row in ours:
        size, _, created_by = row.partition("\t")
        layers.append((int(size), " ".join(created_by.split())[:100]))
    return Sizes(image_size(tag), image_size(base), layers)


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image to build (default {DEFAULT_TAG})")
    parser.add_argument(
        "--base-image",
        default=LOCAL_BASE,
        help=f"BASE_IMAGE for the Dockerfile; {LOCAL_BASE} (default) is made with debootstrap when missing",
    )
    parser.add_argument(
        "--rebuild-base", action="store_true", help=f"make {LOCAL_BASE} again even if it exists"
    )
    parser.add_argument("--mirror", help="the Debian mirror for debootstrap (default: the one apt uses)")
    parser.add_argument("--size-file", type=Path, default=SIZE_FILE, help="where to write the sizes")
    args = parser.parse_args(argv)

    if shutil.which("docker") is None:
        sys.exit("docker is not installed")
    timings: dict[str, float] = {}
    start = time.monotonic()

    previous_base = image_id(args.base_image)
    if args.base_image == LOCAL_BASE and (args.rebuild_base or previous_base is None):
        mirror = args.mirror or apt_mirror() or DEFAULT_MIRROR
        log(f"making the base image {LOCAL_BASE} from Debian {SUITE} at {mirror}")
        build_local_base(LOCAL_BASE, mirror)
    elif args.base_image == LOCAL_BASE:
        log(f"reusing the base image {LOCAL_BASE} (--rebuild-base to make it again)")
    timings["base"] = time.monotonic() - start

    mark = time.monotonic()
    pins = runtime_pins()
    wheels = build_wheelhouse(WHEELHOUSE, pins)
    strip_wheelhouse(wheels)
    log(f"wheelhouse: {len(wheels)} wheels, {mb(sum(w.stat().st_size for w in wheels))}")
    timings["wheels"] = time.monotonic() - mark

    mark = time.monotonic()
    previous = image_id(args.tag)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    run(
        [
            "docker",
            "build",
            "--network",
            "none",
            "--build-arg",
            f"BASE_IMAGE={args.base_image}",
            "--build-arg",
            f"VERSION={version}",
            "--build-arg",
            f"REVISION={revision or 'unknown'}",
            "--tag",
            args.tag,
            "--file",
            str(ROOT / "Dockerfile"),
            str(ROOT),
        ],
        # The classic builder, unless told otherwise: it needs no buildx plugin (docker.io has none)
        # and builds FROM a local image such as metering-base:bookworm as it is.
        env={**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "0")},
    )
    timings["docker build"] = time.monotonic() - mark
    remove_leftovers(args.tag, previous)
    if previous_base and previous_base != image_id(args.base_image):
        subprocess.run(["docker", "image", "rm", previous_base], capture_output=True, text=True)
    timings["total"] = time.monotonic() - start

    sizes = measure(args.tag, args.base_image)
    log(
        f"image {args.tag}: {mb(sizes.image)}; base {args.base_image}: {mb(sizes.base)}; "
        f"our layers add {mb(sizes.added)}"
    )
    for size, created_by in sizes.layers:
        if size:
            log(f"  {mb(size):>9}  {created_by}")
    log("time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    args.size_file.parent.mkdir(parents=True, exist_ok=True)
    args.size_file.write_text(
        f"image={args.tag}\nbase_image={args.base_image}\nimage_bytes={sizes.image}\n"
        f"base_bytes={sizes.base}\nadded_bytes={sizes.added}\nbuild_seconds={timings['total']:.1f}\n"
    )
    log(f"sizes written to {args.size_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
