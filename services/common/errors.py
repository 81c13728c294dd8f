"""The one error tree of Grace, and its translation to gRPC status codes.

Cores raise these errors with structured fields; `ErrorTranslator` (in `interceptors`) is
the only place that turns them into a gRPC status. Each error also becomes a
`google.rpc.Status` with an `ErrorInfo` detail (and a `BadRequest` for invalid arguments),
so clients in any language, and the gateway, can read the reason and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "grace"


class GraceError(Exception):
    """Root of every error a Grace core raises on purpose.

    Attributes:
        message: Human-readable text; names the field and the rule broken.
        reason: Stable UPPER_SNAKE identifier clients can branch on.
        metadata: Structured context (ids, field names, limits).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status carried in the call's trailing metadata."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
        return status


class InvalidArgument(GraceError):
    """A request field breaks a rule; `field` names it (dotted path for nested fields)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {rule}", reason=reason, metadata={"field": field})
        self.field = field
        self.rule = rule

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.rule)
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
        return status


class NotFound(GraceError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(
            f"{kind} {resource_id!r} not found",
            reason=f"{kind.upper()}_NOT_FOUND",
            metadata={"kind": kind, "id": resource_id},
        )
        self.kind = kind
        self.resource_id = resource_id


class AlreadyExists(GraceError):
    """A resource with this id exists and the request may not replace it."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"

    def __init__(self, kind: str, resource_id: str, detail: str = "") -> None:
        text = f"{kind} {resource_id!r} already exists"
        super().__init__(
            f"{text}: {detail}" if detail else text,
            reason=f"{kind.upper()}_ALREADY_EXISTS",
            metadata={"kind": kind, "id": resource_id},
        )


class FailedPrecondition(GraceError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(GraceError):
    """Policy forbids the operation (for example a governance deny)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(GraceError):
    """The caller's identity or signature could not be established."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(GraceError):
    """A limit was reached (size, rate, quota)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(GraceError):
    """A peer or the service itself cannot serve right now; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Aborted(GraceError):
    """A concurrent change conflicted with this one; retry the whole operation."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unimplemented(GraceError):
    """This server does not serve the method (a servicer that leaves one of its contract's
    methods to the generated base class, which raises NotImplementedError)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


def internal_status(message: str = "internal error") -> status_pb2.Status:
    """The status sent for an unexpected exception: INTERNAL, never a bare UNKNOWN."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)
