"""The contracts: generated code is current and the protos pass buf lint and format."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import codegen

ROOT = codegen.PROJECT_ROOT
BUF = Path(sys.executable).with_name("buf")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_what_make_generate_produces(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    fresh, committed = _tree(tmp_path / "grace"), _tree(ROOT / "generated" / "grace")
    assert sorted(fresh) == sorted(committed), "run `make generate`: files differ"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make generate`: stale files {stale}"


@pytest.fixture(scope="module")
def buf_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUF.exists() and shutil.which("buf") is None:
        pytest.skip("buf is not installed (make setup installs it)")
    workspace = tmp_path_factory.mktemp("buf")
    shutil.copytree(ROOT / "protos", workspace / "protos")
    shutil.copyfile(ROOT / "buf.yaml", workspace / "buf.yaml")
    codegen.copy_proto_deps(workspace / ".build" / "proto-deps")
    return workspace


def _buf(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = str(BUF) if BUF.exists() else "buf"
    return subprocess.run(
        [binary, *args], cwd=workspace, capture_output=True, text=True, timeout=120, check=False
    )


def test_protos_pass_buf_lint(buf_workspace: Path) -> None:
    result = _buf(buf_workspace, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_buf_formatted(buf_workspace: Path) -> None:
    result = _buf(buf_workspace, "format", "--diff", "--exit-code", "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_but_request_streams_has_an_http_rule() -> None:
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pool

    for proto in codegen.proto_files():
        name = str(proto.relative_to(codegen.PROTO_ROOT))
        module = name.removesuffix(".proto").replace("/", ".") + "_pb2"
        __import__(module)
        file = descriptor_pool.Default().FindFileByName(name)
        for service in file.services_by_name.values():
            for method in service.methods:
                if method.client_streaming:
                    # HTTP cannot carry a request stream: the gateway skips such methods
                    # (PublishStream has Publish and PublishBatch as its REST routes).
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                assert rule.WhichOneof("pattern"), f"{method.full_name} has no google.api.http"
