"""A Helm post-renderer for the kind end-to-end test (tests/test_helm.py): puts the emulator in the pod.

There is no AWS and no IRSA in kind. So, in every Deployment that has the metering sidecar, this adds the
emulator as the first native sidecar, listening on the pod's loopback (127.0.0.1:8790) and signing with the
private key in the Secret `emulator-key`, and points the metering sidecar at it: the Metering endpoint, and
the emulator's container-credentials route (botocore accepts a loopback FULL_URI).

Usage (by helm): python kind_post_renderer.py IMAGE < rendered.yaml > changed.yaml
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

EMULATOR = "http://127.0.0.1:8790"


def add_emulator(pod: dict[str, Any], image: str) -> None:
    spec = pod["spec"]
    sidecar = next(c for c in spec.get("initContainers", []) if c["name"] == "metering-sidecar")
    env = {e["name"]: e.get("value", "") for e in sidecar["env"]}
    args = ["emulator", "--host", "127.0.0.1", "--port", "8790", "--region", "us-east-1"]
    args += ["--product-code", env["METERING_PRODUCT_CODE"], "--private-key", "/emulator/private-key.pem"]
    for dimension in filter(None, env["METERING_DIMENSIONS"].split(",")):
        args += ["--dimension", dimension]
    emulator = {
        "name": "metering-emulator",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "args": args,
        "securityContext": sidecar["securityContext"],
        "volumeMounts": [{"name": "emulator-key", "mountPath": "/emulator", "readOnly": True}],
    }
    spec["initContainers"].insert(0, emulator)
    spec["volumes"].append({"name": "emulator-key", "secret": {"secretName": "emulator-key"}})
    sidecar["env"] += [
        {"name": "AWS_REGION", "value": "us-east-1"},
        {"name": "AWS_ENDPOINT_URL_MARKETPLACE_METERING", "value": EMULATOR},
        {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": f"{EMULATOR}/_emulator/credentials"},
        {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN", "value": "kind-e2e"},
    ]


def main(argv: list[str]) -> int:
    (image,) = argv
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    for doc in docs:
        if doc.get("kind") == "Deployment":
            add_emulator(doc["spec"]["template"], image)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
