"""``fsfm bench report``: every benchmark, for each model, in one run, written to
``docs/performance.md`` (and the numbers to ``docs/performance.json``).

First the machine: its CPU and features, and each precision's ceiling (``benchmarks.ceilings``).
Per model: the engines alone (``auto``, the service's default; ONNX Runtime fp32 and int8; OpenVINO
f32, bf16 where the CPU has bf16 instructions, int8; torch; TensorRT where a GPU and TensorRT are
present), one request stage by stage, and the service started on loopback with its defaults,
driven over REST, gRPC and gRPC streams; then the targets, evaluated on these numbers. The models
have random weights (speed does not depend on them), with every variant this machine can make,
judged on the sample photos' faces.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.ceilings import ceilings_line, measure_ceilings
from benchmarks.engine import EngineReport, batch_sizes, create_bench_engine, engine_table, run_engines
from benchmarks.inputs import one_face_jpeg, sample_face_folder, sample_face_tensors
from benchmarks.models import BENCH_MODELS, bench_repository, ensure_bench_package, with_measured_variants
from benchmarks.pipeline import PipelineResult, bench_pipeline, pipeline_table
from benchmarks.serve import LevelResult, level_line, serve_table, served, sweep
from benchmarks.stats import table, write_json
from benchmarks.targets import Check, checks_table, engine_checks, service_checks, stage_checks
from fsfm.engines.select import BF16_MATH, Host, cpu_model
from fsfm.face.detector import create_detector
from fsfm.package import ModelPackage


def cpu_engines(host: Host) -> list[str]:
    """The CPU engines and precisions measured: bf16 only where the CPU has bf16 instructions (else
    OpenVINO would run f32 under that name)."""
    bf16 = ["openvino:bf16"] if BF16_MATH & host.cpu_features else []
    return ["auto", "onnxruntime", "onnxruntime:int8", "openvino", *bf16, "openvino:int8", "torch"]


# The service as it ships (its batching defaults), driven at these levels.
SERVICE_SETTINGS: dict[str, object] = {"max_batch_size": 8, "max_queue_delay_ms": 5.0}
LOAD_PLAN: list[tuple[str, int]] = [("rest", 1), ("rest", 8), ("rest", 32), ("grpc", 32), ("stream", 8)]


@dataclass
class ReportOptions:
    models: Sequence[str] = ("vit-b16", "vit-s16")
    duration_s: float = 30.0  # per load level
    min_seconds: float = 3.0  # per engine batch size
    max_batch: int = 8
    pipeline_repeats: int = 10
    load_plan: Sequence[tuple[str, int]] = tuple(LOAD_PLAN)
    repository: Path | None = None  # where the benchmark models are cached (default: the fsfm cache)


@dataclass
class ModelReport:
    name: str
    preset: str
    input_size: int
    gflops_per_face: float
    engine: EngineReport
    pipeline: PipelineResult
    service_settings: dict[str, object]
    load: list[LevelResult]
    checks: list[Check] = field(default_factory=list)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import numpy
    import onnxruntime

    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(_mem_total_kib() / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "openvino": _version("openvino"),
        "gpu": gpu_name(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _mem_total_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def gpu_name() -> str | None:
    """The CUDA GPU torch sees, or None (no GPU, or no CUDA build of torch)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def with_gpu_engines(package: ModelPackage) -> tuple[list[str], str | None]:
    """The engines to measure: the CPU ones, plus TensorRT when a GPU is here (its plan is built
    into the cached benchmark package first). Returns the list and why TensorRT was left out."""
    cpu = cpu_engines(Host.detect())
    if gpu_name() is None:
        return cpu, "no CUDA GPU on this machine"
    plan = next((v for v in package.manifest.variants if v.format == "tensorrt-plan"), None)
    if plan is None or not package.variant_path(plan).is_file():
        from training.tensorrt_build import add_plan_to_package

        try:
            add_plan_to_package(package, precision="fp16", min_batch=1, opt_batch=8, max_batch=32)
        except RuntimeError as exc:  # EngineError (TensorRT or CUDA Python missing) is a RuntimeError
            return cpu, str(exc)
    return [*cpu, "tensorrt"], None


def measure_model(
    name: str, options: ReportOptions, ceilings: dict[str, float], say: Callable[[str], None]
) -> ModelReport:
    detector = create_detector()
    package = ensure_bench_package(name, options.repository)
    faces = sample_face_folder(detector, package.manifest, (options.repository or bench_repository()) / f"faces-{name}")
    package = with_measured_variants(package, faces)
    vit = package.manifest.architecture.vit
    engines, left_out = with_gpu_engines(package)
    say(f"{name}: engines {', '.join(engines)}")
    engine_report = run_engines(
        package,
        engines,
        batch_sizes(options.max_batch),
        ceilings,
        min_seconds=options.min_seconds,
        faces=sample_face_tensors(detector, package.manifest),
        skip_unavailable=True,
    )
    if left_out:
        engine_report.unavailable["tensorrt"] = left_out
    say(engine_table(engine_report.runs))
    data = one_face_jpeg(detector)
    pipeline = bench_pipeline(data, package, detector, create_bench_engine("auto", package), options.pipeline_repeats)
    say(pipeline_table(pipeline))
    settings = {**SERVICE_SETTINGS, "engine": "auto"}
    with served(package, settings) as target:
        load = asyncio.run(sweep(target, data, options.load_plan, options.duration_s, lambda r: say(level_line(r))))
    report = ModelReport(
        name, BENCH_MODELS[name][0], vit.img_size, vit.flops_per_image() / 1e9, engine_report, pipeline, settings, load
    )
    report.checks = (
        engine_checks(engine_report.runs)
        + service_checks(engine_report.runs, load, "auto", float(settings["max_queue_delay_ms"]))
        + stage_checks(pipeline, load)
    )
    return report


def run_report(options: ReportOptions, markdown: Path, json_path: Path, say: Callable[[str], None] = print) -> None:
    info = machine()
    measured = measure_ceilings(options.min_seconds)
    info["ceilings_gflops"] = {precision: round(c.gflops, 1) for precision, c in measured.items()}
    info["ceilings"] = ceilings_line(measured)
    say(f"CPU: {info['cpu']}; ceilings: {info['ceilings']}")
    reports = [measure_model(name, options, dict(info["ceilings_gflops"]), say) for name in options.models]
    write_json(json_path, {"machine": info, "options": options, "models": reports})
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render(info, reports, json_path.name))


def render(info: dict[str, object], reports: Sequence[ModelReport], json_name: str) -> str:
    lines = [
        "# Performance",
        "",
        f"Generated by `fsfm bench report` on {info['date']}; the numbers are also in `{json_name}`. "
        "Do not edit by hand: rerun the command. Models have random weights of the stated "
        "architecture (speed does not depend on the weights); requests carry one real face "
        "(a JPEG cut from the sample group photo).",
        "",
        "## Machine",
        "",
        table(
            ["", ""],
            [
                ["CPU", f"{info['cpu']}, {info['cores']} cores available"],
                ["memory", f"{info['memory_gib']} GiB"],
                ["GPU", info["gpu"] or "none"],
                [
                    "ceilings: matrix products per precision with the engines' own kernels (benchmarks/ceilings.py)",
                    info["ceilings"],
                ],
                [
                    "software",
                    f"Python {info['python']}, ONNX Runtime {info['onnxruntime']} "
                    f"({', '.join(info['onnxruntime_providers'])}), OpenVINO {info['openvino']}, "
                    f"torch {info['torch']}, numpy {info['numpy']}",
                ],
            ],
        ),
        "",
        "## Targets",
        "",
    ]
    for report in reports:
        lines += [f"**{report.name}**", "", checks_table(report.checks), ""]
    for report in reports:
        lines += _model_section(report)
    return "\n".join(lines)


def _model_section(report: ModelReport) -> list[str]:
    engine = report.engine
    lines = [
        f"## {report.name} ({report.preset}, {report.input_size} px, {report.gflops_per_face:.1f} GFLOP per face)",
        "",
        "### Engine alone",
        "",
        "Random inputs of the model's shape; faces/s from the median time per call.",
        "",
        engine_table(engine.runs),
        "",
    ]
    for kind, drift in engine.drift.items():
        lines.append(
            f"- {kind}: largest |logit difference| from ONNX Runtime fp32 on the sample photo's real faces: {drift:.3g}"
        )
    for kind, why in engine.unavailable.items():
        lines.append(f"- {kind}: not measured ({why})")
    pipeline = report.pipeline
    lines += [
        "",
        "### One request, stage by stage",
        "",
        f"{pipeline.width}x{pipeline.height} JPEG ({pipeline.image_bytes:,} bytes), {pipeline.faces} face; "
        "each stage alone on an idle machine (median); the engine `auto` chooses.",
        "",
        pipeline_table(pipeline),
        "",
        "### Service under load",
        "",
        f"`fsfm serve` on loopback with {', '.join(f'{k}={v}' for k, v in report.service_settings.items())}, "
        "driven from a separate process by closed-loop clients (see `benchmarks/serve.py`); "
        "mean batch size and stage times from the service's own metrics over the same window.",
        "",
        serve_table(report.load),
        "",
        table(
            ["protocol", "concurrency", *(f"{s} ms" for s in ("decode", "detect", "queue", "infer", "total"))],
            [
                [
                    r.protocol,
                    r.concurrency,
                    *(r.stage_ms.get(s, "-") for s in ("decode", "detect", "queue", "infer", "total")),
                ]
                for r in report.load
            ],
        ),
        "",
    ]
    return lines
