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
from fsfm.package.manifest import INT8_FILE, OPENVINO_INT8_FILE, HeldOutCheck, Manifest, PlanBuild, Variant
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

AMX = Host(cpu_features=frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}))
AVX512_BF16 = Host(cpu_features=frozenset({"avx2", "avx512f", "avx512_bf16"}))  # bf16 dot products, no VNNI
AVX2 = Host(cpu_features=frozenset({"avx2"}))
GPU = Host(cuda=True)
WITHIN = HeldOutCheck(set="heldout", faces=20, max_abs_score_diff=0.01, mean_abs_score_diff=0.002, label_agreement=1.0)
BEYOND = WITHIN.model_copy(update={"max_abs_score_diff": 0.2, "label_agreement": 0.9})
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
    variant = Variant(
        precision="int8", file=INT8_FILE, sha256=file_sha256(package.path / INT8_FILE), method="test", heldout=[WITHIN]
    )
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


def with_variants(package: ModelPackage, *variants: Variant) -> ModelPackage:
    """The package as if it carried ``variants`` too (selection reads the manifest, not the files)."""
    manifest = package.manifest
    for variant in variants:
        manifest = manifest.with_variant(variant)
    return ModelPackage(manifest, package.path)


BF16 = Variant(precision="bf16", file="model.onnx", method="OpenVINO bf16 hint", heldout=[WITHIN])
OV_INT8 = Variant(precision="int8", format="openvino-ir", file=OPENVINO_INT8_FILE, method="nncf", heldout=[WITHIN])


def choice(package: ModelPackage, host: Host, **kwargs: object) -> tuple[str, str]:
    chosen = select_variant(package, host=host, **kwargs)
    return chosen.engine, chosen.precision


def test_auto_follows_the_cpu_features_and_what_the_package_carries(package: ModelPackage) -> None:
    """The documented table: OpenVINO int8 where int8 dot products exist, OpenVINO bf16 where bf16
    math exists, ONNX Runtime int8 on AVX2, ONNX Runtime fp32 everywhere; each only when carried
    and measured within tolerance."""
    everything = with_variants(package, BF16, OV_INT8)  # plus the fixture's ONNX Runtime int8
    assert choice(everything, AMX) == ("openvino", "int8")
    assert choice(everything, AVX512_BF16) == ("openvino", "bf16")
    assert choice(everything, AVX2) == ("onnxruntime", "int8")
    assert choice(everything, Host()) == ("onnxruntime", "fp32")  # not x86-64-v3: the reference
    assert choice(with_variants(package, BF16), AMX) == ("openvino", "bf16")
    assert choice(package, AMX) == ("onnxruntime", "int8")
    no_openvino = Host(AMX.cpu_features, unavailable={"openvino": "OpenVINO is not installed"})
    assert choice(everything, no_openvino) == ("onnxruntime", "int8")


def test_a_lower_precision_is_chosen_only_with_its_drift_measured_and_within_tolerance(plain: ModelPackage) -> None:
    assert choice(plain, AMX) == ("onnxruntime", "fp32")  # bf16 derivable, but never measured
    unmeasured = BF16.model_copy(update={"heldout": []})
    chosen = select_variant(with_variants(plain, unmeasured), host=AMX)
    assert (chosen.engine, chosen.precision) == ("onnxruntime", "fp32")
    assert "passed over openvino bf16: its bf16 drift from fp32 was never measured" in chosen.why
    beyond = BF16.model_copy(update={"heldout": [WITHIN, BEYOND]})
    chosen = select_variant(with_variants(plain, beyond), host=AMX)
    assert chosen.precision == "fp32" and "exceeds the tolerance" in chosen.why


def test_a_forced_precision_beyond_tolerance_is_refused_unless_accepted(plain: ModelPackage) -> None:
    beyond = with_variants(plain, BF16.model_copy(update={"heldout": [BEYOND]}))
    message = (
        "tiny-two:1: openvino bf16 is refused: its bf16 drift on 'heldout' (max |score diff| 0.2, "
        "labels agree on 18 of 20 faces)"
    )
    with pytest.raises(SelectionError, match=re.escape(message)) as refused:
        select_variant(beyond, precision="bf16", host=AMX)
    assert "FSFM_ACCEPT_DRIFT=1" in str(refused.value)
    accepted = select_variant(beyond, precision="bf16", host=AMX, accept_drift=True)
    assert (accepted.engine, accepted.precision) == ("openvino", "bf16") and "FSFM_ACCEPT_DRIFT" in accepted.why
    unmeasured = select_variant(plain, engine="openvino", precision="bf16", host=AMX)  # asked for: served, said
    assert unmeasured.path == plain.onnx_path and "never measured" in unmeasured.why
    # An engine asked for without a precision takes its next precision rather than refuse.
    assert choice(beyond, AMX, engine="openvino") == ("openvino", "fp32")


def test_a_cuda_host_prefers_the_gpu_engines(package: ModelPackage, tmp_path: Path) -> None:
    measured = with_variants(package, BF16)
    assert choice(measured, GPU) == ("onnxruntime", "fp32")  # torch needs model.pt
    (tmp_path / "model.pt").write_bytes(b"")  # selection looks for the file; the engine loads it
    with_weights = ModelPackage(measured.manifest, tmp_path)
    assert choice(with_weights, GPU) == ("torch", "bf16")
    assert choice(with_weights, Host(AMX.cpu_features)) == ("openvino", "bf16")  # no GPU: torch is not preferred


def test_auto_runs_a_tensorrt_plan_on_a_gpu_with_tensorrt(package: ModelPackage) -> None:
    chosen = select_variant(with_plan(package), host=GPU)
    assert (chosen.engine, chosen.precision, chosen.path) == ("tensorrt", "fp16", package.path / "model.plan")
    without_tensorrt = Host(cuda=True, unavailable={"tensorrt": "TensorRT is not installed"})
    assert select_variant(with_plan(package), host=without_tensorrt).engine == "onnxruntime"
    assert select_variant(package, host=GPU).engine == "onnxruntime"  # no plan


def test_forced_engines_and_precisions(package: ModelPackage) -> None:
    int8 = select_variant(package, precision="int8", host=AMX)
    assert (int8.engine, int8.precision, int8.path) == ("onnxruntime", "int8", package.path / INT8_FILE)
    torch = select_variant(package, engine="torch", host=AMX)
    assert (torch.engine, torch.precision) == ("torch", "fp32")
    plan = select_variant(with_plan(package), engine="tensorrt", host=GPU)
    assert (plan.engine, plan.precision) == ("tensorrt", "fp16")


@pytest.mark.parametrize(
    ("engine", "precision", "host", "message"),
    ids=lambda v: v if isinstance(v, str) else "",
    argvalues=[
        ("auto", "int8", AMX, "tiny-two:1 has no int8 variant: add one with `fsfm quantize --model tiny-two:1"),
        ("onnxruntime", "int8", AMX, "has no int8 variant"),
        ("tensorrt", "auto", GPU, "has no TensorRT plan: build one with `fsfm export --tensorrt`"),
        (
            "tensorrt",
            "fp16",
            AMX,
            "has no fp16 TensorRT plan: build one with `fsfm export --tensorrt --trt-precision fp16`",
        ),
        ("auto", "fp16", AMX, "has no fp16 TensorRT plan"),
        ("torch", "int8", AMX, "engine torch cannot run precision int8; it runs fp32, bf16"),
        ("cuda-magic", "auto", AMX, "unknown engine 'cuda-magic'; engines: onnxruntime, tensorrt, torch, openvino"),
        ("auto", "fp64", AMX, "unknown precision 'fp64'"),
    ],
)
def test_what_cannot_be_chosen_is_said_clearly(
    plain: ModelPackage, engine: str, precision: str, host: Host, message: str
) -> None:
    with pytest.raises(EngineError, match=re.escape(message)):
        select_variant(plain, engine, precision, host)


def test_a_plan_on_a_machine_without_a_gpu(package: ModelPackage) -> None:
    with pytest.raises(SelectionError, match="engine tensorrt cannot run here: it needs an NVIDIA GPU"):
        select_variant(with_plan(package), engine="tensorrt", host=AMX)


def test_the_preference_table_is_data(plain: ModelPackage) -> None:
    """A new row changes the choice and nothing else does."""
    measured = with_variants(plain, BF16)
    torch_first = (Preference("torch", "fp32", frozenset({"avx512f"})), *AUTO_PREFERENCE)
    (plain.path / "model.pt").write_bytes(b"")
    try:
        assert choice(measured, AMX, preferences=torch_first) == ("torch", "fp32")
        assert choice(measured, AVX2, preferences=torch_first) == ("onnxruntime", "fp32")
    finally:
        (plain.path / "model.pt").unlink()


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
    (run,) = run_engines(package, ["test-recording:int8"], [1], {"int8": 100.0}, min_seconds=0.01).runs
    assert (run.engine, run.precision) == ("test-recording:int8", "int8")

    assert recording == [int8_path] * 4
    assert engine_spec("test-recording").unavailable() is None


def test_fsfm_analyze_refuses_a_precision_the_package_lacks(mtcnn_dir, astronaut_path: Path, tmp_path: Path) -> None:
    make_tiny_package(tmp_path, name="tiny-deepfake")
    result = CliRunner().invoke(app, ["analyze", str(astronaut_path), "--models", str(tmp_path), "--precision", "int8"])
    assert result.exit_code == 2
    assert "tiny-deepfake:1 has no int8 variant: add one with `fsfm quantize" in result.stderr
