"""Proto comments, the API documentation, read from the `.proto` files at start-up.

Generated `_pb2` modules drop `SourceCodeInfo`, so comments are not in the runtime descriptors.
The gateway compiles the `.proto` files once more at start-up with grpc_tools' protoc into a
descriptor set with source info (tens of milliseconds) and indexes each leading comment by
the element's full name: `pkg.Service`, `pkg.Service.Method`, `pkg.Message`,
`pkg.Message.field`, `pkg.Enum`, `pkg.Enum.VALUE`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from services.common.codegen import googleapis_include

log = logging.getLogger(__name__)

# Field numbers of FileDescriptorProto / DescriptorProto / ... used in SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def load_comments(proto_roots: Iterable[Path]) -> dict[str, str]:
    """Leading comments of every element of every `.proto` under the roots, by full name.

    Returns an empty mapping (and logs why) when the files cannot be compiled: the gateway
    then serves an OpenAPI document without descriptions rather than not starting.
    """
    roots = [Path(r) for r in proto_roots]
    files = sorted({str(f.relative_to(r)) for r in roots for f in r.rglob("*.proto")})
    if not files:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.pb"
        args = [
            "grpc_tools.protoc",
            *(f"-I{r}" for r in roots),
            f"-I{googleapis_include()}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
        if protoc.main(args) != 0:
            log.warning("cannot compile the protos under %s: no comments in /openapi.json", roots)
            return {}
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    comments: dict[str, str] = {}
    for file in descriptor_set.file:
        comments.update(_file_comments(file))
    return comments


def _clean(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _file_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    by_path = {
        tuple(location.path): _clean(location.leading_comments)
        for location in file.source_code_info.location
        if location.leading_comments
    }
    names: dict[str, str] = {}

    def note(path: tuple[int, ...], name: str) -> None:
        text = by_path.get(path)
        if text:
            names[name] = text

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, prefix: str) -> None:
        full = f"{prefix}.{proto.name}"
        note(path, full)
        for index, value in enumerate(proto.value):
            note((*path, _ENUM_VALUE, index), f"{full}.{value.name}")

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        full = f"{prefix}.{proto.name}"
        note(path, full)
        for index, field in enumerate(proto.field):
            note((*path, _MESSAGE_FIELD, index), f"{full}.{field.name}")
        for index, nested in enumerate(proto.nested_type):
            message((*path, _MESSAGE_NESTED, index), nested, full)
        for index, nested_enum in enumerate(proto.enum_type):
            enum((*path, _MESSAGE_ENUM, index), nested_enum, full)

    package = file.package
    for index, msg in enumerate(file.message_type):
        message((_FILE_MESSAGE, index), msg, package)
    for index, top_enum in enumerate(file.enum_type):
        enum((_FILE_ENUM, index), top_enum, package)
    for index, service in enumerate(file.service):
        full = f"{package}.{service.name}"
        note((_FILE_SERVICE, index), full)
        for method_index, method in enumerate(service.method):
            note((_FILE_SERVICE, index, _SERVICE_METHOD, method_index), f"{full}.{method.name}")
    return names
