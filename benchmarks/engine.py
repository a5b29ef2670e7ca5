"""``fsfm bench engine``: engine-only throughput and latency per batch size, and the achieved
GFLOP/s against the model's FLOPs and the ceiling of the precision that ran (``benchmarks.ceilings``:
the CPU's matrix-product rate per precision, measured with the engines' own kernels).

What runs is asked for as ``engine[:precision]`` (``onnxruntime``, ``onnxruntime:int8``,
``openvino:bf16``, ``torch``, ``tensorrt``, ``auto``; engines from ``fsfm.engines.registry``) and
chosen by the same function as the service's, ``fsfm.engines.select.select_variant``, from the
variants the package carries (``fsfm quantize``; the benchmark packages get every variant this
machine can make, judged on the sample photos' faces).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.stats import Latency, latency, table
from fsfm.engines.base import Engine, EngineError
from fsfm.engines.registry import ENGINES, EngineOptions, create_engine
from fsfm.engines.select import AUTO, SelectionError, select_variant
from fsfm.package import ModelPackage
from fsfm.package.manifest import PRECISIONS


@dataclass
class EngineRun:
    """One engine at one batch size."""

    engine: str  # as asked for: engine[:precision]
    batch_size: int
    faces_per_s: float  # batch_size / median batch time
    batch: Latency  # time per engine call
    gflops: float  # achieved: model FLOPs per face x faces/s
    peak_share: float | None  # gflops / the ceiling of ``precision`` measured in the same run (CPU engines)
    precision: str = "fp32"  # the variant that ran
    selected: str = ""  # the engine that ran (what "auto" chose)


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch`` (included even when not a power of two)."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def time_batches(engine: Engine, batch: np.ndarray, min_seconds: float, min_calls: int) -> list[float]:
    """Seconds per ``engine.run(batch)`` until both minimums are met."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        times.append(_seconds(lambda: engine.run(batch)))
    return times


def sweep(
    engine: Engine,
    label: str,
    input_size: int,
    flops_per_face: int,
    sizes: Sequence[int],
    min_seconds: float = 2.0,
    min_calls: int = 3,
    peak_gflops: float | None = None,
    rounds: int = 3,
    precision: str = "fp32",
    selected: str = "",
) -> list[EngineRun]:
    """Time ``engine`` at each batch size on random inputs of the model's shape. The sizes take
    turns over ``rounds`` rounds (each round a share of ``min_seconds`` and ``min_calls``), so a
    slow spell of a shared machine spreads over all of them instead of skewing one."""
    rng = np.random.default_rng(0)
    batches = {size: rng.standard_normal((size, 3, input_size, input_size), dtype=np.float32) for size in sizes}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for batch in batches.values():
        engine.run(batch)  # first calls allocate and tune
    for _ in range(rounds):
        for size, batch in batches.items():
            times[size] += time_batches(engine, batch, min_seconds / rounds, max(1, -(-min_calls // rounds)))
    runs = []
    for size, measured in times.items():
        faces_per_s = size / float(np.median(measured))
        gflops = flops_per_face * faces_per_s / 1e9
        share = gflops / peak_gflops if peak_gflops else None
        runs.append(EngineRun(label, size, faces_per_s, latency(measured), gflops, share, precision, selected))
    return runs


def split_spec(spec: str) -> tuple[str, str]:
    """``"engine[:precision]"`` -> (engine, precision), "auto" where left out."""
    engine, _, precision = spec.partition(":")
    return engine or AUTO, precision or AUTO


def engine_specs(engines: Sequence[str], precisions: Sequence[str] | None = None) -> list[str]:
    """``engine[:precision]`` names checked against the registry; with ``precisions``, each engine
    named without one is measured at each of them (``onnxruntime:fp32``, ``onnxruntime:int8``, ...)."""
    pairs = [split_spec(spec) for spec in engines]
    if unknown := [engine for engine, _ in pairs if engine != AUTO and engine not in ENGINES]:
        raise EngineError(f"unknown engines {unknown}; choose from {[AUTO, *ENGINES]}")
    asked = [p for _, p in pairs] + list(precisions or [])
    if unknown := [p for p in asked if p != AUTO and p not in PRECISIONS]:
        raise EngineError(f"unknown precisions {unknown}; choose from {[AUTO, *PRECISIONS]}")
    specs: list[str] = []
    for spec, (engine, precision) in zip(engines, pairs, strict=False):
        if precisions is None or precision != AUTO:
            specs.append(spec)
        else:
            specs += [f"{engine}:{p}" for p in precisions]
    return specs


def create_bench_engine(spec: str, package: ModelPackage, threads: int | None = None) -> Engine:
    """The engine ``spec`` (``engine[:precision]``) for ``package``, chosen as the service chooses.
    A bare engine name is that engine's fp32 reference where it has one (``onnxruntime`` is plain
    ONNX Runtime fp32, the baseline ``auto`` is compared with), else its own choice (a TensorRT plan)."""
    engine, precision = split_spec(spec)
    if engine != AUTO and precision == AUTO:
        try:
            selection = select_variant(package, engine, "fp32")
        except SelectionError:
            selection = select_variant(package, engine, AUTO)
    else:
        selection = select_variant(package, engine, precision)
    return create_engine(package, selection, EngineOptions(threads=threads))


def output_drift(reference: Engine, other: Engine, inputs: np.ndarray, output_name: str) -> float:
    """Largest |difference| of ``other``'s outputs from ``reference``'s on ``inputs``."""
    a = reference.run(inputs)[output_name]
    b = other.run(inputs)[output_name]
    return float(np.max(np.abs(a - b)))


def engine_table(runs: Sequence[EngineRun]) -> str:
    return table(
        [
            "engine",
            "runs on",
            "batch",
            "faces/s",
            "batch p50 ms",
            "batch p99 ms",
            "GFLOP/s",
            "of its precision's ceiling",
        ],
        [
            [
                r.engine,
                r.selected or "-",
                r.batch_size,
                r.faces_per_s,
                r.batch.p50_ms,
                r.batch.p99_ms,
                r.gflops,
                "-" if r.peak_share is None else f"{100 * r.peak_share:.0f}%",
            ]
            for r in runs
        ],
    )


def best(runs: Sequence[EngineRun], engine: str | None = None) -> EngineRun | None:
    """The fastest run (of one engine, when given)."""
    chosen = [r for r in runs if engine is None or r.engine == engine]
    return max(chosen, key=lambda r: r.faces_per_s) if chosen else None


@dataclass
class EngineReport:
    model: str
    flops_per_face: int
    ceilings: dict[str, float]  # precision -> the CPU's matrix-product GFLOP/s at it (benchmarks.ceilings)
    runs: list[EngineRun]
    drift: dict[str, float]  # engine[:precision] -> max |logit difference| from onnxruntime fp32 on real faces
    unavailable: dict[str, str]  # engine -> why it could not run here


def run_engines(
    package: ModelPackage,
    engines: Sequence[str],
    sizes: Sequence[int],
    ceilings: Mapping[str, float] | None = None,
    threads: int | None = None,
    min_seconds: float = 2.0,
    faces: np.ndarray | None = None,
    skip_unavailable: bool = False,
) -> EngineReport:
    """Sweep each ``engine[:precision]`` over ``sizes``. ``faces`` (real face crops) measure how far
    the other engines' outputs drift from ONNX Runtime fp32's. An engine that cannot be made here (no
    GPU, no ``model.pt``, no variant) is recorded in ``unavailable`` when ``skip_unavailable``, else
    its error raises. Runs on the CPU get a share of their precision's ceiling where one was measured."""
    manifest = package.manifest
    flops = manifest.architecture.vit.flops_per_image()
    report = EngineReport(manifest.ref, flops, dict(ceilings or {}), [], {}, {})
    made: dict[str, Engine] = {}
    for spec in engines:
        try:
            engine = create_bench_engine(spec, package, threads)
        except EngineError as exc:
            if not skip_unavailable:
                raise
            report.unavailable[spec] = str(exc)
            continue
        chosen = engine.selection  # set by create_engine
        peak = report.ceilings.get(chosen.precision) if _on_cpu(engine) else None
        selected = f"{chosen.engine} {chosen.precision}"
        report.runs += sweep(
            engine,
            spec,
            manifest.crop.size,
            flops,
            sizes,
            min_seconds,
            peak_gflops=peak,
            precision=chosen.precision,
            selected=selected,
        )
        made[spec] = engine
    fp32 = [spec for spec, e in made.items() if (e.selection.engine, e.selection.precision) == ("onnxruntime", "fp32")]
    for spec, engine in made.items():
        if faces is not None and fp32 and spec != fp32[0]:
            report.drift[spec] = output_drift(made[fp32[0]], engine, faces, manifest.onnx.output_name)
    for engine in made.values():
        engine.close()
    return report


def _on_cpu(engine: Engine) -> bool:
    """Whether the engine runs on the CPU, whose ceilings the share is taken against."""
    if engine.name == "onnxruntime":
        return getattr(engine, "providers", [""])[0] == "CPUExecutionProvider"
    if engine.name == "torch":
        return getattr(engine, "device", None) is not None and engine.device.type == "cpu"
    return engine.name == "openvino"
