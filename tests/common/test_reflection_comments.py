"""Reflection's comments: read from the descriptor set only when a file is asked for."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from grace.registry.v1 import registry_pb2
from services.common import reflection
from services.common.reflection import DocumentedReflection

REGISTRY_FILE = registry_pb2.DESCRIPTOR.name


def test_a_file_answer_carries_its_comments_and_is_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []
    real = reflection.source_info

    def counting(file_name: str) -> descriptor_pb2.SourceCodeInfo | None:
        reads.append(file_name)
        return real(file_name)

    monkeypatch.setattr(reflection, "source_info", counting)
    servicer = DocumentedReflection(["grace.registry.v1.RegistryService"])
    assert reads == []  # nothing parsed for a server that is never asked
    first = descriptor_pb2.FileDescriptorProto.FromString(servicer._file(REGISTRY_FILE))
    assert any(loc.leading_comments for loc in first.source_code_info.location)
    assert servicer._file(REGISTRY_FILE) == first.SerializeToString()
    assert reads == [REGISTRY_FILE]


def test_a_file_the_descriptor_set_does_not_hold_has_no_comments() -> None:
    assert reflection.source_info("no/such/file.proto") is None
