"""``fsfm bench engine | pipeline | serve | hostile | report``, mounted by ``fsfm_cli``. Heavy imports
live in the command bodies."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer

from benchmarks.models import BENCH_MODELS
from fsfm.console import fail
from fsfm.engines.select import AUTO
from fsfm.face.detector import DetectorKind
from fsfm.flags import ENGINE_CHOICE, PrecisionChoice, TaskChoice, choices, plain

bench_app = typer.Typer(
    help="Measure speed: engine-only, per pipeline stage, and the service end to end under load.",
    no_args_is_help=True,
)

DetectorChoice = choices("DetectorChoice", get_args(DetectorKind))
MODEL_HELP = f"Benchmark model (random weights, exported once into the fsfm cache): {', '.join(BENCH_MODELS)}."
PACKAGE_HELP = "A model package folder (models/NAME/VERSION) to measure instead of --model."
GROUP_FRAME_HELP = "Send a 1280x720 frame of the sample group photo (six faces) instead of a one-face JPEG."


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        fail(f"{what} must be positive integers separated by commas, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _package(model: str, package: Path | None):
    """The package given, as it is; else the benchmark model with every variant this machine can
    make, judged on the sample photos' faces (so that ``auto`` chooses as for a quantised package)."""
    from benchmarks.inputs import sample_face_folder
    from benchmarks.models import bench_repository, ensure_bench_package, with_measured_variants
    from fsfm.package import PackageError
    from fsfm.package.repository import load_package

    try:
        if package is not None:
            return load_package(package)
        made = ensure_bench_package(model)
        faces = sample_face_folder(_detector(), made.manifest, bench_repository() / f"faces-{model}")
        return with_measured_variants(made, faces)
    except (PackageError, ValueError) as exc:
        fail(str(exc))


def _detector(kind: str | None = None, min_face_size: int | None = None):
    """The service's detector by default; ``kind`` and ``min_face_size`` override its settings."""
    from fsfm.face.detector import DetectorConfig, create_detector

    given = {"kind": kind, "min_face_size": min_face_size}
    try:
        return create_detector(DetectorConfig(**{key: value for key, value in given.items() if value is not None}))
    except FileNotFoundError as exc:
        fail(str(exc))


def _request_image(detector, image: Path | None, group_frame: bool) -> bytes:
    """What the benchmark sends: ``image``, the six-face 1280x720 group frame, or a one-face JPEG."""
    from benchmarks.inputs import group_frame_jpeg, one_face_jpeg

    if image is not None and group_frame:
        fail("give --image or --group-frame, not both")
    return group_frame_jpeg() if group_frame else one_face_jpeg(detector, image)


def _write_json(path: Path | None, value: object) -> None:
    if path is not None:
        from benchmarks.stats import write_json

        write_json(path, value)
        typer.echo(f"wrote {path}")


@bench_app.command("engine")
def engine(
    model: str = typer.Option("vit-b16", help=MODEL_HELP),
    package: Path | None = typer.Option(None, exists=True, file_okay=False, help=PACKAGE_HELP),
    engines: str = typer.Option(
        "auto,onnxruntime",
        "--engines",
        help="Comma-separated engine[:precision]: auto (the service's choice), onnxruntime, onnxruntime:int8, "
        "openvino, openvino:bf16, openvino:int8, torch, tensorrt.",
    ),
    precisions: str | None = typer.Option(
        None, "--precisions", help="Comma-separated precisions (fp32, bf16, int8, fp16) to measure each engine at."
    ),
    max_batch: int = typer.Option(8, min=1, help="Batch sizes 1, 2, 4, ... up to this."),
    threads: int | None = typer.Option(None, min=1, help="ONNX Runtime intra-op threads (default: all cores)."),
    min_seconds: float = typer.Option(2.0, min=0.0, help="Time each batch size for at least this long (and 3 calls)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Measure the engines alone: faces/s and latency per batch size.

    Also GFLOP/s against the model's FLOPs and the ceiling of the precision each engine ran, measured
    first with the engines' own kernels (fp32, and bf16 and int8 where the CPU has them).
    """
    from benchmarks.ceilings import ceilings_line, measure_ceilings
    from benchmarks.engine import batch_sizes, engine_specs, engine_table, run_engines
    from benchmarks.inputs import sample_face_tensors
    from benchmarks.targets import checks_table, engine_checks
    from fsfm.engines.base import EngineError
    from fsfm.engines.select import cpu_model

    try:
        kinds = engine_specs(_names(engines), _names(precisions) if precisions else None)
    except EngineError as exc:
        fail(str(exc))
    chosen = _package(model, package)
    faces = sample_face_tensors(_detector(), chosen.manifest) if len(kinds) > 1 else None
    measured = measure_ceilings()
    typer.echo(f"CPU: {cpu_model()}; ceilings: {ceilings_line(measured)}")
    typer.echo(f"{chosen.manifest.ref}: {chosen.manifest.architecture.vit.flops_per_image() / 1e9:.3g} GFLOP per face")
    ceilings = {precision: ceiling.gflops for precision, ceiling in measured.items()}
    try:
        report = run_engines(chosen, kinds, batch_sizes(max_batch), ceilings, threads, min_seconds, faces)
    except EngineError as exc:
        fail(str(exc))
    typer.echo(engine_table(report.runs))
    for kind, drift in report.drift.items():
        typer.echo(f"{kind}: max |logit - onnxruntime's| on {len(faces)} real faces = {drift:.3g}")
    if checks := engine_checks(report.runs):
        typer.echo(checks_table(checks))
    _write_json(json_out, {"cpu": cpu_model(), "ceilings": measured, "engines": report})


@bench_app.command("pipeline")
def pipeline(
    model: str = typer.Option("vit-b16", help=MODEL_HELP),
    package: Path | None = typer.Option(None, exists=True, file_okay=False, help=PACKAGE_HELP),
    image: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="Request image (default: a one-face JPEG from the sample group photo)."
    ),
    group_frame: bool = typer.Option(False, "--group-frame", help=GROUP_FRAME_HELP),
    engine_kind: str = typer.Option(
        AUTO, "--engine", help="engine[:precision]: auto (the service's choice), onnxruntime, openvino:int8, ..."
    ),
    repeats: int = typer.Option(10, min=1),
    detector_kind: DetectorChoice | None = typer.Option(
        None, "--detector", help="The face detector, as the service's FSFM_DETECTOR (default: its default)."
    ),
    min_face_size: int | None = typer.Option(
        None, min=8, help="The detector's smallest face, as the service's FSFM_MIN_FACE_SIZE (default: its default)."
    ),
    evidence: str = typer.Option(
        "",
        help="Also measure evidence kinds, comma-separated (heatmap, robustness, audit): per judged face, audit per "
        "request.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Measure the cost of each stage of one request: decode, detect, crop, infer, encode; and of evidence."""
    from benchmarks.engine import create_bench_engine
    from benchmarks.pipeline import bench_pipeline, pipeline_table
    from fsfm.engines.base import EngineError
    from fsfm.evidence import parse_evidence

    try:
        kinds = parse_evidence(evidence)
    except ValueError as exc:
        fail(f"--evidence: {exc}")
    chosen = _package(model, package)
    detector = _detector(plain(detector_kind), min_face_size)
    data = _request_image(detector, image, group_frame)
    try:
        result = bench_pipeline(data, chosen, detector, create_bench_engine(engine_kind, chosen), repeats, kinds)
    except (EngineError, ValueError) as exc:
        fail(str(exc))
    typer.echo(
        f"{chosen.manifest.ref}, {result.width}x{result.height} image ({result.image_bytes:,} bytes), "
        f"{result.faces} judged face(s), engine {engine_kind}, median of {repeats}:"
    )
    typer.echo(pipeline_table(result))
    _write_json(json_out, result)


@bench_app.command("serve")
def serve(
    url: str | None = typer.Option(None, help="A running service's REST base URL; default: start one on loopback."),
    grpc_target: str | None = typer.Option(None, help="That service's gRPC address (host:port), for grpc and stream."),
    api_key: str | None = typer.Option(None, envvar="FSFM_BENCH_API_KEY", help="x-api-key for a service with keys."),
    task: TaskChoice = typer.Option(TaskChoice.deepfake, help="The task to ask a running service for."),
    model: str = typer.Option("vit-b16", help=MODEL_HELP.removesuffix(".") + " (for the service this starts)."),
    package: Path | None = typer.Option(None, exists=True, file_okay=False, help=PACKAGE_HELP),
    protocols: str = typer.Option(
        "rest,grpc,stream", "--protocols", help="Comma-separated: rest, grpc (AnalyzeImage), stream (Analyze)."
    ),
    concurrency: str = typer.Option("1,4,16,32", help="Comma-separated concurrency levels."),
    duration: float = typer.Option(20.0, min=1.0, help="Seconds of measurement per level, after its warm-up."),
    image: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="Request image (default: a one-face JPEG from the sample group photo)."
    ),
    group_frame: bool = typer.Option(False, "--group-frame", help=GROUP_FRAME_HELP),
    max_batch_size: int = typer.Option(8, min=1, help="The started service's FSFM_MAX_BATCH_SIZE."),
    max_queue_delay_ms: float = typer.Option(5.0, min=0.0, help="The started service's FSFM_MAX_QUEUE_DELAY_MS."),
    engine_kind: str = typer.Option(AUTO, "--engine", help="The started service's FSFM_ENGINE.", **ENGINE_CHOICE),
    engine_threads: int | None = typer.Option(None, min=1, help="The started service's ONNX Runtime threads."),
    precision: PrecisionChoice = typer.Option(
        PrecisionChoice.auto, help="The started service's FSFM_PRECISION (int8 needs a package with an int8 variant)."
    ),
    baseline: bool = typer.Option(
        True, help="When starting the service: measure its engine alone first, for the targets."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Measure the service under load at each concurrency level.

    Throughput, p50/p95/p99 latency, mean batch size (from its metrics) and errors. Without --url, starts
    `fsfm serve` on free loopback ports with only the chosen model, and compares with the engine alone.
    """
    import asyncio

    from benchmarks.engine import batch_sizes, create_bench_engine, run_engines
    from benchmarks.pipeline import bench_pipeline, pipeline_table
    from benchmarks.serve import PROTOCOLS, Target, level_line, plan, serve_table, served, sweep
    from benchmarks.targets import checks_table, service_checks, stage_checks
    from fsfm.engines.base import EngineError
    from service.local_server import ServerProcessError

    task, precision = plain(task), plain(precision)
    kinds = [p.strip() for p in protocols.split(",") if p.strip()]
    if unknown := [p for p in kinds if p not in PROTOCOLS]:
        fail(f"unknown protocols {unknown}; choose from {list(PROTOCOLS)}")
    levels = _int_list(concurrency, "--concurrency")
    detector = _detector()
    data = _request_image(detector, image, group_frame)

    def show(level) -> None:
        typer.echo(level_line(level))

    if url is not None:
        target = Target(url.rstrip("/"), grpc_target, task=task, api_key=api_key)
        results = asyncio.run(sweep(target, data, plan(kinds, levels), duration, show))
        typer.echo(serve_table(results))
        _write_json(json_out, {"levels": results})
        return
    chosen = _package(model, package)
    baseline_engine = f"{engine_kind}:{precision}"
    engine_report = stages = None
    if baseline:
        try:
            sizes = batch_sizes(max_batch_size)
            engine_report = run_engines(chosen, [baseline_engine], sizes, threads=engine_threads)
            stages = bench_pipeline(
                data, chosen, detector, create_bench_engine(baseline_engine, chosen, engine_threads)
            )
        except (EngineError, ValueError) as exc:
            fail(str(exc))
    settings = {
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "engine": engine_kind,
        "precision": precision,
        "max_queue_size": max(256, 4 * max(levels)),
    }
    if engine_threads is not None:
        settings["engine_threads"] = engine_threads
    try:
        with served(chosen, settings) as target:
            results = asyncio.run(sweep(target, data, plan(kinds, levels), duration, show))
    except ServerProcessError as exc:
        fail(f"the service did not start: {exc}")
    typer.echo(serve_table(results))
    if engine_report is not None and stages is not None:
        from benchmarks.engine import engine_table

        typer.echo(engine_table(engine_report.runs))
        typer.echo(f"one request, stage by stage ({stages.faces} judged face(s)):")
        typer.echo(pipeline_table(stages))
        checks = service_checks(engine_report.runs, results, baseline_engine, max_queue_delay_ms)
        typer.echo(checks_table(checks + stage_checks(stages, results)))
    _write_json(json_out, {"engine": engine_report, "stages": stages, "levels": results})


@bench_app.command("hostile")
def hostile(
    model: str = typer.Option("vit-b16", help=MODEL_HELP.removesuffix(".") + " (for the services this starts)."),
    package: Path | None = typer.Option(None, exists=True, file_okay=False, help=PACKAGE_HELP),
    quick: bool = typer.Option(False, "--quick", help="Every section at reduced sizes (a check of the run)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Measure the service under hostile and heavy load, on services it starts on loopback.

    Huge and truncated images and a long high-resolution video (status, seconds, the server's peak
    memory growth), a flood against a small admission limit, abandoned requests, random model names
    (/metrics size) and a frozen Redis queue.
    """
    from benchmarks.hostile import hostile_json, hostile_tables, run_hostile
    from benchmarks.inputs import one_face_jpeg
    from service.local_server import ServerProcessError

    chosen = _package(model, package)
    face = one_face_jpeg(_detector())
    try:
        result = run_hostile(chosen, face, quick=quick, say=typer.echo)
    except ServerProcessError as exc:
        fail(f"the service did not start: {exc}")
    typer.echo(hostile_tables(result))
    _write_json(json_out, hostile_json(result))


@bench_app.command("report")
def report(
    models: str = typer.Option(
        "vit-b16,vit-s16", help="Comma-separated benchmark models (see `fsfm bench engine --help`)."
    ),
    output: Path = typer.Option(Path("docs/performance.md"), help="The Markdown report to (re)write."),
    json_out: Path = typer.Option(Path("docs/performance.json"), "--json", help="The numbers, as JSON."),
    duration: float = typer.Option(30.0, min=0.5, help="Seconds of measurement per load level."),
    min_seconds: float = typer.Option(3.0, min=0.0, help="Seconds of timing per engine batch size."),
    max_batch: int = typer.Option(8, min=1, help="Engine batch sizes 1, 2, 4, ... up to this."),
    repository: Path | None = typer.Option(None, help="Where the benchmark models are kept (default: the fsfm cache)."),
) -> None:
    """Run every benchmark for each model and rewrite the performance report.

    The report covers the machine, the engines alone, one request stage by stage, the service under load,
    and the targets.
    """
    from benchmarks.report import ReportOptions, run_report

    names = [m.strip() for m in models.split(",") if m.strip()]
    if unknown := [m for m in names if m not in BENCH_MODELS]:
        fail(f"unknown benchmark models {unknown}; choose from {sorted(BENCH_MODELS)}")
    _detector()  # fails early and clearly without the detector's weights
    options = ReportOptions(
        models=names, duration_s=duration, min_seconds=min_seconds, max_batch=max_batch, repository=repository
    )
    run_report(options, output, json_out, say=typer.echo)
    typer.echo(f"wrote {output} and {json_out}")
