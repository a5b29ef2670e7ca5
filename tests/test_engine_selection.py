"""Engines as data and one choice of engine and variant: the registry, the manifest's variants
(and the old manifest sections they replace), ``select_variant`` on explicit hosts, the settings
that force it, and a test engine registered by name and chosen identically by the service, the
worker, ``fsfm analyze`` and ``fsfm bench``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from benchmarks.engine import run_engines
from fsfm.analysis import prepare_faces
from fsfm.engines.base import Engine, EngineError
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.engines.registry import ENGINES, engine_spec, register
from fsfm.engines.select import AUTO_PREFERENCE, Host, Preference, SelectionError, cpu_features, select_variant
from fsfm.face.detector import create_detector
from fsfm.imaging import read_image_file
from fsfm.models.checkpoints import file_sha256
from fsfm.package import ModelPackage
from fsfm.package.manifest import INT8_FILE, Manifest, PlanBuild, Variant
from fsfm.package.repository import load_package
from fsfm.scoring import attack_scores
from fsfm_cli import app
from service.batcher import DynamicBatcher
from service.engines import load_engine
from service.metrics import Metrics
from service.settings import Settings
from service.worker import Worker, WorkerSettings
from tests import recording_engine
from tests.packages import make_tiny_package
from training.quantize import quantize_int8

CPU = Host(cpu_features=frozenset({"avx2", "avx512f", "avx512_vnni", "amx_bf16"}))
GPU = Host(cuda=True)
PLAN = Variant(
    precision="fp16",
    format="tensorrt-plan",
    file="model.plan",
    method="test",
    plan=PlanBuild(device="NVIDIA H200", tensorrt_version="10.13"),
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny package with a real int8 variant (ONNX Runtime's dynamic quantisation)."""
    root = tmp_path_factory.mktemp("models")
    package = make_tiny_package(root, name="tiny-deepfake")
    quantize_int8(package.onnx_path, package.path / INT8_FILE)
    variant = Variant(precision="int8", file=INT8_FILE, sha256=file_sha256(package.path / INT8_FILE), method="test")
    package.manifest.with_variant(variant).replace_in(package.path)
    return root


@pytest.fixture(scope="module")
def package(repository: Path) -> ModelPackage:
    return load_package(repository / "tiny-deepfake" / "1")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """A package with the reference graph only."""
    return make_tiny_package(tmp_path_factory.mktemp("plain"), name="tiny-two")


def with_plan(package: ModelPackage) -> ModelPackage:
    """The package as if it carried a TensorRT plan (selection reads the manifest, not the file)."""
    return ModelPackage(package.manifest.with_variant(PLAN), package.path)


# ---- the choice --------------------------------------------------------------------------------


def test_cpu_features_come_from_the_cpuinfo_flags() -> None:
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_bf16 amx_tile\n\nprocessor\t: 1\n"
    assert cpu_features(cpuinfo) == {"avx2", "avx512f", "avx512_vnni", "amx_bf16"}
    assert cpu_features("no flags here") == frozenset()
    assert cpu_features() <= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}


def test_auto_is_onnxruntime_fp32_on_a_cpu_whatever_the_package_carries(package: ModelPackage) -> None:
    for candidate in (package, with_plan(package)):
        chosen = select_variant(candidate, host=CPU)
        assert (chosen.engine, chosen.precision, chosen.path) == ("onnxruntime", "fp32", package.onnx_path)
        assert chosen.variant == package.manifest.reference_variant and chosen.why


def test_auto_runs_a_tensorrt_plan_on_a_gpu_with_tensorrt(package: ModelPackage) -> None:
    chosen = select_variant(with_plan(package), host=GPU)
    assert (chosen.engine, chosen.precision, chosen.path) == ("tensorrt", "fp16", package.path / "model.plan")
    without_tensorrt = Host(cuda=True, unavailable={"tensorrt": "TensorRT is not installed"})
    assert select_variant(with_plan(package), host=without_tensorrt).engine == "onnxruntime"
    assert select_variant(package, host=GPU).engine == "onnxruntime"  # no plan


def test_forced_engines_and_precisions(package: ModelPackage) -> None:
    int8 = select_variant(package, precision="int8", host=CPU)
    assert (int8.engine, int8.precision, int8.path) == ("onnxruntime", "int8", package.path / INT8_FILE)
    torch = select_variant(package, engine="torch", host=CPU)
    assert (torch.engine, torch.precision) == ("torch", "fp32")
    plan = select_variant(with_plan(package), engine="tensorrt", host=GPU)
    assert (plan.engine, plan.precision) == ("tensorrt", "fp16")


@pytest.mark.parametrize(
    ("engine", "precision", "host", "message"),
    ids=lambda v: v if isinstance(v, str) else "",
    argvalues=[
        ("auto", "int8", CPU, "tiny-two:1 has no int8 variant: add one with `fsfm quantize --model tiny-two:1"),
        ("onnxruntime", "int8", CPU, "has no int8 variant"),
        ("tensorrt", "auto", GPU, "has no TensorRT plan: build one with `fsfm export --tensorrt`"),
        (
            "tensorrt",
            "fp16",
            CPU,
            "has no fp16 TensorRT plan: build one with `fsfm export --tensorrt --trt-precision fp16`",
        ),
        ("auto", "fp16", CPU, "has no fp16 TensorRT plan"),
        ("torch", "int8", CPU, "engine torch cannot run precision int8; it runs fp32"),
        ("cuda-magic", "auto", CPU, "unknown engine 'cuda-magic'; engines: onnxruntime, tensorrt, torch, openvino"),
        ("auto", "fp64", CPU, "unknown precision 'fp64'"),
    ],
)
def test_what_cannot_be_chosen_is_said_clearly(
    plain: ModelPackage, engine: str, precision: str, host: Host, message: str
) -> None:
    with pytest.raises(EngineError, match=re.escape(message)):
        select_variant(plain, engine, precision, host)


def test_a_plan_on_a_machine_without_a_gpu(package: ModelPackage) -> None:
    with pytest.raises(SelectionError, match="engine tensorrt cannot run here: it needs an NVIDIA GPU"):
        select_variant(with_plan(package), engine="tensorrt", host=CPU)


def test_the_preference_table_is_data(package: ModelPackage) -> None:
    """The next issue adds rows (int8 on VNNI, OpenVINO bf16 on AMX); nothing else changes."""
    vnni_first = (Preference("onnxruntime", "int8", frozenset({"avx512_vnni"})), *AUTO_PREFERENCE)
    assert select_variant(package, host=CPU, preferences=vnni_first).precision == "int8"
    assert select_variant(package, host=Host(frozenset({"avx2"})), preferences=vnni_first).precision == "fp32"


# ---- the manifest's variants ---------------------------------------------------------------------


def test_old_manifests_load_with_their_int8_graph_and_plan_as_variants(package: ModelPackage) -> None:
    old = package.manifest.model_dump(mode="json", exclude={"variants"})
    old["onnx_int8"] = {
        "file": "model.int8.onnx",
        "method": "dynamic",
        "sha256": "ab" * 32,
        "heldout": [
            {
                "set": "ff",
                "faces": 10,
                "auc_fp32": 0.9,
                "auc_int8": 0.89,
                "max_abs_score_diff": 0.02,
                "mean_abs_score_diff": 0.01,
                "label_agreement": 0.99,
            }
        ],
    }
    old["tensorrt"] = {
        "file": "model.plan",
        "precision": "fp16",
        "min_batch": 1,
        "opt_batch": 8,
        "max_batch": 32,
        "device": "NVIDIA H200",
        "tensorrt_version": "10.13.0",
    }
    manifest = Manifest.model_validate_json(json.dumps(old))
    int8, plan = manifest.variant("int8"), manifest.variant("fp16", "tensorrt-plan")
    assert (int8.file, int8.method, int8.heldout[0].auc_variant) == ("model.int8.onnx", "dynamic", 0.89)
    assert (plan.file, plan.plan.max_batch, plan.plan.device) == ("model.plan", 32, "NVIDIA H200")
    assert manifest.onnx.output_name == "logits" and manifest.reference_variant.file == "model.onnx"
    saved = manifest.model_dump(mode="json")
    assert "onnx_int8" not in saved and "tensorrt" not in saved  # written in the new form
    assert Manifest.model_validate(saved) == manifest


def test_a_manifest_declares_each_variant_once(package: ModelPackage) -> None:
    data = package.manifest.model_dump(mode="json")
    with pytest.raises(ValidationError, match="one variant per"):
        Manifest.model_validate({**data, "variants": [*data["variants"], data["variants"][0]]})
    with pytest.raises(ValidationError, match="one variant per"):  # the reference is fp32 ONNX
        Manifest.model_validate({**data, "variants": [{"precision": "fp32", "file": "other.onnx"}]})
    with pytest.raises(ValidationError, match="records its build"):
        Variant(precision="fp16", format="tensorrt-plan", file="model.plan")


# ---- settings --------------------------------------------------------------------------------------


def test_settings_choose_automatically_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().engine, Settings().precision) == ("auto", "auto")
    monkeypatch.setenv("FSFM_ENGINE", "torch")
    monkeypatch.setenv("FSFM_PRECISION", "fp32")
    assert (Settings().engine, Settings().precision) == ("torch", "fp32")
    with pytest.raises(ValidationError, match="unknown engine 'cuda-magic'; choose from auto, onnxruntime"):
        Settings(engine="cuda-magic")
    with pytest.raises(ValidationError, match="precision int8"):
        Settings(engine="torch", precision="int8")


# ---- a new engine: one module and one registry line -----------------------------------------------


@pytest.fixture
def recording() -> Iterator[list[Path]]:
    register(recording_engine.SPEC)
    recording_engine.MADE.clear()
    try:
        yield recording_engine.MADE
    finally:
        ENGINES.pop(recording_engine.SPEC.name)


def test_a_registered_engine_is_chosen_alike_by_service_worker_analyze_and_bench(
    recording: list[Path], repository: Path, package: ModelPackage, mtcnn_dir, astronaut_path: Path
) -> None:
    ask = {"engine": "test-recording", "precision": "int8"}
    int8_path = package.path / INT8_FILE
    image = read_image_file(astronaut_path)
    faces = np.stack([f.tensor for f in prepare_faces(image, create_detector().detect(image), package.manifest)])
    expected = OnnxRuntimeEngine(int8_path).run(faces)["logits"]

    # The service (core and its batcher), through service.engines.load_engine.
    engine = load_engine(package, Settings(models=repository, **ask))
    assert isinstance(engine, Engine) and engine.name == "test-recording"
    assert engine.selection.describe() == {"engine": "test-recording", "precision": "int8", "file": INT8_FILE}

    async def serve() -> np.ndarray:
        batcher = DynamicBatcher(engine, package.manifest.ref, Metrics())
        batcher.start()
        try:
            return (await batcher.infer(faces)).outputs["logits"]
        finally:
            await batcher.stop()

    np.testing.assert_allclose(asyncio.run(serve()), expected, rtol=1e-6, atol=1e-6)
    assert "session" not in vars(engine)  # the batcher's stop closed it

    # The worker, through the same function.
    worker = Worker(WorkerSettings(models=repository, queue="redis://127.0.0.1:6379/0", **ask))
    worker.load()
    assert worker.consumers[0].engine.selection == engine.selection

    # fsfm analyze.
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(astronaut_path),
            "--models",
            str(repository),
            "--engine",
            "test-recording",
            "--precision",
            "int8",
        ],
    )
    assert result.exit_code == 0, result.output
    score = json.loads(result.stdout.splitlines()[0])["faces"][0]["score"]
    assert score == pytest.approx(float(attack_scores(expected, package.manifest)[0]), abs=1e-6)

    # fsfm bench.
    (run,) = run_engines(package, ["test-recording:int8"], [1], 100.0, min_seconds=0.01).runs
    assert (run.engine, run.precision) == ("test-recording:int8", "int8")

    assert recording == [int8_path] * 4
    assert engine_spec("test-recording").unavailable() is None


def test_fsfm_analyze_refuses_a_precision_the_package_lacks(mtcnn_dir, astronaut_path: Path, tmp_path: Path) -> None:
    make_tiny_package(tmp_path, name="tiny-deepfake")
    result = CliRunner().invoke(app, ["analyze", str(astronaut_path), "--models", str(tmp_path), "--precision", "int8"])
    assert result.exit_code == 2
    assert "tiny-deepfake:1 has no int8 variant: add one with `fsfm quantize" in result.stderr
