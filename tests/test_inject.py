"""`metering-sidecar inject`: every workload kind, idempotence, opt-out, untouched documents, strict schemas."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.inject import CONTAINER, InjectOptions, container, inject_document, inject_stream, pod_template

OPTIONS = InjectOptions(product_code="prod-abc123", dimensions=("requests", "storage_gb"))
POD_SPEC = {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
TEMPLATE = {"metadata": {"labels": {"app": "demo"}}, "spec": POD_SPEC}
SELECTOR = {"matchLabels": {"app": "demo"}}
WORKLOADS: dict[str, dict[str, Any]] = {
    "Deployment": {"apiVersion": "apps/v1", "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "StatefulSet": {
        "apiVersion": "apps/v1",
        "spec": {"selector": SELECTOR, "serviceName": "demo", "template": TEMPLATE},
    },
    "DaemonSet": {"apiVersion": "apps/v1", "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "ReplicaSet": {"apiVersion": "apps/v1", "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "Job": {
        "apiVersion": "batch/v1",
        "spec": {"template": {**TEMPLATE, "spec": {**POD_SPEC, "restartPolicy": "Never"}}},
    },
    "CronJob": {
        "apiVersion": "batch/v1",
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {
                "spec": {"template": {**TEMPLATE, "spec": {**POD_SPEC, "restartPolicy": "OnFailure"}}}
            },
        },
    },
    "Pod": {"apiVersion": "v1", "spec": POD_SPEC},
}


def workload(kind: str) -> dict[str, Any]:
    doc = {"kind": kind, "metadata": {"name": f"demo-{kind.lower()}"}, **copy.deepcopy(WORKLOADS[kind])}
    return {"apiVersion": doc.pop("apiVersion"), **doc}


def stream(*docs: dict[str, Any]) -> str:
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def validate(text: str, version: str, tmp_path: Path) -> None:
    path = tmp_path / f"render-{version}.yaml"
    path.write_text(text)
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(cli), "--strict", "--quiet", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_every_workload_kind_gets_a_native_sidecar(kind: str) -> None:
    doc = workload(kind)
    assert inject_document(doc, OPTIONS) == "injected"
    spec = pod_template(doc)["spec"]  # type: ignore[index]
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == CONTAINER and sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert {v["name"] for v in spec["volumes"]} == {"metering-state", "metering-public-key"}
    assert spec["terminationGracePeriodSeconds"] == 45
    assert pod_template(doc)["metadata"]["annotations"]["metering-sidecar.io/injected"] == "true"  # type: ignore[index]


def test_the_injected_output_passes_strict_kubernetes_schemas(tmp_path: Path) -> None:
    docs = [workload(kind) for kind in sorted(WORKLOADS)]
    native, _ = inject_stream(stream(*docs), OPTIONS)
    for version in ("1.29", "1.33", "1.37"):
        validate(native, version, tmp_path)
    plain, _ = inject_stream(stream(*docs), InjectOptions(product_code="prod-abc123", mode="plain"))
    validate(plain, "1.28", tmp_path)


def test_plain_mode_adds_a_regular_container() -> None:
    doc = workload("Deployment")
    inject_document(doc, InjectOptions(product_code="p", mode="plain"))
    spec = doc["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == [CONTAINER, "app"]  # first, as the Helm chart puts it
    assert "restartPolicy" not in spec["containers"][0]


def test_injecting_twice_changes_nothing() -> None:
    once, report = inject_stream(stream(workload("Deployment"), workload("CronJob")), OPTIONS)
    twice, again = inject_stream(once, OPTIONS)
    assert twice == once
    assert [what for _, what in report] == ["injected", "injected"]
    assert [what for _, what in again] == ["already", "already"]


@pytest.mark.parametrize("where", ["workload", "template"])
def test_opt_out_annotation(where: str) -> None:
    doc = workload("Deployment")
    target = doc if where == "workload" else doc["spec"]["template"]
    target["metadata"]["annotations"] = {"metering-sidecar.io/inject": "false"}
    before = copy.deepcopy(doc)
    assert inject_document(doc, OPTIONS) == "opted-out"
    assert doc == before


def test_other_documents_are_copied_exactly() -> None:
    config_map = "# keep this comment\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg  # and this one\ndata: {a: '1'}\n"
    service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n"
    text = config_map + "---\n" + yaml.safe_dump(workload("Deployment")) + service
    out, report = inject_stream(text, OPTIONS)
    assert out.startswith(config_map)
    assert out.endswith(service)
    assert [what for _, what in report] == ["skipped", "injected", "skipped"]


def test_existing_volumes_and_a_longer_grace_are_kept() -> None:
    doc = workload("Deployment")
    spec = doc["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "metering-state", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
    spec["terminationGracePeriodSeconds"] = 120
    inject_document(doc, OPTIONS)
    assert [v["name"] for v in spec["volumes"]] == ["metering-state", "data", "metering-public-key"]
    assert spec["terminationGracePeriodSeconds"] == 120


def test_the_container_follows_the_contract() -> None:
    c = container(InjectOptions(product_code="p", dimensions=("a", "b"), api_token_secret="tok"))
    env = {e["name"]: e for e in c["env"]}
    assert list(env) == [
        "METERING_PRODUCT_CODE", "METERING_PUBLIC_KEY_VERSION", "METERING_PUBLIC_KEY_FILE", "METERING_DIMENSIONS",
        "METERING_LISTEN", "METERING_PROBE_LISTEN", "METERING_STATE_DIR", "METERING_SHUTDOWN_GRACE",
        "METERING_LOG_FORMAT", "METERING_POD_NAME", "METERING_POD_UID", "METERING_API_TOKEN",
    ]  # fmt: skip
    assert env["METERING_DIMENSIONS"]["value"] == "a,b"
    assert env["METERING_LISTEN"]["value"] == "127.0.0.1:8787"
    assert env["METERING_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["METERING_API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "tok", "key": "token"}}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reads_stdin_and_files(tmp_path: Path) -> None:
    text = stream(workload("Deployment"))
    result = run_cli("--product-code", "prod-abc123", "--dimensions", "requests", stdin=text)
    assert result.returncode == 0, result.stderr
    assert "<stdin>: Deployment/demo-deployment: injected" in result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    assert out[0]["spec"]["template"]["spec"]["initContainers"][0]["name"] == CONTAINER
    (tmp_path / "a.yaml").write_text(text)
    from_file = run_cli(
        "-f", str(tmp_path / "a.yaml"), "--product-code", "prod-abc123", "--dimensions", "requests"
    )
    assert from_file.stdout == result.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--product-code", "bad code!"], "", "--product-code"),
        (["--product-code", "p"], "kind: [unclosed", "not valid YAML"),
        (["--product-code", "p", "-f", "/nonexistent/x.yaml"], "", "cannot read it"),
    ],
)
def test_cli_errors(args: list[str], stdin: str, message: str) -> None:
    result = run_cli(*args, stdin=stdin)
    assert result.returncode == 2 and message in result.stderr
    assert result.stdout == ""


# The Helm chart's golden renders (tests/golden/helm, kept equal to real `helm template` output by
# tests/test_helm.py). inject must produce the same sidecar, so the two ways cannot drift apart.
GOLDEN = Path(__file__).resolve().parent / "golden" / "helm"
HELM_CASES = {
    "native": InjectOptions(
        product_code="prod-abc123example", dimensions=("requests", "storage_gb"),
        public_key_configmap="shop-metering-public-key", service_account="shop-metering-sidecar",
    ),
    "native-hourly-token": InjectOptions(
        product_code="prod-abc123example", public_key_configmap="shop-metering-public-key",
        api_token_secret="shop-metering-api-token", service_account="shop-metering-sidecar",
    ),
    "plain": InjectOptions(
        product_code="prod-abc123example", dimensions=("requests", "storage_gb"), mode="plain",
        public_key_configmap="shop-metering-public-key", api_token_secret="shop-metering-api-token",
        service_account="shop-metering-sidecar",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HELM_CASES))
def test_inject_gives_the_same_pod_as_the_helm_chart(case: str) -> None:
    options = HELM_CASES[case]
    rendered = next(
        d
        for d in yaml.safe_load_all((GOLDEN / f"{case}.yaml").read_text())
        if d and d["kind"] == "Deployment"
    )
    helm_spec = rendered["spec"]["template"]["spec"]
    listed = "initContainers" if options.mode == "native" else "containers"
    helm_sidecar = next(c for c in helm_spec[listed] if c["name"] == CONTAINER)
    assert container(options) == helm_sidecar

    # The rest of the pod: strip the sidecar's parts from the chart's render, inject them again.
    bare = copy.deepcopy(rendered)
    spec = bare["spec"]["template"]["spec"]
    spec[listed] = [c for c in spec[listed] if c["name"] != CONTAINER]
    if not spec[listed]:
        del spec[listed]
    spec["volumes"] = [v for v in spec["volumes"] if not v["name"].startswith("metering-")]
    spec.pop("terminationGracePeriodSeconds")
    assert inject_document(bare, options) == "injected"
    injected = bare["spec"]["template"]["spec"]
    assert injected[listed] == helm_spec[listed]
    assert sorted(injected["volumes"], key=str) == sorted(helm_spec["volumes"], key=str)
    assert injected["terminationGracePeriodSeconds"] == helm_spec["terminationGracePeriodSeconds"]
    assert injected["serviceAccountName"] == helm_spec["serviceAccountName"]
    annotations = rendered["spec"]["template"]["metadata"]["annotations"]
    assert annotations["metering-sidecar.io/injected"] == "true"
