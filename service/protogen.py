"""Generate the gRPC Python modules of ``proto/`` into ``service/proto_gen/``, and check them.

The generated modules are committed, so a clean clone, its wheel and the images built from it serve
gRPC without grpcio-tools. After editing a proto, regenerate them with one command::

    python -m service.protogen            # rewrites service/proto_gen/ (needs grpcio-tools: dev extra)
    python -m service.protogen --check    # exit 1, naming the stale protos, when they differ from proto/

"Differ" compares what the protos declare, not the text protoc wrote: the serialized
``FileDescriptorProto`` inside each committed ``*_pb2.py`` against the one protoc compiles from the proto
now (without source info), and each service's methods against the committed ``*_pb2_grpc.py``. Version
headers of another grpcio-tools release therefore do not count as stale; a new field or RPC does.

The committed modules require, at run time, protobuf at least the version of the protoc that wrote them
and grpcio at least the version of grpcio-tools; ``required_runtime`` reads both from the files, and
pyproject.toml's ``serve`` extra pins exactly these lower bounds (tests/test_stubs.py checks it).

protoc names imports after the proto's path under ``-I``: ``fsfm/v1/analysis.proto`` becomes
``from fsfm.v1 import analysis_pb2``, which would find this project's own ``fsfm`` package. The
descriptors keep that proto path (reflection shows ``fsfm/v1/analysis.proto``); only the generated
Python imports and module names are rewritten to ``service.proto_gen.fsfm.v1``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.resources
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.descriptor_pb2 import DescriptorProto

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
OUT_DIR = Path(__file__).resolve().parent / "proto_gen"
PACKAGE = "service.proto_gen"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
REGENERATE = "python -m service.protogen"

# ``from fsfm.v1 import ...`` and the module name given to the message classes ('fsfm.v1.x_pb2').
_OWN_MODULE = re.compile(r"^from (?=fsfm\.)|(?<=')(?=fsfm\.[\w.]*_pb2')", re.MULTILINE)
_PROTOBUF_VERSION = re.compile(r"^# Protobuf Python Version: (\d+\.\d+\.\d+)$", re.MULTILINE)
_GRPC_VERSION = re.compile(r"^GRPC_GENERATED_VERSION = '(\d+\.\d+\.\d+)'$", re.MULTILINE)


class StubsUnavailable(RuntimeError):
    """The stubs cannot be generated or checked here (no grpcio-tools, no protos, protoc failed)."""


def proto_files() -> list[Path]:
    """This project's protos (under ``fsfm/``: an installed ``proto`` package of another project,
    such as proto-plus, is not ours)."""
    return sorted((PROTO_ROOT / "fsfm").rglob("*.proto"))


def outputs(proto: Path, out_dir: Path | None = None) -> list[Path]:
    """The generated files of ``proto``: ``<name>_pb2.py``, ``<name>_pb2.pyi``, ``<name>_pb2_grpc.py``."""
    relative = proto.relative_to(PROTO_ROOT).with_suffix("")
    folder = (out_dir or OUT_DIR) / relative.parent
    return [folder / f"{relative.name}{suffix}" for suffix in GENERATED_SUFFIXES]


def _protoc(*args: str) -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise StubsUnavailable(
            f"grpcio-tools is not installed: pip install grpcio-tools (the dev extra), then run `{REGENERATE}`"
        ) from None
    protos = proto_files()
    if not protos:
        raise StubsUnavailable(f"no .proto files under {PROTO_ROOT}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    if protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *args, *map(str, protos)]) != 0:
        raise StubsUnavailable(f"protoc failed on {[str(p) for p in protos]}")


def generate(out_dir: Path | None = None) -> list[Path]:
    """Run protoc on every proto into ``out_dir`` (default ``service/proto_gen``); returns the generated
    files. Each file is replaced atomically, so a process importing the stubs meanwhile sees the old or
    the new version, never half of one."""
    out_dir = out_dir or OUT_DIR
    with tempfile.TemporaryDirectory(prefix="fsfm-protogen-") as tmp:
        _protoc(f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}")
        written = [output for proto in proto_files() for output in outputs(proto, out_dir)]
        _make_packages(written, out_dir)
        for output in written:
            generated = Path(tmp) / output.relative_to(out_dir)
            _write_atomic(output, _OWN_MODULE.sub(lambda m: f"{m.group()}{PACKAGE}.", generated.read_text()))
    return written


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    part.write_text(text)
    os.replace(part, path)


def _make_packages(files: list[Path], out_dir: Path) -> None:
    """An ``__init__.py`` in every folder from ``out_dir`` down to the generated modules."""
    for file in files:
        folder = file.parent
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text(f'"""Generated by `{REGENERATE}`; do not edit."""\n')
            if folder == out_dir:
                break
            folder = folder.parent


def _committed_descriptor(pb2: Path) -> bytes:
    """The serialized FileDescriptorProto that ``pb2`` (a generated ``*_pb2.py``) registers, read from
    its source, so that checking never imports the module into this process's descriptor pool."""
    for node in ast.walk(ast.parse(pb2.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise ValueError(f"{pb2} registers no serialized file descriptor")


def _clear_json_names(messages: Iterable[DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def stale_protos(out_dir: Path | None = None) -> list[str]:
    """The protos (paths under ``proto/``) whose committed modules are missing or declare other
    messages, enums, services or methods than the proto does now. Empty when the stubs are current."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory(prefix="fsfm-protocheck-") as tmp:
        descriptor_set = Path(tmp) / "set.pb"
        _protoc(f"--descriptor_set_out={descriptor_set}")
        compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    by_name = {file.name: file for file in compiled.file}
    stale = []
    for proto in proto_files():
        expected = by_name[proto.relative_to(PROTO_ROOT).as_posix()]
        pb2, pyi, pb2_grpc = outputs(proto, out_dir)
        if not all(path.is_file() for path in (pb2, pyi, pb2_grpc)):
            stale.append(expected.name)
            continue
        _clear_json_names(expected.message_type)  # protoc fills them in a descriptor set, not in _pb2.py
        committed = descriptor_pb2.FileDescriptorProto.FromString(_committed_descriptor(pb2))
        grpc_text = pb2_grpc.read_text()
        methods = [
            f"'/{expected.package}.{service.name}/{method.name}'"
            for service in expected.service
            for method in service.method
        ]
        if committed != expected or not all(method in grpc_text for method in methods):
            stale.append(expected.name)
    return stale


def required_runtime(out_dir: Path | None = None) -> dict[str, str]:
    """The lowest ``protobuf`` and ``grpcio`` releases the committed modules run on (their generators'
    versions, which the modules check at import)."""
    versions: dict[str, set[str]] = {"protobuf": set(), "grpcio": set()}
    for proto in proto_files():
        pb2, _, pb2_grpc = outputs(proto, out_dir)
        versions["protobuf"].update(_PROTOBUF_VERSION.findall(pb2.read_text()))
        versions["grpcio"].update(_GRPC_VERSION.findall(pb2_grpc.read_text()))
    return {name: max(found, key=lambda v: tuple(map(int, v.split(".")))) for name, found in versions.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed stubs are stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_protos()
            for name in stale:
                print(f"stale: service/proto_gen does not match proto/{name}; run `{REGENERATE}`", file=sys.stderr)
            return 1 if stale else 0
        files = generate()
    except StubsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for file in files:
        print(file.relative_to(OUT_DIR.parents[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
