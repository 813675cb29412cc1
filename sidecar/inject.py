"""`metering-sidecar inject`: add the sidecar to plain Kubernetes manifests, like `linkerd inject`.

The container is built with the kubernetes client's own models, to the same contract as the Helm chart's
`metering-sidecar.container` template (a test renders the chart and compares). Injection is idempotent
(a pod that already has the sidecar is left alone), honours the opt-out annotation, and leaves every
other document exactly as it was written, comments included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.client import (
    ApiClient,
    V1Capabilities,
    V1ConfigMapVolumeSource,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1HTTPGetAction,
    V1KeyToPath,
    V1ObjectFieldSelector,
    V1Probe,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Volume,
    V1VolumeMount,
)

CONTAINER = "metering-sidecar"
INJECT_ANNOTATION = "metering-sidecar.io/inject"
INJECTED_ANNOTATION = "metering-sidecar.io/injected"
STATE_VOLUME = "metering-state"
KEY_VOLUME = "metering-public-key"
# The sidecar needs up to METERING_SHUTDOWN_GRACE (20 s) after SIGTERM to send the last records.
GRACE_SECONDS = 45
UID = 65532
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
DOCUMENT_START = re.compile(r"^---(?:[ \t].*)?$", re.MULTILINE)


@dataclass(frozen=True)
class InjectOptions:
    product_code: str
    dimensions: tuple[str, ...] = ()
    public_key_version: int = 1
    public_key_configmap: str = "metering-sidecar-public-key"
    image: str = "metering-sidecar:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    mode: str = "native"  # native (an init container with restartPolicy Always, k8s >= 1.29) or plain
    api_token_secret: str | None = None
    service_account: str | None = None


def container(options: InjectOptions) -> dict[str, Any]:
    """The sidecar container, as the Helm chart renders it."""
    env = [
        V1EnvVar(name="METERING_PRODUCT_CODE", value=options.product_code),
        V1EnvVar(name="METERING_PUBLIC_KEY_VERSION", value=str(options.public_key_version)),
        V1EnvVar(name="METERING_PUBLIC_KEY_FILE", value="/etc/metering/public-key.pem"),
        V1EnvVar(name="METERING_DIMENSIONS", value=",".join(options.dimensions)),
        V1EnvVar(name="METERING_LISTEN", value="127.0.0.1:8787"),
        V1EnvVar(name="METERING_PROBE_LISTEN", value="0.0.0.0:8788"),
        V1EnvVar(name="METERING_STATE_DIR", value="/var/lib/metering"),
        V1EnvVar(name="METERING_SHUTDOWN_GRACE", value="20"),
        V1EnvVar(name="METERING_LOG_FORMAT", value="json"),
        V1EnvVar(
            name="METERING_POD_NAME",
            value_from=V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path="metadata.name")),
        ),
        V1EnvVar(
            name="METERING_POD_UID",
            value_from=V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path="metadata.uid")),
        ),
    ]
    if options.api_token_secret:
        env.append(
            V1EnvVar(
                name="METERING_API_TOKEN",
                value_from=V1EnvVarSource(
                    secret_key_ref=V1SecretKeySelector(name=options.api_token_secret, key="token")
                ),
            )
        )
    model = V1Container(
        name=CONTAINER,
        image=options.image,
        image_pull_policy=options.image_pull_policy,
        args=["run"],
        env=env,
        ports=[V1ContainerPort(name="probes", container_port=8788, protocol="TCP")],
        # AWS's 30-minute retry window for RegisterUsage: 900 probes, 2 s apart.
        startup_probe=V1Probe(
            http_get=V1HTTPGetAction(path="/readyz", port="probes"), period_seconds=2, failure_threshold=900
        ),
        readiness_probe=V1Probe(http_get=V1HTTPGetAction(path="/readyz", port="probes"), period_seconds=10),
        liveness_probe=V1Probe(
            http_get=V1HTTPGetAction(path="/healthz", port="probes"), period_seconds=10, failure_threshold=3
        ),
        resources=V1ResourceRequirements(
            requests={"cpu": "10m", "memory": "64Mi"}, limits={"cpu": "200m", "memory": "128Mi"}
        ),
        security_context=V1SecurityContext(
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=V1Capabilities(drop=["ALL"]),
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=[
            V1VolumeMount(name=STATE_VOLUME, mount_path="/var/lib/metering"),
            V1VolumeMount(name=KEY_VOLUME, mount_path="/etc/metering", read_only=True),
        ],
        restart_policy="Always" if options.mode == "native" else None,
    )
    result: dict[str, Any] = ApiClient().sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    return result


def volumes(options: InjectOptions) -> list[dict[str, Any]]:
    models = [
        V1Volume(name=STATE_VOLUME, empty_dir=V1EmptyDirVolumeSource(size_limit="64Mi")),
        V1Volume(
            name=KEY_VOLUME,
            config_map=V1ConfigMapVolumeSource(
                name=options.public_key_configmap,
                items=[V1KeyToPath(key="public-key.pem", path="public-key.pem")],
            ),
        ),
    ]
    result: list[dict[str, Any]] = ApiClient().sanitize_for_serialization(models)  # type: ignore[no-untyped-call]
    return result


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (the whole object for a Pod), or None."""
    kind = doc.get("kind")
    if kind not in POD_KINDS:
        return None
    if kind == "Pod":
        return doc
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template")
    return template if isinstance(template, dict) else None


def _opted_out(*objects: dict[str, Any]) -> bool:
    for obj in objects:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get(INJECT_ANNOTATION, "")).lower() in ("false", "no", "off", "disabled"):
            return True
    return False


def inject_document(doc: dict[str, Any], options: InjectOptions) -> str:
    """Adds the sidecar in place. Returns what happened: injected, already, opted-out or skipped."""
    template = pod_template(doc)
    if template is None:
        return "skipped"
    if _opted_out(doc, template):
        return "opted-out"
    spec = template.setdefault("spec", {})
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    if CONTAINER in names:
        return "already"
    if options.mode == "native":
        # First, so that it is up (and entitled: its startupProbe) before any other init container runs.
        spec["initContainers"] = [container(options), *(spec.get("initContainers") or [])]
    else:
        spec["containers"] = [container(options), *(spec.get("containers") or [])]
    existing = {v.get("name") for v in spec.get("volumes") or []}
    spec["volumes"] = [
        *(spec.get("volumes") or []),
        *(v for v in volumes(options) if v["name"] not in existing),
    ]
    spec["terminationGracePeriodSeconds"] = max(
        int(spec.get("terminationGracePeriodSeconds") or 30), GRACE_SECONDS
    )
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    metadata = template.setdefault("metadata", {})
    metadata.setdefault("annotations", {})[INJECTED_ANNOTATION] = "true"
    return "injected"


def split_documents(text: str) -> list[str]:
    """Split a YAML stream on `---` lines, keeping each document's text exactly."""
    parts: list[str] = []
    start = 0
    for match in DOCUMENT_START.finditer(text):
        if match.start() > start or parts:
            parts.append(text[start : match.start()])
        start = match.start()
    parts.append(text[start:])
    return [p for p in parts if p.strip()] or [text]


def inject_stream(text: str, options: InjectOptions) -> tuple[str, list[tuple[str, str]]]:
    """Inject into every workload of a multi-document YAML stream. Returns the new stream and a report
    (kind/name, what happened). Raises yaml.YAMLError for input that is not YAML."""
    out: list[str] = []
    report: list[tuple[str, str]] = []
    for chunk in split_documents(text):
        body = DOCUMENT_START.sub("", chunk, count=1) if DOCUMENT_START.match(chunk) else chunk
        doc = yaml.safe_load(body)
        if not isinstance(doc, dict):
            out.append(chunk)
            continue
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        what = inject_document(doc, options)
        report.append((name, what))
        if what == "injected":
            out.append("---\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        else:
            out.append(chunk if chunk.startswith("---") or not out else "---\n" + chunk)
    return "".join(part if part.endswith("\n") else part + "\n" for part in out), report
