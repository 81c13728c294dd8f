"""Every proto file sets the same per-language options, derived from its package.

Other languages generate from protos/ without buf managed mode, so each file names its Go
import path, Java package and C# namespace itself (docs/interop.md states the convention).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

PROTOS = Path(__file__).resolve().parents[2] / "protos"
PROTO_FILES = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))


def file_options(proto: str) -> tuple[str, descriptor_pb2.FileOptions]:
    """The package and options of a proto file, read from its generated module."""
    module = importlib.import_module(proto.removesuffix(".proto").replace("/", ".") + "_pb2")
    file = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(file)
    return file.package, file.options


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_the_parametrization_finds_the_proto_files() -> None:
    # A wrong root would silently parametrize over nothing.
    assert {
        "grace/registry/v1/registry.proto",
        "grace/eventbus/v1/event.proto",
        "grace/kernels/immutable_log/v1/immutable_log.proto",
    } <= set(PROTO_FILES)


@pytest.mark.parametrize("proto", PROTO_FILES)
def test_the_file_sets_go_java_and_csharp_options_from_its_package(proto: str) -> None:
    package, options = file_options(proto)
    directory, stem = proto.rsplit("/", 1)
    assert package == directory.replace("/", "."), "package must match the directory"
    *_, area, version = package.split(".")
    assert options.go_package == (
        f"github.com/grace-platform/grace/gen/go/{directory};{area.replace('_', '')}{version}"
    )
    assert options.java_package == f"dev.{package}"
    assert options.java_multiple_files is True
    assert options.java_outer_classname == pascal(stem.removesuffix(".proto")) + "Proto"
    assert options.csharp_namespace == ".".join(pascal(part) for part in package.split("."))
