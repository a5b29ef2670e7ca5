"""The torch, OpenVINO and TensorRT engines against ONNX Runtime, and what each says when it cannot run.

The ``gpu`` tests build and run real TensorRT plans; they run only where TensorRT, CUDA Python
and an NVIDIA GPU are present (``scripts/gpu_check.sh``) and are reported as skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fsfm.engines.base import Engine, EngineCancelled, EngineError, RunCancellation
from fsfm.engines.loading import open_engine
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.engines.tensorrt import TensorRTEngine, require_tensorrt
from fsfm.engines.torch import TORCH_WEIGHTS_FILE, TorchEngine
from fsfm.package import ModelPackage
from fsfm.package.manifest import OPENVINO_INT8_FILE, Variant
from fsfm.package.repository import load_package
from tests.no_torch import run_without_torch
from tests.packages import make_tiny_package, tiny_classifier
from training.export import ExportError
from training.package_torch import save_torch_weights
from training.quantize import quantize_openvino_int8
from training.tensorrt_build import add_plan_to_package, build_plan, onnx_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tensorrt_missing() -> str | None:
    try:
        require_tensorrt()
    except EngineError as exc:
        return str(exc)
    return None


TENSORRT_MISSING = _tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a GPU: {TENSORRT_MISSING}"
)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """A tiny package with its ``model.pt`` (seed 0, as ``make_tiny_package`` exports)."""
    package = make_tiny_package(tmp_path_factory.mktemp("models"))
    save_torch_weights(tiny_classifier(0), package)
    return package


def _batch(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((size, 3, 64, 64)).astype(np.float32)


def test_torch_engine_matches_onnxruntime(package: ModelPackage) -> None:
    torch_engine = TorchEngine(package, device="cpu")
    onnx_engine = OnnxRuntimeEngine(package.onnx_path)
    assert isinstance(torch_engine, Engine)
    assert (torch_engine.input_name, torch_engine.output_names) == (onnx_engine.input_name, onnx_engine.output_names)
    torch_engine.warmup(_batch(1))
    for size in (1, 5):
        x = _batch(size, seed=size)
        got, expected = torch_engine.run(x)["logits"], onnx_engine.run(x)["logits"]
        assert got.shape == (size, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(expected) > 0.1  # outputs that actually vary


def check_openvino_matches_onnxruntime(package: ModelPackage, home: Path) -> None:
    """Chosen by name through the registry, f32 as ONNX Runtime computes it, compiled once into the
    fsfm cache (``home``); bf16 is the same graph under OpenVINO's precision hint (f32 where the CPU
    lacks bf16)."""
    engine = open_engine(package, "openvino", "fp32")
    assert isinstance(engine, Engine) and (engine.name, engine.selection.path) == ("openvino", package.onnx_path)
    assert (engine.input_name, engine.output_names) == ("images", ("logits",))
    assert any((home / "openvino").iterdir())  # the compiled model, cached
    reference = OnnxRuntimeEngine(package.onnx_path)
    bf16 = open_engine(package, "openvino", "bf16")  # no declared bf16 variant: OpenVINO derives it
    chosen = bf16.selection
    assert (chosen.engine, chosen.precision, chosen.path) == ("openvino", "bf16", package.onnx_path)
    # int8: NNCF's static quantisation into an IR, calibrated on inputs like the model's
    ir = home / OPENVINO_INT8_FILE
    quantize_openvino_int8(package.onnx_path, ir, [_batch(1, seed=100 + k) for k in range(16)])
    variant = Variant(precision="int8", format="openvino-ir", file=str(ir), method="test")
    int8 = open_engine(ModelPackage(package.manifest.with_variant(variant), package.path), "openvino", "int8")
    assert (int8.selection.precision, int8.selection.path) == ("int8", ir)
    for size in (1, 5):
        x = _batch(size, seed=size)
        expected = reference.run(x)["logits"]
        got = engine.run(x)["logits"]
        assert got.shape == (size, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)
        np.testing.assert_allclose(bf16.run(x)["logits"], expected, atol=5e-2)
        quantized = int8.run(x)["logits"]
        assert quantized.shape == (size, 2) and not np.array_equal(quantized, expected)  # another graph ran
        np.testing.assert_allclose(quantized, expected, atol=0.15 * np.abs(expected).max())  # 2 tiny layers in int8
    for made in (engine, bf16, int8):
        made.close()


def test_openvino_engine_matches_onnxruntime(package: ModelPackage, tmp_path: Path) -> None:
    """Run in a process of its own: with OpenVINO's runtime loaded beside PyTorch in one process, a
    later multiprocessing lock (tqdm's, in the pretraining tests) aborted the test process."""
    code = (
        "import sys; from pathlib import Path; from fsfm.package.repository import load_package; "
        "from tests.test_engines import check_openvino_matches_onnxruntime as check; "
        "check(load_package(Path(sys.argv[1])), Path(sys.argv[2]))"
    )
    env = {**os.environ, "FSFM_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(package.path), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_torch_weights_must_be_the_packages(package: ModelPackage, tmp_path: Path) -> None:
    other = make_tiny_package(tmp_path)
    with pytest.raises(ExportError, match="not the weights it was exported from"):
        save_torch_weights(tiny_classifier(seed=1), other)
    assert not (other.path / TORCH_WEIGHTS_FILE).exists()
    with pytest.raises(EngineError, match="fsfm export --with-torch"):
        TorchEngine(other)


def test_engine_modules_import_without_torch(package: ModelPackage, tmp_path: Path) -> None:
    body = f"""
        import sys
        import fsfm.engines.tensorrt
        from fsfm.engines.base import Engine, EngineCancelled, EngineError, RunCancellation
        from fsfm.engines.torch import TorchEngine
        from fsfm.package.repository import load_package

        try:
            TorchEngine(load_package({str(package.path)!r}))
        except EngineError as exc:
            print(exc)
        assert "torch" not in sys.modules
        """
    result = run_without_torch(tmp_path, ["-c", textwrap.dedent(body)], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "the torch engine needs PyTorch" in result.stdout


def test_fp16_graph_for_tensorrt_keeps_float32_io(package: ModelPackage) -> None:
    """The graph ``build_plan`` gives TensorRT for fp16: float32 in and out, float16 inside, and
    still the model (ONNX Runtime's CPU kernels run it)."""
    graph = onnx_bytes(package.onnx_path, "fp16")
    model = onnx.load_from_string(graph)
    onnx.checker.check_model(model)
    float16 = onnx.TensorProto.FLOAT16
    assert any(t.data_type == float16 for t in model.graph.initializer)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    assert [(t.name, t.type) for t in session.get_inputs() + session.get_outputs()] == [
        ("images", "tensor(float)"),
        ("logits", "tensor(float)"),
    ]
    x = _batch(4)
    np.testing.assert_allclose(
        session.run(None, {"images": x})[0],
        OnnxRuntimeEngine(package.onnx_path, providers=["CPUExecutionProvider"]).run(x)["logits"],
        atol=2e-2,
    )


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT and a GPU are present: the gpu tests run instead")
def test_tensorrt_unavailable_is_said_clearly(package: ModelPackage, tmp_path: Path) -> None:
    installed = importlib.util.find_spec("tensorrt") is not None
    expected = "CUDA Python|no NVIDIA GPU" if installed else "TensorRT is not installed"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(EngineError, match=expected):
        TensorRTEngine(plan)
    with pytest.raises(RuntimeError, match=expected):
        build_plan(package.onnx_path, tmp_path / "built.plan")
    assert not (tmp_path / "built.plan").exists()
    manifest_before = (package.path / "manifest.json").read_text()
    with pytest.raises(RuntimeError, match=expected):
        add_plan_to_package(package)
    assert (package.path / "manifest.json").read_text() == manifest_before
    assert not (package.path / "model.plan").exists()


def test_missing_device_is_said_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT and CUDA Python installed on a machine without a GPU (a CI runner, say)."""

    class CudaError(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorNoDevice = 100

    runtime = types.SimpleNamespace(cudaError_t=CudaError, cudaGetDeviceCount=lambda: (CudaError.cudaErrorNoDevice, 0))
    bindings = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(bindings=bindings))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    with pytest.raises(EngineError, match=r"no NVIDIA GPU \(CUDA says cudaErrorNoDevice\)"):
        require_tensorrt()


@needs_tensorrt
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-2), ("fp16", 5e-2)])
def test_gpu_tensorrt_plan_matches_onnxruntime(precision: str, atol: float, tmp_path: Path) -> None:
    package = add_plan_to_package(
        make_tiny_package(tmp_path), precision=precision, min_batch=2, opt_batch=4, max_batch=8, workspace_gib=1
    )
    info = package.manifest.variant(precision, "tensorrt-plan")
    assert info is not None and (info.precision, info.plan.min_batch, info.plan.max_batch) == (precision, 2, 8)
    assert load_package(package.path).manifest.variant(precision, "tensorrt-plan") == info
    engine = TensorRTEngine(package.variant_path(info))
    assert isinstance(engine, Engine)
    assert (engine.input_name, engine.output_names, engine.sample_shape) == ("images", ("logits",), (3, 64, 64))
    reference = OnnxRuntimeEngine(package.onnx_path, providers=["CPUExecutionProvider"])
    engine.warmup(_batch(1))
    for size in (1, 5, 19):  # padded to the profile's minimum; one slice; three slices of at most 8
        x = _batch(size, seed=size)
        got, expected = engine.run(x)["logits"], reference.run(x)["logits"]
        assert got.shape == (size, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=atol)
    engine.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a GPU")
def test_gpu_torch_engine_runs_on_cuda(package: ModelPackage) -> None:
    engine = TorchEngine(package)
    assert engine.device.type == "cuda"
    reference = OnnxRuntimeEngine(package.onnx_path, providers=["CPUExecutionProvider"])
    x = _batch(5)
    # cuDNN may run the patch convolution in TF32 on the GPU: a looser tolerance than on the CPU.
    np.testing.assert_allclose(engine.run(x)["logits"], reference.run(x)["logits"], atol=1e-2)


def test_an_onnxruntime_run_is_cancelled_from_another_thread_and_the_next_run_works(package: ModelPackage) -> None:
    engine = OnnxRuntimeEngine(package.onnx_path)
    big = _batch(4096)  # long enough (~1 s here) to be caught running
    full = time.perf_counter()
    engine.run(big)
    full = time.perf_counter() - full
    cancellation = RunCancellation()
    threading.Timer(0.05, cancellation.cancel).start()
    started = time.perf_counter()
    with pytest.raises(EngineCancelled, match="cancelled"):
        engine.run(big, cancellation=cancellation)
    assert time.perf_counter() - started < 0.5 * full
    with pytest.raises(EngineCancelled, match="before it began"):  # cancelled before the run: it never starts
        engine.run(big, cancellation=cancellation)
    expected = OnnxRuntimeEngine(package.onnx_path).run(_batch(2))["logits"]
    np.testing.assert_allclose(engine.run(_batch(2), cancellation=RunCancellation())["logits"], expected)


def test_the_batcher_stops_a_batch_every_face_of_which_was_cancelled(package: ModelPackage) -> None:
    """A request whose faces fill a running batch goes away: the engine's run stops (a cancellable
    engine) instead of computing what nobody waits for, and the next request is served at once."""
    from service.batcher import DynamicBatcher
    from service.metrics import Metrics

    engine = OnnxRuntimeEngine(package.onnx_path)
    full = time.perf_counter()
    engine.run(_batch(2048))
    full = time.perf_counter() - full

    async def scenario() -> tuple[float, np.ndarray]:
        batcher = DynamicBatcher(engine, "tiny", Metrics(), max_batch_size=2048, max_queue_size=4096)
        batcher.start()
        try:
            abandoned = asyncio.ensure_future(batcher.infer(_batch(2048)))
            await asyncio.sleep(full / 4)  # its batch is running
            abandoned.cancel()
            started = time.perf_counter()
            answer = await batcher.infer(_batch(2))
            return time.perf_counter() - started, answer.outputs["logits"]
        finally:
            await batcher.stop()

    waited, logits = asyncio.run(scenario())
    assert logits.shape == (2, 2) and waited < 0.5 * full, (waited, full)
