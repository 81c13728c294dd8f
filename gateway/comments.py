"""Proto comments, the API documentation, for /openapi.json.

Generated `_pb2` modules drop `SourceCodeInfo`, so comments are not in the runtime
descriptors. For Grace's own contracts they come from the descriptor set `make generate`
keeps with its source info, the one server reflection serves. For any other proto root
(`GRACE_GATEWAY_PROTO_ROOT`), the gateway compiles the `.proto` files with grpc_tools' protoc
into such a set (tens of milliseconds, and a 6 MB extension loaded only then). Each leading
comment is indexed by the element's full name: `pkg.Service`, `pkg.Service.Method`,
`pkg.Message`, `pkg.Message.field`, `pkg.Enum`, `pkg.Enum.VALUE`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

from services.common.codegen import googleapis_include, installed_proto_root
from services.common.reflection import contract_descriptors

log = logging.getLogger(__name__)

# Field numbers of FileDescriptorProto / DescriptorProto / ... used in SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def load_comments(proto_roots: Iterable[Path]) -> dict[str, str]:
    """Leading comments of every element of every `.proto` under the roots, by full name.

    Returns an empty mapping (and logs why) when there are none to read: the gateway then
    serves an OpenAPI document without descriptions rather than not starting.
    """
    roots = [Path(r) for r in proto_roots]
    descriptor_set = _generated(roots)
    if descriptor_set is None:
        descriptor_set = _compiled(roots)
    comments: dict[str, str] = {}
    for file in descriptor_set.file if descriptor_set is not None else ():
        comments.update(_file_comments(file))
    return comments


def _generated(roots: list[Path]) -> descriptor_pb2.FileDescriptorSet | None:
    """The generated descriptor set, when the roots are just Grace's installed contracts."""
    installed = installed_proto_root()
    if installed is None or [r.resolve() for r in roots] != [installed.resolve()]:
        return None
    descriptors = contract_descriptors()
    if descriptors is None:
        return None
    # The set includes what the contracts import (google/api, well-known types): only the
    # files under the root are documented, as when they are compiled.
    mine = [file for file in descriptors.file if (installed / file.name).is_file()]
    del descriptors.file[:]
    descriptors.file.extend(mine)
    return descriptors


def _compiled(roots: list[Path]) -> descriptor_pb2.FileDescriptorSet | None:
    """Every `.proto` under the roots compiled with their source info; None (logged) when
    there is none or they do not compile."""
    files = sorted({str(f.relative_to(r)) for r in roots for f in r.rglob("*.proto")})
    if not files:
        return None
    import grpc_tools
    from grpc_tools import protoc

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
            return None
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


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
