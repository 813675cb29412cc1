"""Item 8: what our layers add on top of the base image (docker, or build/image-size.txt)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from bench.procs import ROOT

IMAGE = "metering-sidecar:test"
IMAGE_SIZE_FILE = ROOT / "build" / "image-size.txt"


def _docker_size(image: str) -> int | None:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True
    )
    return int(out.stdout.strip()) if out.returncode == 0 else None


def measure_image(build: bool) -> tuple[int, int, str] | None:
    """(bytes our layers add, base bytes, where from); None when there is no docker and no size file."""
    facts: dict[str, str] = {}
    if IMAGE_SIZE_FILE.exists():
        facts = dict(line.split("=", 1) for line in IMAGE_SIZE_FILE.read_text().splitlines() if "=" in line)
    if shutil.which("docker"):
        if build:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "build_image.py")], check=True)
            facts = dict(
                line.split("=", 1) for line in IMAGE_SIZE_FILE.read_text().splitlines() if "=" in line
            )
        image = facts.get("image", IMAGE)
        base = facts.get("base_image", "metering-base:bookworm")
        image_bytes, base_bytes = _docker_size(image), _docker_size(base)
        if image_bytes is not None and base_bytes is not None:
            return image_bytes - base_bytes, base_bytes, f"docker image inspect {image} and {base}"
    if "added_bytes" in facts:
        return int(facts["added_bytes"]), int(facts["base_bytes"]), f"{IMAGE_SIZE_FILE.relative_to(ROOT)}"
    return None
