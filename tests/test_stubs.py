"""The committed gRPC stubs (service/proto_gen): they match proto/, regenerating them is one command
(``python -m service.protogen``), and the serve extra pins the runtime they require."""

from __future__ import annotations

import sys

import pytest
import tomllib
from packaging.requirements import Requirement

from service import protogen
from tests.servers import REPO_ROOT


def test_the_committed_stubs_match_the_proto() -> None:
    stale = protogen.stale_protos()
    assert not stale, f"service/proto_gen is stale for {stale}: run `python -m service.protogen` and commit the result"
    assert protogen.main(["--check"]) == 0


def test_a_changed_proto_makes_the_stubs_stale_until_regenerated(tmp_path, monkeypatch, capsys) -> None:
    proto = tmp_path / "proto" / "fsfm" / "v1" / "analysis.proto"
    proto.parent.mkdir(parents=True)
    text = (REPO_ROOT / "proto" / "fsfm" / "v1" / "analysis.proto").read_text()
    proto.write_text(text.replace("message ListModelsRequest {}", "message ListModelsRequest { string task = 1; }"))
    assert proto.read_text() != text
    monkeypatch.setattr(protogen, "PROTO_ROOT", tmp_path / "proto")
    assert protogen.stale_protos() == ["fsfm/v1/analysis.proto"]  # the committed stubs, the changed proto
    assert protogen.main(["--check"]) == 1
    assert "run `python -m service.protogen`" in capsys.readouterr().err

    generated = protogen.generate(tmp_path / "gen")
    assert {path.name for path in generated} == {"analysis_pb2.py", "analysis_pb2.pyi", "analysis_pb2_grpc.py"}
    assert protogen.stale_protos(tmp_path / "gen") == []
    grpc_module = (tmp_path / "gen" / "fsfm" / "v1" / "analysis_pb2_grpc.py").read_text()
    assert "from service.proto_gen.fsfm.v1 import analysis_pb2" in grpc_module
    assert (tmp_path / "gen" / "fsfm" / "__init__.py").is_file()


def test_without_grpcio_tools_the_error_says_how(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "grpc_tools", None)  # not installed
    with pytest.raises(protogen.StubsUnavailable, match="python -m service.protogen"):
        protogen.stale_protos()
    assert protogen.main([]) == 1 and "python -m service.protogen" in capsys.readouterr().err


def test_the_serve_extra_pins_the_runtime_the_stubs_require() -> None:
    serve = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    lower = {}
    for requirement in map(Requirement, serve):
        for spec in requirement.specifier:
            if spec.operator == ">=":
                lower[requirement.name] = spec.version
    assert {name: lower[name] for name in ("protobuf", "grpcio")} == protogen.required_runtime()
