"""Server interceptors shared by every Grace server.

`ErrorTranslator` is the one place where `GraceError`s become gRPC statuses and unexpected
exceptions become INTERNAL (logged with their traceback), and where calls that arrive before
the service is ready are turned away with UNAVAILABLE instead of touching unopened storage.

It also decodes requests: grpcio runs the handler's request deserializer itself and turns
any exception from it into a bare UNKNOWN ("Unexpected DecodeError"), so a request that is
not valid protobuf (corrupt wire format, bad UTF-8 in a string field, nesting deeper than
protobuf's limit of 100) would look like a server bug. The translator wraps the deserializer
so such a request reaches the handler as `_Undecodable` and is answered INVALID_ARGUMENT
(reason MALFORMED_REQUEST) with protobuf's own description of the fault.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from services.common.errors import (
    GraceError,
    InvalidArgument,
    Unavailable,
    Unimplemented,
    internal_status,
)

log = logging.getLogger(__name__)

_ALWAYS_READY_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, GraceError):
        status = rpc_status.to_status(exc.to_status())
    else:
        status = rpc_status.to_status(internal_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


class _Undecodable:
    """Stands in for a request message whose bytes protobuf refused."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def invalid(self) -> InvalidArgument:
        return InvalidArgument(
            "request",
            f"is not a valid protobuf message: {self.error}",
            reason="MALFORMED_REQUEST",
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return _Undecodable(exc)

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.invalid()
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _checked_decoding(handler: Any) -> Any:
    """grpcio's own unary-request handlers (health Check and Watch), answering a request
    that is not protobuf with INVALID_ARGUMENT; their behaviour is otherwise untouched."""
    if handler.unary_unary is None and handler.unary_stream is None:
        return handler  # reflection streams its requests: left to grpcio
    behavior = handler.unary_unary or handler.unary_stream

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _abort(context, request.invalid())
        return await behavior(request, context)

    make = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary is not None
        else grpc.unary_stream_rpc_method_handler
    )
    return make(
        checked,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class ErrorTranslator(grpc.aio.ServerInterceptor):
    """Translates errors to statuses and gates calls on readiness.

    Args:
        is_ready: Returns True once the service's storage is open and it may serve.
        always_ready: Full method names served while the service starts, too.
    """

    def __init__(
        self, is_ready: Callable[[], bool], always_ready: frozenset[str] = frozenset()
    ) -> None:
        self._is_ready = is_ready
        self._always_ready = always_ready

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        if method.startswith(_ALWAYS_READY_PREFIXES):
            # Health and reflection are grpcio's own servicers: always available, never
            # raising GraceError, and their streams write with context.write().
            return _checked_decoding(handler)  # type: ignore[no-any-return]  # untyped handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, streaming_request=False),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, streaming_request=False),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, streaming_request=True),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, streaming_request=True),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # type: ignore[no-any-return]  # grpc's handler is untyped here

    def _check_ready(self, method: str) -> None:
        if method not in self._always_ready and not self._is_ready():
            raise Unavailable("service is starting or shutting down; retry shortly")

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, *, streaming_request: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                self._check_ready(method)
                request = _decoded_stream(request) if streaming_request else _decoded(request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except GraceError as exc:
                await _abort(context, exc)
            except NotImplementedError:
                await _abort(context, Unimplemented(f"{method} is not implemented by this server"))
            except Exception as exc:
                log.exception("unexpected error in %s", method)
                await _abort(context, exc)
            return None  # unreachable: abort raises

        return wrapper

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, *, streaming_request: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                self._check_ready(method)
                request = _decoded_stream(request) if streaming_request else _decoded(request)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except GraceError as exc:
                await _abort(context, exc)
            except NotImplementedError:
                await _abort(context, Unimplemented(f"{method} is not implemented by this server"))
            except Exception as exc:
                log.exception("unexpected error in %s", method)
                await _abort(context, exc)

        return wrapper
