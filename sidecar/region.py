"""Which AWS Region the pod or task runs in. Never a default: a wrong Region is refused by AWS.

Order: AWS_REGION, then AWS_DEFAULT_REGION, then the ECS task metadata endpoint v4
(reference/aws-metering-semantics.md §5.5). botocore itself reads only AWS_DEFAULT_REGION, so the
sidecar resolves the Region and passes it explicitly.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class RegionError(RuntimeError):
    pass


def _get_json(url: str) -> Any:
    # The metadata endpoint is link-local on ECS; no proxy may sit in between.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        err.close()  # an error answer holds the open connection until it is closed
        raise


def region_from_task_metadata(task: Any) -> str | None:
    """The Region from an ECS task metadata document: the TaskARN, else the availability zone."""
    if not isinstance(task, Mapping):
        return None  # JSON, but not the task document (a list, a string): no Region in it
    arn = str(task.get("TaskARN") or "")
    parts = arn.split(":")
    if len(parts) > 3 and parts[0] == "arn" and REGION_RE.match(parts[3]):
        return parts[3]
    zone = str(task.get("AvailabilityZone") or "")
    if zone and REGION_RE.match(zone[:-1]):
        return zone[:-1]
    return None


def resolve_region(env: Mapping[str, str], get_json: Callable[[str], Any] = _get_json) -> tuple[str, str]:
    """Returns (region, where it came from). Raises RegionError with what to do."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = env.get(name, "").strip()
        if value:
            if not REGION_RE.match(value):
                raise RegionError(f"{name}={value!r} is not an AWS Region name (for example us-east-1)")
            return value, name
    metadata = env.get("ECS_CONTAINER_METADATA_URI_V4", "").strip()
    if metadata:
        url = metadata.rstrip("/") + "/task"
        last: Exception | None = None
        for _ in range(3):
            try:
                region = region_from_task_metadata(get_json(url))
            # HTTPException: something answered that is not HTTP (BadStatusLine, IncompleteRead).
            except (OSError, ValueError, http.client.HTTPException) as err:
                last = err
                continue
            if region:
                return region, "ECS task metadata"
            raise RegionError(
                f"the ECS task metadata at {url} names no Region (no TaskARN or AvailabilityZone)"
            )
        raise RegionError(f"could not read the ECS task metadata at {url}: {last}")
    raise RegionError(
        "no AWS Region: set AWS_REGION (EKS's IRSA webhook and Fargate set it for you; on ECS with EC2, "
        "the task metadata endpoint gives it). The sidecar never guesses one: AWS refuses calls from the "
        "wrong Region."
    )
