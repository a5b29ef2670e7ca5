"""``fsfm analyze``: the service's analysis of local files, in this process, registered in ``fsfm_cli``.

It runs the core behind ``fsfm serve`` (``service/core/``): one ``AnalysisCore`` over ``Settings`` with the
local queue, started once, ``analyze`` called for each file, stopped at the end. Settings come from the
same ``FSFM_*`` variables with the same defaults as ``fsfm serve``; the flags below override them.

Inputs: files and directories. A directory is walked recursively (sorted, files only) and keeps the files
whose first bytes are an image (JPEG, PNG, WebP) or a video (MP4/MOV, WebM), sniffed as the service does;
other files in it are skipped. A file named on the command line is always analysed.

Output (stdout): one object per file, ``path`` and then the REST response's fields (``report_json`` in
``service/rest/schemas.py``, docs/api.md), as JSON Lines written and flushed as each file finishes
(``--format jsonl``, the default) or as one JSON array at the end (``--format json``). ``--detect-only``
needs no model: each object has ``path``, ``media`` and the image's ``faces`` (a video's ``frames``) with
box, landmarks and detection score only. With more than one file and a terminal on stderr, a progress
bar goes to stderr.

Failures: a file that cannot be analysed gets ``{"path": ..., "error": {"reason": ..., "message": ...}}``
(the REST error object), a line ``PATH: message`` on stderr, and the exit code is 1 once every file is
done. A problem with the options or the model repository (no repository, unknown model, bad threshold)
is one line ``error: ...`` and exit code 2 (``fsfm.console.fail``), never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from fsfm.cli import TaskName
from fsfm.console import fail
from fsfm.flags import ENGINE_CHOICE, PrecisionChoice, plain
from service.commands import DetectorChoice, option, settings_or_exit

if TYPE_CHECKING:
    from service.core import AnalysisCore, AnalysisOptions
    from service.settings import Settings

TRANSPORT = "cli"  # the ``transport`` label of the service's metrics
FILE_DEADLINE_S = 24 * 3600.0  # a file on the command line waits for its answer: a day stands in for "no deadline"
SNIFF_BYTES = 16  # enough for every signature: WebP's "WEBP" ends at byte 12, MP4's "ftyp" at byte 8
OPTION_REASONS = frozenset(
    {  # errors about the options, not the file: every file would fail alike
        "invalid_parameter",
        "bad_fps",
        "model_not_found",
        "wrong_task",
        "unknown_task",
        "unknown_operating_point",
        "bad_threshold",
        "unknown_evidence",
        "evidence_exceeds_queue",
    }
)

Entry = dict[str, Any]


class OutputFormat(str, Enum):
    """jsonl: one line per file, written as it finishes; json: one array when every file is done."""

    jsonl = "jsonl"
    json = "json"


def analyze(
    paths: list[Path] = typer.Argument(
        ..., help="Image (JPEG, PNG, WebP) and video (MP4, WebM) files, and folders, searched recursively."
    ),
    models: Path | None = option("models", "Model repository folder."),
    task: TaskName | None = typer.Option(
        None, help="Which kind of model judges the faces (default: the --model's task, else deepfake)."
    ),
    model: str | None = typer.Option(None, help="A model as name[:version] (default: the task's model)."),
    threshold: float | None = typer.Option(None, help="Attack-score threshold (default: the manifest's)."),
    target_fpr: float | None = typer.Option(None, help="Use the manifest's operating point for this FPR."),
    fps: float | None = typer.Option(None, help="Videos: frames sampled per second (default: evenly spread)."),
    max_frames: int | None = typer.Option(
        None, min=1, help="Videos: frames analysed, at most (default: FSFM_MAX_VIDEO_FRAMES)."
    ),
    evidence: str | None = typer.Option(
        None, help="Add evidence, comma-separated: heatmap, robustness, audit (docs/api.md, Evidence)."
    ),
    detect_only: bool = typer.Option(False, "--detect-only", help="Only detect faces; no model needed."),
    detector: DetectorChoice | None = option("detector", "Face detector."),
    detector_weights: Path | None = option("detector_weights", "Detector ONNX weights (folder for MTCNN)."),
    min_face_size: int | None = option("min_face_size", "Smallest face side searched for, in pixels."),
    engine: str | None = option("engine", "Inference engine; auto chooses one per package.", **ENGINE_CHOICE),
    precision: PrecisionChoice | None = option("precision", "Precision to run; the package carries the variant."),
    accept_drift: bool | None = option(
        "accept_drift", "Serve a precision asked for although its recorded drift exceeds the tolerance."
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.jsonl, "--format", help="jsonl: one line per file as it finishes; json: one array at the end."
    ),
) -> None:
    """Detect and score the faces in image and video files, as the service does.

    One JSON object per file on stdout. Files that cannot be analysed get an error object and a line on
    stderr, and the exit code is 1.
    """
    # Settings fields; ``--max-frames`` raises the service's ceiling too. The queue is always this process's.
    flags = {
        "models": models,
        "detector": detector,
        "detector_weights": detector_weights,
        "min_face_size": min_face_size,
        "engine": engine,
        "precision": precision,
        "accept_drift": accept_drift,
        "max_video_frames": max_frames,
    }
    try:
        import asyncio

        from service.core import AnalysisOptions
        from service.settings import Settings
    except ImportError as exc:
        fail(f"fsfm analyze needs the serve extra (pip install 'fsfm[serve]'): {exc}")

    given = {name: plain(value) for name, value in flags.items() if value is not None}
    settings = settings_or_exit(Settings, {"queue": "local", **given})
    options = AnalysisOptions(
        task=task.value if task else TaskName.deepfake.value,
        model=model,
        threshold=threshold,
        target_fpr=target_fpr,
        fps=fps,
        max_frames=max_frames,
        evidence=evidence,
    )
    inputs = list(media_inputs(paths))
    with Output(output_format, len(inputs)) as out:
        if detect_only:
            asyncio.run(detect_faces(settings, options, inputs, out))
        else:
            asyncio.run(analyze_files(settings, options, inputs, out, task_of_model=task is None))
    if out.failures:
        raise typer.Exit(1)


def media_inputs(paths: list[Path]) -> Iterator[Path]:
    """The files to analyse: each named file, and the media files under each named folder (sorted)."""
    from fsfm.imaging import sniff_image_type
    from service.media import sniff_video_type

    def is_media(path: Path) -> bool:
        try:
            with path.open("rb") as file:
                head = file.read(SNIFF_BYTES)
        except OSError:
            return False
        return sniff_image_type(head) is not None or sniff_video_type(head) is not None

    for path in paths:
        if path.is_dir():
            yield from (found for found in sorted(path.rglob("*")) if found.is_file() and is_media(found))
        else:
            yield path


class Output:
    """Entries to stdout (JSON Lines as they come, or one array at the end), errors and progress to stderr."""

    def __init__(self, output_format: OutputFormat, total: int) -> None:
        self.format = output_format
        self.entries: list[Entry] = []
        self.failures = 0
        self._bar = None
        if total > 1 and sys.stderr.isatty():
            import click

            self._bar = click.progressbar(length=total, label="analysing", show_pos=True, file=sys.stderr)

    def __enter__(self) -> Output:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)
        if self.format is OutputFormat.json and exc_info[0] is None:
            json.dump(self.entries, sys.stdout, indent=2)
            sys.stdout.write("\n")

    def result(self, path: Path, body: Entry) -> None:
        self._emit({"path": str(path), **body})

    def error(self, path: Path, reason: str, message: str) -> None:
        self.failures += 1
        typer.echo(f"{path}: {message}", err=True)
        self._emit({"path": str(path), "error": {"reason": reason, "message": message}})

    def _emit(self, entry: Entry) -> None:
        if self.format is OutputFormat.jsonl:
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
        else:
            self.entries.append(entry)
        if self._bar is not None:
            self._bar.update(1)


def setup_error(exc: BaseException) -> NoReturn:
    """A setup problem (repository, model, detector weights, threshold) as one line, exit code 2."""
    fail(str(exc).strip("'\""))


async def analyze_files(
    settings: Settings, options: AnalysisOptions, inputs: list[Path], out: Output, task_of_model: bool
) -> None:
    """The core, started once: each file's bytes become one ``AnalysisRequest``. ``task_of_model``:
    the task was not chosen, so a named model judges its own task."""
    import time
    from dataclasses import replace

    from fsfm.engines.base import EngineError
    from fsfm.package import PackageError
    from fsfm.scoring import resolve_threshold
    from service.core import AnalysisCore, AnalysisRequest, RequestContext
    from service.errors import AnalysisError
    from service.rest.schemas import report_json

    core = AnalysisCore(settings)
    try:
        try:
            await core.start()
            if task_of_model and options.model:
                options = replace(options, task=_model_task(core, options.model))
            resolve_threshold(core.models.resolve(options).manifest, options.threshold, options.target_fpr)
        except AnalysisError as exc:
            fail(exc.message)
        except (PackageError, EngineError, FileNotFoundError, KeyError, ValueError) as exc:
            setup_error(exc)

        async def one(data: bytes) -> Entry:
            context = RequestContext(TRANSPORT, deadline=time.monotonic() + FILE_DEADLINE_S)
            return report_json(await core.analyze(AnalysisRequest(options, context, media=data)))

        await each_file(inputs, out, one)
    finally:
        await core.stop()


def _model_task(core: AnalysisCore, model: str) -> str:
    """The task of ``model`` (name[:version]) in the core's repository (loaded by ``start``)."""
    assert core.models.repository is not None
    return core.models.repository.get(model).manifest.task


async def detect_faces(settings: Settings, options: AnalysisOptions, inputs: list[Path], out: Output) -> None:
    """``--detect-only``: the media step and the detector of the core, no model."""
    from fsfm.analysis import FaceResult
    from fsfm.face.detector import create_detector
    from service.core import FrameReport
    from service.media import MEDIA_KINDS, Sampling, decode_media
    from service.rest.schemas import faces_json

    try:
        face_detector = create_detector(settings.detector_config())
    except (FileNotFoundError, ValueError) as exc:
        setup_error(exc)
    max_frames = options.max_frames or settings.max_video_frames
    sampling = Sampling(settings.max_video_seconds, max_frames, options.fps, settings.max_video_pixels)

    async def one(data: bytes) -> Entry:
        media = decode_media(data, MEDIA_KINDS, settings.image_limits(), sampling)
        frames = [
            FrameReport(f.index, f.time_s, [FaceResult(face) for face in face_detector.detect(f.rgb)])
            for f in media.frames
        ]
        return {"media": media.kind, **faces_json(frames, media.kind == "video")}

    await each_file(inputs, out, one)


async def each_file(inputs: list[Path], out: Output, analyze_one: Callable[[bytes], Awaitable[Entry]]) -> None:
    """Read each file and analyse its bytes; a failure is the file's entry, or the end when it is
    about the options (``OPTION_REASONS``)."""
    from fsfm.imaging import ImageError, read_file
    from service.errors import AnalysisError

    for path in inputs:
        try:
            out.result(path, await analyze_one(read_file(path)))
        except ImageError as exc:
            out.error(path, exc.code, str(exc))
        except AnalysisError as exc:
            if exc.reason in OPTION_REASONS:
                fail(exc.message)
            out.error(path, exc.reason, exc.message)
