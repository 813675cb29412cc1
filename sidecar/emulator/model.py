"""botocore's own service model for `meteringmarketplace`, and its parameter validator.

The emulator validates every request with the same model and validator that boto3 uses on the client
side (required members, types, minimums, unknown members). What that validator does not check
(maximums, patterns, cross-field rules) lives in `rules`.
"""

from __future__ import annotations

import functools
from typing import Any

import botocore.session
from botocore.validate import ParamValidator

from sidecar.emulator.errors import AwsError

SERVICE = "meteringmarketplace"
TARGET_PREFIX = "AWSMPMeteringService"
SIGNING_NAME = "aws-marketplace"
OPERATIONS = ("RegisterUsage", "MeterUsage", "BatchMeterUsage", "ResolveCustomer")


@functools.cache
def service_model() -> Any:
    return botocore.session.get_session().get_service_model(SERVICE)


def input_shape(operation: str) -> Any:
    return service_model().operation_model(operation).input_shape


def validate_with_botocore(operation: str, params: dict[str, Any]) -> None:
    """Raise the error AWS's front door gives for a request the model refuses.

    A wrong JSON type is a deserialization failure (SerializationException); a missing required
    member, an unknown member or a value under its minimum is a ValidationException.
    """
    try:
        report = ParamValidator().validate(params, input_shape(operation))
    except RuntimeError as err:
        # botocore's timestamp parser raises, instead of reporting, for numbers too large for a date.
        raise AwsError("SerializationException", f"Cannot read a timestamp: {err}") from None
    if not report.has_errors():
        return
    # botocore keeps the structured errors in a private list; we read it only to classify them.
    reasons = {reason for reason, _name, _extra in report._errors}
    text = report.generate_report().replace("\n", "; ")
    if "invalid type" in reasons:
        raise AwsError("SerializationException", text)
    count = len(report._errors)
    raise AwsError(
        "ValidationException", f"{count} validation error{'s' if count > 1 else ''} detected: {text}"
    )
