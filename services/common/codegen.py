"""Compiles every proto under `protos/` into a Python source root.

`make generate` runs `python -m services.common.codegen generated`; the staleness test runs
the same function into a temporary directory and compares. This module is the only place
that knows how the contracts are compiled.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from google.api import annotations_pb2

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = PROJECT_ROOT / "protos"
# Where a wheel puts the .proto files, inside the `grace` package of the generated code.
PACKAGED_PROTOS = "_protos"


def installed_proto_root() -> Path | None:
    """The .proto files of this installation: the source tree's `protos/` in a checkout or
    an editable install, else the copy a wheel ships in `grace/_protos`; None if neither."""
    if PROTO_ROOT.is_dir():
        return PROTO_ROOT
    spec = importlib.util.find_spec("grace")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / PACKAGED_PROTOS
        if candidate.is_dir():
            return candidate
    return None


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto file under `root`, sorted so output is reproducible."""
    return sorted(root.rglob("*.proto"))


def googleapis_include() -> Path:
    """The directory that holds `google/api/annotations.proto` from googleapis-common-protos."""
    return Path(annotations_pb2.__file__).resolve().parent.parent.parent


def _plugin(name: str) -> str:
    # The mypy-protobuf plugins live next to the interpreter in the virtualenv.
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"codegen: {name} not found; run `make setup`")
    return found


# The descriptors of every contract with their comments (source info) and imports, which
# the generated Python modules leave out; server reflection serves them, so `grpcurl
# describe` shows the API documentation.
DESCRIPTOR_SET = "descriptors.binpb"


def generate(out_dir: Path) -> None:
    """Compiles every proto into `out_dir` (python, grpc and .pyi stubs, and the descriptor
    set with comments), replacing it."""
    # Imported here: the compiler is a 6 MB extension that only code generation needs, and
    # the gateway imports this module for `installed_proto_root`.
    import grpc_tools
    from grpc_tools import protoc

    grace_out = out_dir / "grace"
    if grace_out.exists():
        shutil.rmtree(grace_out)
    grace_out.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{googleapis_include()}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={grace_out / DESCRIPTOR_SET}",
        *files,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"codegen: protoc failed with status {status}")


# The google/api files the contracts import; buf needs them as a local module because the
# Buf Schema Registry is not reachable from every machine.
GOOGLEAPIS_FILES = ("annotations.proto", "http.proto", "field_behavior.proto")


def copy_proto_deps(out_dir: Path) -> None:
    """Copies google/api/*.proto from googleapis-common-protos into `out_dir` for buf."""
    target = out_dir / "google" / "api"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    source = googleapis_include() / "google" / "api"
    for name in GOOGLEAPIS_FILES:
        shutil.copyfile(source / name, target / name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m services.common.codegen [--proto-deps] OUT_DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--proto-deps":
        copy_proto_deps(Path(args[1]))
    elif len(args) == 1:
        generate(Path(args[0]))
    else:
        raise SystemExit("usage: python -m services.common.codegen [--proto-deps] OUT_DIR")


if __name__ == "__main__":
    main()
