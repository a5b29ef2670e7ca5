"""``fsfm prepare``: a folder of face images and/or videos -> a dataset of aligned face crops with a
facial-region map per face, ready for FSFM pretraining (and usable for fine-tuning).

Input is either a folder of images/videos (searched recursively; faces found by the shared face
pipeline: detect -> 1.3x square crop -> resize, region maps from the landmarks by default or read
from ``--parsing-dir``), or a folder in the official layout, ``images/<name>.png`` +
``parsing_maps/<name>.npy`` (crops already made and parsed by a real face parser, the paper's setting).

Storage: uint8 ``.npy`` shards read through memory maps::

    <out>/manifest.json                  counts, parameters, skipped files, shards, normalisation
    <out>/pretrain_ds_mean_std.txt       the dataset's mean/std, one JSON line (official format)
    <out>/prepare.json                   the run's parameters (a resumed run must match them)
    <out>/shards/<k>.images.npy          uint8 (n, S, S, 3) RGB crops
    <out>/shards/<k>.regions.npy         uint8 (n, S, S) LaPa labels
    <out>/shards/<k>.json                the source files the shard covers, per-face metadata, pixel sums

Why: a training read is a slice of a memory-mapped array (no PNG decode, no per-face file open), so
data loading costs almost no CPU and the OS page cache does the caching; a few thousand files
instead of two per face keeps file systems and copies fast; it stays lossless, like the official
PNGs. The price is disk: ~200 kB per 224 px face (VGGFace2's 3 M faces: ~600 GB) against ~100 kB
for PNG + npy.

Resumable: a shard's JSON is written last, and lists every source file the shard accounts for
(faces, no face, or skipped); a rerun skips those files. Sources are processed in sorted order and
shards end at file boundaries, so a resumed run writes the same dataset as an uninterrupted one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from fsfm.face.crop import CropSpec, Normalization, crop_face, crop_region
from fsfm.face.detector import (
    DEFAULT_DETECTOR,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_SCORE_THRESHOLD,
    DETECT_MAX_SIDE,
    DetectorKind,
)
from fsfm.imaging import ImageError, read_image_file
from training.regions import LaPa, ParsingMapRegions, RegionSource, landmark_regions

FORMAT = "fsfm-faces/1"
MANIFEST = "manifest.json"
PARAMETERS = "prepare.json"
MEAN_STD_FILE = "pretrain_ds_mean_std.txt"
SHARDS = "shards"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
UnitKind = Literal["image", "video", "crop", "other"]


class PrepareError(RuntimeError):
    """A problem with the inputs or the output folder that the user must fix."""


class PrepareConfig(BaseModel):
    """What determines a prepared dataset (a resumed run must use the same values)."""

    size: int = Field(default=224, ge=16, description="crop side in pixels")
    scale: float = Field(default=1.3, gt=0, description="crop side / longer side of the face box (FSFM: 1.3)")
    frames: int | None = Field(default=128, ge=1, description="frames per video, evenly spaced (np.linspace)")
    frame_stride: int | None = Field(default=None, ge=1, description="every n-th frame instead of a count")
    max_faces: int = Field(default=1, ge=1, description="faces kept per image or frame, highest score first")
    # The detector's defaults are fsfm serve's (fsfm.face.detector): training crops are serving crops.
    min_face_size: int = Field(
        default=DEFAULT_MIN_FACE_SIZE, ge=8, description="smallest face side searched for, in pixels"
    )
    score_threshold: float = Field(default=DEFAULT_SCORE_THRESHOLD, ge=0, le=1)
    detector: DetectorKind = DEFAULT_DETECTOR
    detector_weights: Path | None = None
    detect_max_side: int = Field(
        default=DETECT_MAX_SIDE, ge=32, description="longest side of the copy detection runs on (as fsfm serve's)"
    )
    region_maps: Literal["landmarks", "parsing"] = "landmarks"
    parsing_dir: Path | None = Field(default=None, description="<name>.npy maps for region_maps=parsing")
    shard_size: int = Field(default=1024, ge=1, description="faces per shard (at least; shards end at file boundaries)")

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.frame_stride is not None:
            self.frames = None
        if self.region_maps == "parsing" and self.parsing_dir is None:
            raise ValueError("region_maps='parsing' needs parsing_dir")
        return self

    @property
    def crop(self) -> CropSpec:
        return CropSpec(size=self.size, scale=self.scale, min_face_size=0)


@dataclass
class UnitResult:
    """What one source file produced. ``images`` (n, S, S, 3) and ``regions`` (n, S, S) are uint8."""

    path: str
    kind: UnitKind
    status: Literal["ok", "no_face", "skipped"]
    reason: str = ""
    faces: list[dict[str, Any]] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    regions: list[np.ndarray] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "kind": self.kind, "status": self.status, "faces": len(self.faces)}
        if self.reason:
            entry["reason"] = self.reason
        return entry


def is_official_layout(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "parsing_maps").is_dir()


def discover(source: Path, exclude: Path | None = None) -> list[tuple[str, UnitKind]]:
    """Source files as (relative posix path, kind), sorted. Official layout: ``images/*``, as crops."""
    if is_official_layout(source):
        return [
            (p.relative_to(source).as_posix(), "crop") for p in sorted((source / "images").iterdir()) if p.is_file()
        ]
    units: list[tuple[str, UnitKind]] = []
    for path in sorted(source.rglob("*")):
        if not path.is_file() or (exclude is not None and path.is_relative_to(exclude)):
            continue
        suffix = path.suffix.lower()
        kind: UnitKind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "other"
        units.append((path.relative_to(source).as_posix(), kind))
    return units


def frame_indices(total: int, frames: int | None, stride: int | None) -> list[int]:
    """Frame numbers to sample: every ``stride``-th, or ``frames`` evenly spaced over [0, total-1]
    (the official ``np.linspace`` rule), or all frames when the video is shorter."""
    if stride is not None:
        return list(range(0, total, stride))
    assert frames is not None
    if frames >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, frames)})


def face_name(relative: str, frame: int | None = None, index: int = 0) -> str:
    """``dir__sub__stem`` for images, ``<stem>_frame_<i>`` for video frames (the official naming),
    ``_face<k>`` appended for the k-th extra face."""
    name = Path(relative).with_suffix("").as_posix().replace("/", "__")
    if frame is not None:
        name += f"_frame_{frame}"
    return name + (f"_face{index}" if index else "")


class _Worker:
    """Per-process state: the detector and the region source, built once per pool worker."""

    def __init__(self, source: Path, config: PrepareConfig, layout: str) -> None:
        self.source, self.config = source, config
        self.detector = None
        if layout == "official":
            self.regions: RegionSource = ParsingMapRegions(source / "parsing_maps")
        else:
            from fsfm.face.detector import DetectorConfig, create_detector

            self.detector = create_detector(
                DetectorConfig(
                    kind=config.detector,
                    weights=config.detector_weights,
                    min_face_size=config.min_face_size,
                    score_threshold=config.score_threshold,
                    threads=1,
                    max_side=config.detect_max_side,
                )
            )
            self.regions = (
                landmark_regions if config.region_maps == "landmarks" else ParsingMapRegions(config.parsing_dir)
            )

    def __call__(self, unit: tuple[str, UnitKind]) -> UnitResult:
        relative, kind = unit
        result = UnitResult(relative, kind, "ok")
        try:
            if kind == "image":
                self._add_faces(result, read_image_file(self.source / relative), None)
            elif kind == "video":
                self._video(result)
            elif kind == "crop":
                self._crop(result)
            else:
                raise PrepareError("not an image or video file")
        except ImageError as exc:
            result.status, result.reason = "skipped", f"{exc.code}: {exc}"
        except PrepareError as exc:
            result.status, result.reason = "skipped", str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop a multi-day preparation
            result.status, result.reason = "skipped", f"{type(exc).__name__}: {exc}"
        if result.status == "skipped":
            result.faces, result.images, result.regions = [], [], []
        elif not result.faces:
            result.status = "no_face"
        return result

    def _add_faces(self, result: UnitResult, rgb: np.ndarray, frame: int | None) -> None:
        assert self.detector is not None
        spec = self.config.crop
        for index, face in enumerate(self.detector.detect(rgb)[: self.config.max_faces]):
            x1, y1, x2, y2 = crop_region(face.box, rgb.shape[1], rgb.shape[0], spec)
            crop = crop_face(rgb, face.box, spec)
            landmarks = (face.landmarks - [x1, y1]) * [spec.size / (x2 - x1), spec.size / (y2 - y1)]
            name = face_name(result.path, frame, index)
            self._append(
                result,
                name,
                crop,
                self.regions(name, crop, landmarks),
                frame=frame,
                box=face.box.tolist(),
                landmarks=face.landmarks.tolist(),
                score=round(face.score, 6),
            )

    def _append(self, result: UnitResult, name: str, crop: np.ndarray, regions: np.ndarray, **meta: Any) -> None:
        result.faces.append({"name": name, "source": result.path, **meta})
        result.images.append(crop)
        result.regions.append(regions)

    def _video(self, result: UnitResult) -> None:
        path = str(self.source / result.path)
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise PrepareError("cannot open the video")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:  # containers without a frame count: count by decoding once
            while capture.grab():
                total += 1
            capture.release()
            capture = cv2.VideoCapture(path)
        wanted = set(frame_indices(total, self.config.frames, self.config.frame_stride))
        decoded = 0
        # Sequential grab/retrieve rather than seeking: exact frame numbers on every codec.
        for index in range(max(wanted, default=-1) + 1):
            if not capture.grab():
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    decoded += 1
                    self._add_faces(result, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index)
        capture.release()
        if not decoded:
            raise PrepareError("no decodable frames")

    def _crop(self, result: UnitResult) -> None:
        rgb = read_image_file(self.source / result.path)
        size = self.config.size
        if rgb.shape[:2] != (size, size):
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
        name = Path(result.path).stem
        self._append(result, name, rgb, self.regions(name, rgb, None))


_WORKER: _Worker | None = None


def _init_worker(source: Path, config: PrepareConfig, layout: str) -> None:
    global _WORKER
    cv2.setNumThreads(1)
    _WORKER = _Worker(source, config, layout)


def _run_unit(unit: tuple[str, UnitKind]) -> UnitResult:
    assert _WORKER is not None
    return _WORKER(unit)


def _atomic_save(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_save(path, lambda fh: fh.write((json.dumps(obj, indent=1) + "\n").encode()))


def _pixel_sums(images: list[np.ndarray]) -> tuple[int, list[float], list[float]]:
    """Count, per-channel sum and sum of squares of the [0, 1] pixel values (float64)."""
    total, sq, count = np.zeros(3), np.zeros(3), 0
    for image in images:
        x = image.reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        sq += np.einsum("ij,ij->j", x, x)
        count += x.shape[0]
    return count, total.tolist(), sq.tolist()


class ShardWriter:
    """Collects unit results and writes them as shards of at least ``shard_size`` faces."""

    def __init__(self, folder: Path, next_index: int, shard_size: int) -> None:
        self.folder, self.index, self.shard_size = folder, next_index, shard_size
        self.pending: list[UnitResult] = []

    def add(self, result: UnitResult) -> None:
        self.pending.append(result)
        if sum(len(r.faces) for r in self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{self.index:06d}"
        images = [image for r in self.pending for image in r.images]
        if images:
            regions = [region for r in self.pending for region in r.regions]
            _atomic_save(self.folder / f"{name}.images.npy", lambda fh: np.save(fh, np.stack(images)))
            _atomic_save(
                self.folder / f"{name}.regions.npy", lambda fh: np.save(fh, np.stack(regions).astype(np.uint8))
            )
        pixels, total, sq = _pixel_sums(images)
        record = {
            "units": [r.record() for r in self.pending],
            "faces": [face for r in self.pending for face in r.faces],
            "pixels": pixels,
            "sum": total,
            "sum_sq": sq,
        }
        _write_json(self.folder / f"{name}.json", record)  # last: the shard is complete
        self.index += 1
        self.pending = []


def read_shard_records(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every complete shard, in order."""
    folder = root / SHARDS
    if not folder.is_dir():
        return []
    return [(p.name.removesuffix(".json"), json.loads(p.read_text())) for p in sorted(folder.glob("[0-9]*.json"))]


def normalization_from_sums(pixels: int, total: list[float], sq: list[float]) -> Normalization:
    """Per-channel mean and std = sqrt(E[x^2] - mean^2) over all pixels (upstream ``get_mean_std``'s statistics)."""
    mean = np.asarray(total) / pixels
    std = np.sqrt(np.maximum(np.asarray(sq) / pixels - mean**2, 0.0))
    return Normalization(mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def write_mean_std(path: Path, normalization: Normalization) -> None:
    """``pretrain_ds_mean_std.txt`` as the official code writes it: one JSON line (readers take the
    first); kept with the dataset and beside the checkpoints, where fine-tuning looks for it."""
    path.write_text(normalization.to_mean_std_line() + "\n")


def _manifest(root: Path, source: Path, config: PrepareConfig, layout: str) -> dict[str, Any]:
    shards = read_shard_records(root)
    units = [u for _, record in shards for u in record["units"]]
    pixels = sum(record["pixels"] for _, record in shards)
    total = np.sum([record["sum"] for _, record in shards], axis=0).tolist() if shards else [0.0] * 3
    sq = np.sum([record["sum_sq"] for _, record in shards], axis=0).tolist() if shards else [0.0] * 3
    faces = sum(len(record["faces"]) for _, record in shards)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "storage": (
            "uint8 .npy shards read by memory map: <k>.images.npy (n, S, S, 3) RGB, "
            "<k>.regions.npy (n, S, S) LaPa labels"
        ),
        "image_size": config.size,
        "faces": faces,
        "source": str(source),
        "input_layout": layout,
        "region_maps": "parsing" if layout == "official" else config.region_maps,
        "region_labels": {label.name.lower(): int(label) for label in LaPa},
        "parameters": config.model_dump(mode="json"),
        "counts": {
            "files": len(units),
            **{kind: sum(u["kind"] == kind for u in units) for kind in ("image", "video", "crop", "other")},
            **{status: sum(u["status"] == status for u in units) for status in ("ok", "no_face", "skipped")},
        },
        "shards": [{"name": name, "faces": len(record["faces"])} for name, record in shards if record["faces"]],
        "skipped": [{"path": u["path"], "reason": u["reason"]} for u in units if u["status"] == "skipped"],
        "no_face": [u["path"] for u in units if u["status"] == "no_face"],
        "pixel_stats": {"pixels": pixels, "sum": total, "sum_sq": sq},
    }
    if pixels:
        norm = normalization_from_sums(pixels, total, sq)
        manifest["normalization"] = {"mean": list(norm.mean), "std": list(norm.std)}
        write_mean_std(root / MEAN_STD_FILE, norm)
    return manifest


def _results(
    pending: list[tuple[str, UnitKind]], source: Path, config: PrepareConfig, layout: str, workers: int
) -> Iterator[UnitResult]:
    """Unit results in input order, from spawned worker processes (in-process for one worker). At most
    a few tasks per worker are in flight, so a slow video never makes finished results pile up."""
    if not pending:
        return
    if workers <= 1:
        _init_worker(source, config, layout)
        yield from map(_run_unit, pending)
        return
    # spawn, not fork: the caller may hold threads (torch, ONNX Runtime) that fork would break.
    context = multiprocessing.get_context("spawn")
    units = iter(pending)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(source, config, layout)
    ) as pool:
        window = deque(pool.submit(_run_unit, unit) for unit in islice(units, 4 * workers))
        while window:
            try:
                result = window.popleft().result()
            except BrokenProcessPool as exc:
                raise PrepareError(f"a worker process died ({exc}); rerun the command to resume") from exc
            window.extend(pool.submit(_run_unit, unit) for unit in islice(units, 1))
            yield result


def prepare_dataset(
    source: Path,
    output: Path,
    config: PrepareConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Builds (or resumes building) the dataset in ``output``; returns the manifest."""
    from tqdm import tqdm

    config = config or PrepareConfig()
    source, output = Path(source).resolve(), Path(output).resolve()
    if not source.is_dir():
        raise PrepareError(f"{source} is not a folder")
    layout = "official" if is_official_layout(source) else "files"
    identity = {"source": str(source), "input_layout": layout, "parameters": config.model_dump(mode="json")}
    (output / SHARDS).mkdir(parents=True, exist_ok=True)
    params_file = output / PARAMETERS
    if params_file.is_file():
        previous = json.loads(params_file.read_text())
        if previous != identity:
            raise PrepareError(
                f"{output} holds a dataset prepared from other inputs or parameters ({params_file}); "
                "use a new output folder, or delete it to start over"
            )
    else:
        _write_json(params_file, identity)

    records = read_shard_records(output)
    done = {u["path"] for _, record in records for u in record["units"]}
    units = discover(source, exclude=output)
    pending = [unit for unit in units if unit[0] not in done]
    workers = max(1, min(workers or os.cpu_count() or 1, len(pending)))
    writer = ShardWriter(output / SHARDS, len(records), config.shard_size)
    bar = tqdm(total=len(pending), desc="prepare", unit="file", disable=not progress, dynamic_ncols=True)
    faces = 0
    with bar:
        for result in _results(pending, source, config, layout, workers):
            writer.add(result)
            faces += len(result.faces)
            bar.set_postfix(faces=faces, refresh=False)
            bar.update()
    writer.flush()
    manifest = _manifest(output, source, config, layout)
    _write_json(output / MANIFEST, manifest)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a finished ``fsfm prepare`` output (an interrupted one has none yet)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise PrepareError(f"{root} has no {MANIFEST}: not a prepared dataset, or its preparation did not finish")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise PrepareError(f"{path}: unknown format {manifest.get('format')!r}")
    return manifest


def open_shard(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory maps of a shard's crops (n, S, S, 3) and region maps (n, S, S), both uint8."""
    folder = Path(root) / SHARDS
    return (
        np.load(folder / f"{name}.images.npy", mmap_mode="r"),
        np.load(folder / f"{name}.regions.npy", mmap_mode="r"),
    )


def summary(manifest: dict[str, Any]) -> Iterable[str]:
    """Human-readable lines about a manifest: counts, then each skipped file with its reason."""
    counts = manifest["counts"]
    yield (
        f"{manifest['faces']} faces from {counts['ok']} of {counts['files']} files "
        f"({counts['image']} images, {counts['video']} videos, {counts['crop']} crops); "
        f"{counts['no_face']} without a face, {counts['skipped']} skipped"
    )
    for entry in manifest["skipped"]:
        yield f"skipped {entry['path']}: {entry['reason']}"
    if "normalization" in manifest:
        yield f"mean {manifest['normalization']['mean']}, std {manifest['normalization']['std']}"
