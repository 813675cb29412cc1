"""boto3 at the edge: the Metering client, the credential source, and one place that classifies errors.

Credentials come only from boto3's default chain (IRSA on EKS, the task role on ECS); the sidecar has no
credential code of its own. It does look at the environment to warn about set-ups AWS refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

# EKS Pod Identity's agent addresses (reference §5.2).
POD_IDENTITY_HOSTS = {"169.254.170.23", "fd00:ec2::23", "[fd00:ec2::23]"}

# What botocore's credential `method` means for AWS Marketplace (reference §5.1, §5.3).
SOURCES = {
    "assume-role-with-web-identity": "IRSA (web identity: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)",
    "container-role": "container credentials (the ECS task role)",
    "env": "static keys from AWS_ACCESS_KEY_ID",
    "iam-role": "the EC2 instance profile (a node role)",
    "shared-credentials-file": "the shared credentials file",
    "config-file": "the AWS config file",
    "assume-role": "an assume-role profile",
}

# Errors worth retrying: throttling, AWS's own internal error, 5xx, and the network (reference §1.4, §2.4).
RETRYABLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalServiceErrorException",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
}


def pod_identity_warnings(env: Mapping[str, str]) -> list[str]:
    warnings = []
    full_uri = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
    if full_uri and urlparse(full_uri).hostname in POD_IDENTITY_HOSTS:
        if env.get("AWS_ROLE_ARN") and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            warnings.append(
                "EKS Pod Identity is configured next to IRSA; boto3 uses IRSA first, which is what AWS Marketplace needs. "
                "Remove the Pod Identity association to avoid confusion."
            )
        else:
            warnings.append(
                "EKS Pod Identity credentials are configured, but AWS Marketplace does not accept them for "
                "RegisterUsage or MeterUsage (reference: 'Using EKS Pod Identity ... is not supported'). Use IRSA: "
                "annotate the pod's ServiceAccount with eks.amazonaws.com/role-arn and remove the Pod Identity association."
            )
    if env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_SESSION_TOKEN"):
        warnings.append(
            "AWS_ACCESS_KEY_ID is set: long-term access keys are not supported by AWS Marketplace metering. "
            "Use IRSA on EKS or the task role on ECS."
        )
    return warnings


@dataclass(frozen=True)
class AwsSetup:
    client: Any
    region: str
    credential_method: str | None  # botocore's name for the source, None when no credentials were found

    @property
    def credential_source(self) -> str:
        if self.credential_method is None:
            return "none found"
        return SOURCES.get(self.credential_method, self.credential_method)


def metering_client(region: str) -> AwsSetup:
    """A Metering client through boto3's default chain; endpoint overrides are boto3's own variables."""
    session = boto3.session.Session(region_name=region)
    credentials = session.get_credentials()
    client = session.client(
        "meteringmarketplace",
        region_name=region,
        # One retry policy, ours (sidecar.retry): botocore's own retries are off, so that every attempt is
        # seen, classified and logged in one place.
        config=BotoConfig(
            retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=10
        ),
    )
    return AwsSetup(client, region, None if credentials is None else credentials.method)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Message") or exc)
    return str(exc)


def is_retryable(exc: BaseException) -> bool:
    """The one place that decides: retry (throttling, 5xx, network) or give up."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_code(exc) in RETRYABLE_CODES or status >= 500
    # Connection refused or dropped, timeouts, and a credential endpoint that did not answer in time.
    return isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.CredentialRetrievalError,
    )


# What to do with a MeterUsage answer that is not a success (reference §2.4).
RETRY, DUPLICATE, CARRY, REJECT = "retry", "duplicate", "carry", "reject"


def meter_outcome(exc: BaseException) -> str:
    """The one place that classifies MeterUsage failures.

    retry      throttling, 5xx, network: resend the same frozen request later
    duplicate  AWS already has a different quantity for this pod, dimension and hour: never resend
    carry      the hour is outside AWS's window and was not recorded: its usage moves to the open hour
    reject     AWS refuses this record for good (bad dimension, tags, entitlement...): keep it, show it
    """
    if is_retryable(exc):
        return RETRY
    code = error_code(exc)
    if code in ("DuplicateRequestException", "IdempotencyConflictException"):
        return DUPLICATE
    if code == "TimestampOutOfBoundsException":
        return CARRY
    return REJECT
