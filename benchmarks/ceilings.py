"""What the CPU can do per precision, measured with the engines' own kernels: the ceiling an
engine's ViT throughput is a share of.

A ViT is almost all matrix products of the shapes of its blocks. The probe is an ONNX graph of
``BLOCKS`` pairs of such products, ``(tokens, 768) @ (768, 3072) @ (3072, 768)``: ViT-B/16's MLP at
4 faces of 197 tokens, and nothing else. Each engine that runs a precision on this CPU runs it:

- fp32: ONNX Runtime and OpenVINO f32;
- bf16: OpenVINO's bf16 hint, on CPUs with bf16 instructions (AMX, AVX512-BF16);
- int8: ONNX Runtime's dynamic quantisation (u8 x s8 on AVX2 and up) and, on CPUs with int8 dot
  products (VNNI, AMX), OpenVINO's static int8 (NNCF).

A precision's ceiling is the fastest engine's rate (int8's in tera-operations, counted as
GFLOP/s); a precision the CPU has no instructions for gets none, so no share is claimed against a
rate the CPU does not have. numpy's sgemm is not the machine's ceiling: on a CPU with AMX, bf16
runs several times faster than any fp32 product.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsfm.engines.base import Engine
from fsfm.engines.registry import unavailable_engines
from fsfm.engines.select import BF16_MATH, INT8_DOT, Host

TOKENS = 4 * 197
WIDTH, HIDDEN = 768, 3072
BLOCKS = 2


@dataclass
class Ceiling:
    precision: str
    gflops: float  # the fastest engine's rate at this precision
    engine: str  # that engine
    by_engine: dict[str, float]  # every engine measured at this precision


def probe_flops() -> int:
    return BLOCKS * 2 * (2 * TOKENS * WIDTH * HIDDEN)


def write_probe(path: Path) -> Path:
    """The matmul-only ONNX graph (fixed shape; random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for block in range(BLOCKS):
        for index, shape in enumerate(((WIDTH, HIDDEN), (HIDDEN, WIDTH))):
            name = f"w{block}_{index}"
            weights.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.03).astype(np.float32), name))
            output = f"h{block}_{index}"
            nodes.append(helper.make_node("MatMul", [current, name], [output]))
            current = output
    graph = helper.make_graph(
        nodes,
        "matmul_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [TOKENS, WIDTH])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [TOKENS, WIDTH])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def best_rate(engine: Engine, inputs: np.ndarray, seconds: float) -> float:
    """GFLOP/s of the probe's fastest run within ``seconds`` (at least 3 runs, after one warm-up)."""
    engine.run(inputs)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        engine.run(inputs)
        times.append(time.perf_counter() - begin)
    return probe_flops() / min(times) / 1e9


def probe_engines(folder: Path, host: Host) -> dict[str, dict[str, Callable[[], Engine]]]:
    """precision -> engine name -> how to make that engine for the probe, for what runs here."""
    from fsfm.engines.onnxruntime import OnnxRuntimeEngine
    from training.quantize import quantize_int8

    probe = write_probe(folder / "probe.onnx")
    missing = unavailable_engines()
    makers: dict[str, dict[str, Callable[[], Engine]]] = {"fp32": {}, "bf16": {}, "int8": {}}

    def ort_int8() -> Engine:
        quantize_int8(probe, folder / "probe.int8.onnx")
        return OnnxRuntimeEngine(folder / "probe.int8.onnx")

    makers["fp32"]["onnxruntime"] = lambda: OnnxRuntimeEngine(probe)
    if "avx2" in host.cpu_features or INT8_DOT & host.cpu_features:
        makers["int8"]["onnxruntime"] = ort_int8
    if "openvino" not in missing:
        from fsfm.engines.openvino import OpenVinoEngine

        makers["fp32"]["openvino"] = lambda: OpenVinoEngine(probe, "fp32")
        if BF16_MATH & host.cpu_features:
            makers["bf16"]["openvino"] = lambda: OpenVinoEngine(probe, "bf16")
        if INT8_DOT & host.cpu_features:

            def openvino_int8() -> Engine:
                from training.quantize import quantize_openvino_int8

                rng = np.random.default_rng(1)
                calibration = [rng.standard_normal((TOKENS, WIDTH), dtype=np.float32) for _ in range(4)]
                quantize_openvino_int8(probe, folder / "probe.int8.xml", calibration)
                return OpenVinoEngine(folder / "probe.int8.xml", "int8")

            makers["int8"]["openvino"] = openvino_int8
    return {precision: engines for precision, engines in makers.items() if engines}


def measure_ceilings(seconds: float = 2.0, host: Host | None = None) -> dict[str, Ceiling]:
    """precision -> its ceiling on this CPU, for each precision some engine runs natively here."""
    host = Host.detect() if host is None else host
    inputs = np.random.default_rng(2).standard_normal((TOKENS, WIDTH), dtype=np.float32)
    ceilings: dict[str, Ceiling] = {}
    with tempfile.TemporaryDirectory(prefix="fsfm-ceilings-") as folder:
        for precision, makers in probe_engines(Path(folder), host).items():
            rates = {}
            for name, make in makers.items():
                engine = make()
                try:
                    rates[name] = best_rate(engine, inputs, seconds)
                finally:
                    engine.close()
            fastest = max(rates, key=rates.__getitem__)
            ceilings[precision] = Ceiling(precision, rates[fastest], fastest, rates)
    return ceilings


def ceilings_line(ceilings: dict[str, Ceiling]) -> str:
    """One line for the reports: each precision's ceiling and the engine that reached it."""
    return (
        "; ".join(f"{c.precision} {c.gflops:.0f} GFLOP/s ({c.engine})" for c in ceilings.values())
        or "no ceiling measured"
    )
