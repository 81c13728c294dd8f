"""Server interceptors shared by every Grace server.

`ErrorTranslator` is the one place where `GraceError`s become gRPC statuses and unexpected
exceptions become INTERNAL (logged with their traceback), and where calls that arrive before
the service is ready are turned away with UNAVAILABLE instead of touching unopened storage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from services.common.errors import GraceError, Unavailable, internal_status

log = logging.getLogger(__name__)

_ALWAYS_READY_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, GraceError):
        status = rpc_status.to_status(exc.to_status())
    else:
        status = rpc_status.to_status(internal_status())
    await context.abort(status.code, status.details, status.trailing_metadata)


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
        if handler is None or method.startswith(_ALWAYS_READY_PREFIXES):
            # Health and reflection are grpcio's own servicers: always available, never
            # raising GraceError, and their streams write with context.write().
            return handler  # type: ignore[no-any-return]  # grpc's handler is untyped here
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # type: ignore[no-any-return]  # grpc's handler is untyped here

    def _check_ready(self, method: str) -> None:
        if method not in self._always_ready and not self._is_ready():
            raise Unavailable("service is starting or shutting down; retry shortly")

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                self._check_ready(method)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except GraceError as exc:
                await _abort(context, exc)
            except Exception as exc:
                log.exception("unexpected error in %s", method)
                await _abort(context, exc)
            return None  # unreachable: abort raises

        return wrapper

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                self._check_ready(method)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except GraceError as exc:
                await _abort(context, exc)
            except Exception as exc:
                log.exception("unexpected error in %s", method)
                await _abort(context, exc)

        return wrapper
