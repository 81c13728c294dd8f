"""Errors as the gateway sends them: gRPC status -> HTTP status and the JSON error body.

Every error body has the AIP-193 shape

    {"error": {"code": <http status>, "status": "<GRPC_CODE>", "message": "...",
               "details": [...]}}

where `details` are the `google.rpc.Status` details the upstream attached in its
`grpc-status-details-bin` trailer (Grace servers attach `ErrorInfo` and, for invalid
arguments, `BadRequest`), each in its JSON form with an `@type`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

# Importing error_details_pb2 puts ErrorInfo, BadRequest, ... in the descriptor pool, so the
# Any details of a Status can be rendered as JSON.
_DETAIL_TYPES = error_details_pb2

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# The gRPC code name reported for errors the gateway itself raises, by HTTP status.
_STATUS_NAME_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class HttpError(Exception):
    """An error answered to the HTTP client.

    Attributes:
        http_status: The HTTP status code.
        status: The gRPC code name (`NOT_FOUND`).
        message: Human-readable text naming the field or resource.
        details: JSON details (google.rpc error details with `@type`).
        headers: Extra response headers (`Allow` for 405).
    """

    def __init__(
        self,
        http_status: int,
        message: str,
        *,
        status: str | None = None,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status or _STATUS_NAME_FOR_HTTP.get(http_status, "UNKNOWN")
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "error": {
                "code": self.http_status,
                "status": self.status,
                "message": self.message,
                "details": self.details,
            }
        }


def bad_request(field: str, description: str) -> HttpError:
    """A 400 whose details carry a `BadRequest` naming the field, like Grace servers send."""
    violation = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }
    message = f"{field}: {description}" if field else description
    return HttpError(400, message, details=[violation] if field else [])


def decode_details(trailing: Any) -> list[dict[str, Any]]:
    """The JSON details of the google.rpc.Status in a call's trailing metadata, if any."""
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer must not turn an error into a 500
            log.warning("undecodable %s trailer ignored", STATUS_DETAILS_KEY)
            return []
        details: list[dict[str, Any]] = []
        for detail in status.details:
            try:
                details.append(json_format.MessageToDict(detail))
            except (json_format.Error, TypeError, KeyError):
                details.append({"@type": detail.type_url})
        return details
    return []


def from_rpc_error(error: grpc.aio.AioRpcError, upstream: str) -> HttpError:
    """The HTTP error for a failed upstream call."""
    code = error.code()
    message = error.details() or code.name
    if code is grpc.StatusCode.UNAVAILABLE and not decode_details(error.trailing_metadata()):
        # No Grace status details: the upstream itself is unreachable, not refusing.
        message = f"{upstream} is unavailable: {message}"
    return HttpError(
        HTTP_STATUS.get(code, 500),
        message,
        status=code.name,
        details=decode_details(error.trailing_metadata()),
    )
