"""AWS errors as the Metering Service sends them: `{"__type", "message"}` plus an HTTP status.

Status codes: ThrottlingException 400 and InternalServiceErrorException 500, IdempotencyConflictException
409 (SDK-generated fixtures, reference/aws-metering-semantics.md §4.3). The other modeled errors are
Smithy `client` errors, so 400 (reference §1.4).
"""

from __future__ import annotations

STATUS_BY_TYPE = {
    "InternalServiceErrorException": 500,
    "IdempotencyConflictException": 409,
}

# Errors raised by the AWS front door before the service sees the request (SigV4, JSON decoding).
# Coral-based JSON services prefix them with their namespace; botocore keeps what follows '#'.
CORAL_TYPES = {
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "SerializationException",
    "UnknownOperationException",
    "ValidationException",
    "AccessDeniedException",
}


class AwsError(Exception):
    """An error answered on the wire. `type` is the modeled shape name."""

    def __init__(self, type_: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message
        self.status = status if status is not None else STATUS_BY_TYPE.get(type_, 400)

    def body(self) -> dict[str, str]:
        wire_type = f"com.amazon.coral.service#{self.type}" if self.type in CORAL_TYPES else self.type
        return {"__type": wire_type, "message": self.message}
