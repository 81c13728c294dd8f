"""Server reflection that documents: descriptors with their proto comments, v1 and v1alpha.

grpcio-reflection serves the descriptors of the generated modules, which protoc's Python
generator strips of comments, and speaks only `grpc.reflection.v1alpha`. Here the same
servicer answers with the descriptors `make generate` keeps with their source info
(`generated/grace/descriptors.binpb`), so `grpcurl describe` prints the API documentation,
and is also registered as `grpc.reflection.v1.ServerReflection`: the v1 messages are the
v1alpha ones under another package name, identical on the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection_pb2

log = logging.getLogger(__name__)

V1ALPHA_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
DESCRIPTOR_SET = "descriptors.binpb"


def contract_descriptors() -> descriptor_pb2.FileDescriptorSet | None:
    """Every contract's descriptor with its comments (source info), as `make generate`
    wrote them next to the generated code; None (warned once) when the set is missing.

    Read at each call and not kept: parsed at start, the set cost every server about
    2.4 MB for the rare `grpcurl describe` or `/openapi.json`; callers keep what they
    build from it instead."""
    try:
        data = (resources.files("grace") / DESCRIPTOR_SET).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        _warn_no_descriptor_set()
        return None
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def source_info(file_name: str) -> descriptor_pb2.SourceCodeInfo | None:
    """The comments (source info) of one contract file, or None (no such file, or the
    descriptor set is missing). A server caches the answers it builds from it (a few kB
    per file asked for)."""
    descriptors = contract_descriptors()
    for file in descriptors.file if descriptors is not None else ():
        if file.name == file_name and file.HasField("source_code_info"):
            info = descriptor_pb2.SourceCodeInfo()
            info.CopyFrom(file.source_code_info)
            return info
    return None


@functools.cache
def _warn_no_descriptor_set() -> None:
    log.warning("no %s: reflection serves descriptors without comments", DESCRIPTOR_SET)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """reflection v1's descriptor: v1alpha's under the v1 package and file name."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    alpha = reflection_pb2.DESCRIPTOR.package
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, V1_PACKAGE)
            method.output_type = method.output_type.replace(alpha, V1_PACKAGE)
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(alpha, V1_PACKAGE)
    proto.options.Clear()
    return proto


class DocumentedReflection:
    """Reflection whose file answers carry the documented descriptors; every other request
    (listing services, extensions) goes to grpcio-reflection's servicer."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._library = reflection_aio.ReflectionServicer(service_names)
        self._pool = descriptor_pool.Default()
        # Serialized answers by file name: what the server really serves, plus comments.
        self._files: dict[str, bytes] = {V1_FILE: _v1_file().SerializeToString()}

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for request in request_iterator:
            names = self._files_for(request)
            if names is None:
                # An async generator at run time (the stubs call it a coroutine).
                answers = cast(
                    AsyncIterator[reflection_pb2.ServerReflectionResponse],
                    self._library.ServerReflectionInfo(_one(request), context),
                )
                async for answer in answers:
                    yield answer
            else:
                yield self._respond(request, names)

    def _files_for(self, request: reflection_pb2.ServerReflectionRequest) -> list[str] | None:
        """The files that answer a file request, or None to let the library answer."""
        kind = request.WhichOneof("message_request")
        if kind == "file_by_filename":
            if request.file_by_filename == V1_FILE:
                return [V1_FILE]
            try:
                return _with_dependencies(self._pool.FindFileByName(request.file_by_filename))
            except KeyError:
                return None
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            if symbol.startswith(V1_PACKAGE + "."):
                return [V1_FILE]
            try:
                return _with_dependencies(self._pool.FindFileContainingSymbol(symbol))
            except KeyError:
                return None
        return None

    def _respond(
        self, request: reflection_pb2.ServerReflectionRequest, names: Sequence[str]
    ) -> reflection_pb2.ServerReflectionResponse:
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._file(name) for name in names]
            ),
            original_request=request,
        )

    def _file(self, name: str) -> bytes:
        """The file as the generated module describes it, with the comments `make generate`
        kept (the same descriptor grpcio-reflection serves, so JSON names and options do not
        change, plus its source info)."""
        found = self._files.get(name)
        if found is None:
            proto = descriptor_pb2.FileDescriptorProto()
            self._pool.FindFileByName(name).CopyToProto(proto)
            comments = source_info(name)
            if comments is not None:
                proto.source_code_info.CopyFrom(comments)
            found = self._files[name] = proto.SerializeToString()
        return found


async def _one(
    request: reflection_pb2.ServerReflectionRequest,
) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
    yield request


def _with_dependencies(file: FileDescriptor) -> list[str]:
    """The file's name and those of everything it imports, transitively."""
    names: list[str] = []
    pending = [file]
    while pending:
        current = pending.pop()
        if current.name in names:
            continue
        names.append(current.name)
        pending.extend(current.dependencies)
    return names


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serves reflection (v1 and v1alpha) for `service_names` and itself."""
    servicer = DocumentedReflection([*service_names, V1ALPHA_SERVICE, V1_SERVICE])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler})
            for service in (V1ALPHA_SERVICE, V1_SERVICE)
        ]
    )
