"""``fsfm bench engine``: engine-only throughput and latency per batch size, and the achieved
GFLOP/s against the model's FLOPs and the machine's measured matmul peak.

What runs is asked for as ``engine[:precision]`` (``onnxruntime``, ``onnxruntime:int8``, ``torch``,
``tensorrt``, ``auto``; engines from ``fsfm.engines.registry``) and chosen by the same function as
the service's, ``fsfm.engines.select.select_variant``. A package without an int8 variant is
measured with the same quantisation as ``fsfm quantize`` makes, made once into the fsfm cache (the
package folder is left as it is).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from benchmarks.stats import Latency, latency, table
from fsfm.engines.base import Engine, EngineError
from fsfm.engines.registry import ENGINES, EngineOptions, create_engine
from fsfm.engines.select import AUTO, select_variant
from fsfm.package import ModelPackage
from fsfm.package.manifest import PRECISIONS, Variant


@dataclass
class EngineRun:
    """One engine at one batch size."""

    engine: str  # as asked for: engine[:precision]
    batch_size: int
    faces_per_s: float  # batch_size / median batch time
    batch: Latency  # time per engine call
    gflops: float  # achieved: model FLOPs per face x faces/s
    peak_share: float | None  # gflops / the matmul peak measured in the same run
    precision: str = "fp32"  # the variant that ran


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch`` (included even when not a power of two)."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def matmul_peak_gflops(sizes: Sequence[int] = (2048, 4096), repeats: int = 3) -> float:
    """The CPU's float32 matmul rate with every core (numpy's BLAS): the best of ``repeats`` square
    products of each size. The ceiling a ViT, which is almost all matmuls, can approach here."""
    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        a @ a  # threads up, pages touched
        best = max(best, 2 * n**3 / min(_seconds(partial(np.matmul, a, a)) for _ in range(repeats)) / 1e9)
    return best


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
        runs.append(EngineRun(label, size, faces_per_s, latency(measured), gflops, share, precision))
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


def with_int8(package: ModelPackage) -> ModelPackage:
    """``package`` itself when it has an int8 variant; else a view of it whose manifest lists the
    quantisation ``fsfm quantize`` would make (unjudged), kept in the fsfm cache under the graph's
    checksum. The package folder is left as it is."""
    if package.manifest.variant("int8") is not None:
        return package
    import onnxruntime

    from fsfm.assets import cache_dir
    from training.quantize import INT8_METHOD, quantize_int8

    path = cache_dir() / "bench-int8" / f"{package.manifest.onnx.sha256}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize_int8(package.onnx_path, path)
    method = INT8_METHOD.format(version=onnxruntime.__version__) + ", made by fsfm bench"
    variant = Variant(precision="int8", file=str(path), method=method)
    return ModelPackage(package.manifest.with_variant(variant), package.path)


def create_bench_engine(spec: str, package: ModelPackage, threads: int | None = None) -> Engine:
    """The engine ``spec`` (``engine[:precision]``) for ``package``, chosen as the service chooses."""
    engine, precision = split_spec(spec)
    if precision == "int8":
        package = with_int8(package)
    return create_engine(package, select_variant(package, engine, precision), EngineOptions(threads=threads))


def output_drift(reference: Engine, other: Engine, inputs: np.ndarray, output_name: str) -> float:
    """Largest |difference| of ``other``'s outputs from ``reference``'s on ``inputs``."""
    a = reference.run(inputs)[output_name]
    b = other.run(inputs)[output_name]
    return float(np.max(np.abs(a - b)))


def engine_table(runs: Sequence[EngineRun]) -> str:
    return table(
        ["engine", "batch", "faces/s", "batch p50 ms", "batch p99 ms", "GFLOP/s", "of matmul peak"],
        [
            [
                r.engine,
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
    peak_gflops: float
    runs: list[EngineRun]
    drift: dict[str, float]  # engine[:precision] -> max |logit difference| from onnxruntime fp32 on real faces
    unavailable: dict[str, str]  # engine -> why it could not run here


def run_engines(
    package: ModelPackage,
    engines: Sequence[str],
    sizes: Sequence[int],
    peak_gflops: float,
    threads: int | None = None,
    min_seconds: float = 2.0,
    faces: np.ndarray | None = None,
    skip_unavailable: bool = False,
) -> EngineReport:
    """Sweep each ``engine[:precision]`` over ``sizes``. ``faces`` (real face crops) measure how far
    the other engines' outputs drift from ONNX Runtime fp32's. An engine that cannot be made here (no
    GPU, no ``model.pt``, no variant) is recorded in ``unavailable`` when ``skip_unavailable``, else
    its error raises."""
    manifest = package.manifest
    flops = manifest.architecture.vit.flops_per_image()
    report = EngineReport(manifest.ref, flops, peak_gflops, [], {}, {})
    reference: Engine | None = None
    for spec in engines:
        try:
            engine = create_bench_engine(spec, package, threads)
        except EngineError as exc:
            if not skip_unavailable:
                raise
            report.unavailable[spec] = str(exc)
            continue
        chosen = engine.selection  # set by create_engine
        peak = peak_gflops if chosen.precision == "fp32" and _on_cpu(engine) else None
        report.runs += sweep(
            engine, spec, manifest.crop.size, flops, sizes, min_seconds, peak_gflops=peak, precision=chosen.precision
        )
        if reference is None and (chosen.engine, chosen.precision) == ("onnxruntime", "fp32"):
            reference = engine
        elif faces is not None and reference is not None:
            report.drift[spec] = output_drift(reference, engine, faces, manifest.onnx.output_name)
    return report


def _on_cpu(engine: Engine) -> bool:
    """Whether the engine runs on the CPU, whose matmul peak the share is taken against."""
    if engine.name == "onnxruntime":
        return getattr(engine, "providers", [""])[0] == "CPUExecutionProvider"
    if engine.name == "torch":
        return getattr(engine, "device", None) is not None and engine.device.type == "cpu"
    return False
