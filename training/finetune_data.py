"""Labelled face data for fine-tuning and evaluation: readers for the generic layouts and the standard
benchmark layouts (docs/finetuning.md), self-blended pseudo-fakes, torch datasets and samplers.

Every reader gives a ``FaceSource``: face crops (uint8 RGB) with, per face, an attack label (1 = fake /
spoof, 0 = real / live), a video id (frames of one video are averaged for video-level metrics) and a
domain (the dataset it came from), plus landmarks or a region map when known (for self-blending).

Layouts (``DataSpec.format``):

* ``folder``: ``<root>/<label>/**/*.{png,jpg,...}``; a label folder's name starts with a class word
  (``real``, ``live``, ``bonafide``, ``genuine``, ``original`` / ``fake``, ``spoof``, ``attack``,
  ``synthesis``, ``generated``, ``manipulated``), so FSFM's released sets (``real_youtube``,
  ``fake_four``) read as they are. Video id: the sub-folder under the label folder, else the file name
  before ``_frame_`` (the official naming), else the file itself.
* ``csv``: ``path,label[,video_id]`` (a header row is optional); paths relative to the CSV; ``label`` a
  class word as above or 0/1 with 1 = attack (DFDC's ``labels.csv`` convention); without a video id,
  the path before ``_frame_`` is the video.
* ``prepared``: an ``fsfm prepare`` output whose input folder had ``<label>/`` sub-folders (the label
  is the first folder of each face's source path); landmarks come from the manifest.
* ``mcio``: FLIP / few_shot_fas (``<root>/frame/...``, ``<root>/txt/<domain>_{real,fake}_{train,test}.txt``),
  domains msu, casia, replay, oulu, celeb (CelebA-Spoof); test sets add each video's second frame
  (``frame0`` -> ``frame1``), as the official evaluation.
* ``ffpp``, ``celebdf``, ``dfdc``, ``dfdcp``: the datasets' own download layouts (videos, or folders of
  frames); faces are extracted once with ``fsfm prepare`` (our detector and FSFM's 1.3x crop) into a
  cache, ``frames`` evenly spaced frames per video (32 by default; ``real_frames`` for real videos,
  128 in the FF++ training protocol), and read from there on.

``label=real`` (or any class word) labels every face of a ``folder`` or ``prepared`` set, e.g. a folder
of real faces only, for self-blended training.

``folder`` and ``csv`` sets are taken as ready-cut face crops. When the model's input size is known,
``open_source`` checks a sample of their images (``check_face_crops``): mostly non-square images are whole
photos, not crops, and are refused with the ``fsfm prepare`` command that cuts them (``crops=yes`` accepts
them as they are); square images far from the model's size get a ``DataWarning``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from fsfm.face.crop import CropSpec, crop_region
from fsfm.imaging import read_image_file
from training.augment import EvalTransform, TrainTransform
from training.finetune_config import DataSpec
from training.prepare import (
    IMAGE_SUFFIXES,
    MANIFEST,
    PrepareConfig,
    open_shard,
    prepare_dataset,
    read_manifest,
    read_shard_records,
)
from training.sbi import SelfBlend, face_region_mask, self_blend

log = logging.getLogger(__name__)

ATTACK_WORDS = ("fake", "spoof", "attack", "synthesis", "synthetic", "generated", "manipulated", "deepfake")
GENUINE_WORDS = ("real", "live", "bonafide", "bona_fide", "genuine", "original", "pristine")
_FRAME_SUFFIX = re.compile(r"_frame_?\d+$")


class DataError(ValueError):
    """A dataset is missing, empty or not in the layout it was said to be in."""


def attack_label(name: str) -> int:
    """A folder or label name -> 1 (attack) / 0 (genuine), by its leading class word."""
    word = name.strip().lower()
    if word in ("0", "1"):
        return int(word)
    if word.startswith(ATTACK_WORDS):
        return 1
    if word.startswith(GENUINE_WORDS):
        return 0
    raise DataError(
        f"cannot tell whether {name!r} is real or fake: start its name with one of {GENUINE_WORDS + ATTACK_WORDS}"
    )


@dataclass(frozen=True)
class FaceItem:
    label: int  # 1 = attack, 0 = genuine
    video: str
    domain: str


class FaceSource(Protocol):
    """Face crops with labels; ``landmarks``/``regions`` may be None when unknown; ``crop_scale``: the
    box enlargement the crops were cut with, when known."""

    name: str
    items: list[FaceItem]
    crop_scale: float | None

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray: ...

    def landmarks(self, index: int) -> np.ndarray | None: ...

    def regions(self, index: int) -> np.ndarray | None: ...


class ImageFiles:
    """Face crops stored as image files."""

    crop_scale: float | None = None

    def __init__(self, name: str, paths: Sequence[Path], items: Sequence[FaceItem]) -> None:
        if not paths:
            raise DataError(f"{name}: no face images found")
        self.name, self.paths, self.items = name, list(paths), list(items)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return read_image_file(self.paths[index])

    def landmarks(self, index: int) -> np.ndarray | None:
        return None

    def regions(self, index: int) -> np.ndarray | None:
        return None


def _video_of(relative: Path) -> str:
    """Video id of an image path below its label folder: the sub-folder, else the ``_frame_`` prefix,
    else the file itself."""
    if len(relative.parts) > 1:
        return relative.parent.as_posix()
    return _FRAME_SUFFIX.sub("", relative.stem)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_source(root: Path, name: str, label: int | None = None) -> ImageFiles:
    """``<root>/<label>/...``, or every image under ``root`` with the given ``label``."""
    if label is not None:
        paths = _images_under(root)
        return ImageFiles(name, paths, [FaceItem(label, _video_of(p.relative_to(root)), name) for p in paths])
    paths: list[Path] = []
    items: list[FaceItem] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        folder_label = attack_label(label_dir.name)
        for path in _images_under(label_dir):
            paths.append(path)
            items.append(FaceItem(folder_label, f"{label_dir.name}/{_video_of(path.relative_to(label_dir))}", name))
    return ImageFiles(name, paths, items)


def csv_source(path: Path, name: str) -> ImageFiles:
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row and not row[0].startswith("#")]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    paths, items = [], []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DataError(f"{path} row {number}: expected path,label[,video_id]")
        relative = Path(row[0].strip())
        video = (
            row[2].strip()
            if len(row) > 2 and row[2].strip()
            else _FRAME_SUFFIX.sub("", relative.with_suffix("").as_posix())
        )
        file = (path.parent / relative).resolve()
        paths.append(file)
        items.append(FaceItem(attack_label(row[1]), video, name))
    return ImageFiles(name, paths, items)


MCIO_DOMAINS = {"m": "msu", "c": "casia", "i": "replay", "o": "oulu", "celeba-spoof": "celeb", "celeba_spoof": "celeb"}


def mcio_source(root: Path, domain: str, split: str, name: str) -> ImageFiles:
    domain = MCIO_DOMAINS.get(domain.lower(), domain.lower())
    if split not in ("train", "test"):
        raise DataError("MCIO lists have train and test splits")
    paths, items = [], []
    for kind, label in (("real", 0), ("fake", 1)):
        listing = root / "txt" / f"{domain}_{kind}_{split}.txt"
        if not listing.is_file():
            raise DataError(
                f"{listing} not found (MCIO layout: <root>/txt/<domain>_<real|fake>_<split>.txt, <root>/frame/...)"
            )
        lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if split == "test":  # the official evaluation scores both frames of each video
            lines += [line.replace("frame0", "frame1") for line in lines]
        for line in dict.fromkeys(lines):
            file = root / "frame" / line
            if split == "test" and "frame1" in line and not file.is_file():
                continue
            paths.append(file)
            items.append(FaceItem(label, _FRAME_SUFFIX.sub("", Path(line).with_suffix("").as_posix()), domain))
    return ImageFiles(name, paths, items)


class PreparedFaces:
    """An ``fsfm prepare`` output read as labelled faces (see the module doc)."""

    def __init__(self, root: Path, name: str, label: int | None = None) -> None:
        self.root, self.name = Path(root), name
        manifest = read_manifest(self.root)
        params = manifest["parameters"]
        self.crop_scale = float(params["scale"])
        self._crop = CropSpec(size=manifest["image_size"], scale=self.crop_scale, min_face_size=0)
        self.faces: list[dict] = []
        self._where: list[tuple[str, int]] = []
        for shard, record in read_shard_records(self.root):
            for local, face in enumerate(record["faces"]):
                self.faces.append(face)
                self._where.append((shard, local))
        if not self.faces:
            raise DataError(f"{root}: the prepared dataset holds no faces")
        self.items = [self._item(face, name, label) for face in self.faces]
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _item(face: dict, domain: str, label: int | None) -> FaceItem:
        """Label: ``label``, else the first folder of the face's source path."""
        source = Path(face["source"])
        if label is None:
            if len(source.parts) < 2:
                raise DataError(
                    f"{source}: label the prepared faces (label=real) or prepare them from <label>/ folders"
                )
            label = attack_label(source.parts[0])
        if face.get("frame") is not None:
            video = source.with_suffix("").as_posix()
        elif len(source.parts) > 2:
            video = source.parent.as_posix()
        else:
            video = _FRAME_SUFFIX.sub("", source.with_suffix("").as_posix())
        return FaceItem(label, video, domain)

    def __len__(self) -> int:
        return len(self.faces)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # memory maps reopen in each loader worker

    def _arrays(self, index: int) -> tuple[np.ndarray, int]:
        shard, local = self._where[index]
        if shard not in self._open:
            self._open[shard] = open_shard(self.root, shard)
        return self._open[shard], local

    def image(self, index: int) -> np.ndarray:
        (images, _), local = self._arrays(index)
        return np.array(images[local])

    def regions(self, index: int) -> np.ndarray | None:
        (_, regions), local = self._arrays(index)
        return np.array(regions[local])

    def landmarks(self, index: int) -> np.ndarray | None:
        """The detector's 5 points in crop pixels. The crop's far edge is assumed unclipped (the
        image size is not recorded), which holds unless the face touched the right/bottom border."""
        face = self.faces[index]
        if "landmarks" not in face or "box" not in face:
            return None
        x1, y1, x2, y2 = crop_region(np.asarray(face["box"], np.float32), 1 << 30, 1 << 30, self._crop)
        scale = np.array([self._crop.size / (x2 - x1), self._crop.size / (y2 - y1)])
        return (np.asarray(face["landmarks"], np.float64) - [x1, y1]) * scale


class ConcatSource:
    """Several sources as one (names joined)."""

    def __init__(self, sources: Sequence[FaceSource], name: str | None = None) -> None:
        self.sources = list(sources)
        self.name = name or "+".join(s.name for s in self.sources)
        self.items = [item for s in self.sources for item in s.items]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        scales = {s.crop_scale for s in self.sources}
        self.crop_scale = scales.pop() if len(scales) == 1 else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[FaceSource, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[k], index - int(self.offsets[k])

    def image(self, index: int) -> np.ndarray:
        source, local = self._locate(index)
        return source.image(local)

    def landmarks(self, index: int) -> np.ndarray | None:
        source, local = self._locate(index)
        return source.landmarks(local)

    def regions(self, index: int) -> np.ndarray | None:
        source, local = self._locate(index)
        return source.regions(local)


class SubsetSource:
    """The faces of ``source`` at ``indices``."""

    def __init__(self, source: FaceSource, indices: Sequence[int], name: str) -> None:
        self.source, self.indices, self.name = source, [int(i) for i in indices], name
        self.items = [source.items[i] for i in self.indices]
        self.crop_scale = source.crop_scale

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> np.ndarray:
        return self.source.image(self.indices[index])

    def landmarks(self, index: int) -> np.ndarray | None:
        return self.source.landmarks(self.indices[index])

    def regions(self, index: int) -> np.ndarray | None:
        return self.source.regions(self.indices[index])


def blend_pair(source: FaceSource, index: int, rng: np.random.Generator, attempts: int = 3) -> SelfBlend:
    """A self-blended pair from face ``index``, from its landmarks, else its region map. A draw whose
    mask vanishes (a thin hull eroded away) is redrawn."""
    image = source.image(index)
    landmarks = source.landmarks(index)
    face_mask = None
    if landmarks is None:
        regions = source.regions(index)
        if regions is None:
            raise DataError(
                f"{source.name}: face {index} has neither landmarks nor a region map to self-blend with; "
                "prepare the faces with `fsfm prepare`, which records them"
            )
        face_mask = face_region_mask(regions)
    for _ in range(attempts - 1):
        try:
            return self_blend(image, rng, landmarks=landmarks, face_mask=face_mask)
        except ValueError:
            continue
    return self_blend(image, rng, landmarks=landmarks, face_mask=face_mask)


class SelfBlendedSource:
    """Genuine faces of ``source`` followed by one deterministic self-blend of each (seeded by index):
    a fixed real-vs-pseudo-fake set for validation and tests."""

    def __init__(self, source: FaceSource, seed: int = 0) -> None:
        self.source, self.seed, self.crop_scale = source, seed, source.crop_scale
        self.name = f"{source.name}-sbi"
        self.reals = [i for i, item in enumerate(source.items) if item.label == 0]
        if not self.reals:
            raise DataError(f"{source.name}: self-blending needs real faces")
        real_items = [source.items[i] for i in self.reals]
        self.items = real_items + [FaceItem(1, f"{item.video}#sbi", item.domain) for item in real_items]

    def __len__(self) -> int:
        return 2 * len(self.reals)

    def image(self, index: int) -> np.ndarray:
        n = len(self.reals)
        if index < n:
            return self.source.image(self.reals[index])
        return blend_pair(self.source, self.reals[index - n], np.random.default_rng([self.seed, index])).fake

    def landmarks(self, index: int) -> np.ndarray | None:
        return self.source.landmarks(self.reals[index % len(self.reals)])

    def regions(self, index: int) -> np.ndarray | None:
        return self.source.regions(self.reals[index % len(self.reals)])


# ------------------------------------------------------------------------- benchmark video layouts
@dataclass(frozen=True)
class LabelledVideo:
    path: Path  # a video file, or a folder of frame images
    label: int
    video: str


def _find(root: Path, *candidates: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise DataError(f"none of {list(candidates)} under {root}")


def _child_ci(folder: Path, name: str) -> Path:
    """``folder/name`` matched case-insensitively (FF++'s ``Deepfakes`` vs FSFM's ``DeepFakes``)."""
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.name.lower() == name.lower():
            return child
    raise DataError(f"{folder / name} not found")


def _ffpp_media(folder: Path, video: str) -> Path | None:
    """A FF++ video as ``videos/<id>.mp4`` or as a frame folder ``frames|images/<id>/``."""
    for candidate in (folder / "videos" / f"{video}.mp4", folder / "frames" / video, folder / "images" / video):
        if candidate.exists():
            return candidate
    return None


FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def ffpp_videos(
    root: Path, split: str, methods: Sequence[str] = FFPP_METHODS, compression: str = "c23"
) -> list[LabelledVideo]:
    """FaceForensics++ (download layout): ``original_sequences/youtube/<c>/``,
    ``manipulated_sequences/<Method>/<c>/``, official ``splits/<split>.json`` (pairs of target/source
    ids; the fakes are ``<a>_<b>`` and ``<b>_<a>``)."""
    split_file = _find(root, f"splits/{split}.json", f"dataset/splits/{split}.json")
    pairs = json.loads(split_file.read_text())
    ids = sorted({vid for pair in pairs for vid in pair})
    wanted: list[tuple[Path, str, int]] = [
        (root / "original_sequences" / "youtube" / compression, vid, 0) for vid in ids
    ]
    for method in methods:
        folder = _child_ci(root / "manipulated_sequences", method) / compression
        wanted += [(folder, f"{a}_{b}", 1) for x, y in pairs for a, b in ((x, y), (y, x))]
    videos, missing = [], []
    for folder, vid, label in wanted:
        media = _ffpp_media(folder, vid)
        if media is None:
            missing.append(f"{folder}/{vid}")
            continue
        kind = folder.parts[-2] if label else "youtube"
        videos.append(LabelledVideo(media, label, f"{kind}/{vid}"))
    _report_missing("FF++", missing)
    return videos


def celebdf_videos(root: Path, split: str = "test", youtube_real: bool = False) -> list[LabelledVideo]:
    """Celeb-DF v2: ``Celeb-real/``, ``Celeb-synthesis/``, ``YouTube-real/`` and the official
    ``List_of_testing_videos.txt`` (``<1 real | 0 fake> <folder>/<file>.mp4``). FSFM's protocol leaves
    out YouTube-real test videos (docs/finetuning.md); ``youtube_real`` keeps them (the 518-video list).
    ``train`` = every video not in the test list."""
    listing = [line.split() for line in (root / "List_of_testing_videos.txt").read_text().splitlines() if line.strip()]
    test = {relative: 1 - int(real) for real, relative in listing}
    folders = ["Celeb-real", "Celeb-synthesis"] + (["YouTube-real"] if youtube_real else [])
    if split == "test":
        chosen = {rel: label for rel, label in test.items() if rel.split("/")[0] in folders}
    elif split == "train":
        chosen = {
            p.relative_to(root).as_posix(): int(folder == "Celeb-synthesis")
            for folder in folders
            for p in sorted((root / folder).glob("*.mp4"))
            if p.relative_to(root).as_posix() not in test
        }
    else:
        raise DataError("Celeb-DF has train and test splits")
    videos = [LabelledVideo(root / rel, label, rel.removesuffix(".mp4")) for rel, label in sorted(chosen.items())]
    _report_missing("Celeb-DF", [str(v.path) for v in videos if not v.path.is_file()])
    return [v for v in videos if v.path.is_file()]


def dfdc_videos(root: Path) -> list[LabelledVideo]:
    """DFDC public test set: ``labels.csv`` (``filename,label``, 1 = fake) and the videos anywhere
    below the root (the download puts them in ``ori_videos/`` sub-folders)."""
    with open(_find(root, "labels.csv"), newline="") as fh:
        labels = {row["filename"]: int(float(row["label"])) for row in csv.DictReader(fh)}
    found = {p.name: p for p in root.rglob("*.mp4")}
    videos = [
        LabelledVideo(found[name], label, Path(name).stem) for name, label in sorted(labels.items()) if name in found
    ]
    _report_missing("DFDC", [name for name in labels if name not in found])
    return videos


def dfdcp_videos(root: Path, split: str = "test") -> list[LabelledVideo]:
    """DFDC preview: ``dataset.json`` ({relative path: {"label": real|fake, "set": train|test}})."""
    entries = json.loads(_find(root, "dataset.json").read_text())
    chosen = [(rel, meta) for rel, meta in sorted(entries.items()) if meta.get("set") == split]
    videos = [
        LabelledVideo(root / rel, attack_label(meta["label"]), Path(rel).with_suffix("").as_posix())
        for rel, meta in chosen
    ]
    _report_missing("DFDC-preview", [str(v.path) for v in videos if not v.path.exists()])
    return [v for v in videos if v.path.exists()]


def _report_missing(dataset: str, missing: list[str]) -> None:
    if missing:
        log.warning("%s: %d listed videos not found, skipped (first: %s)", dataset, len(missing), missing[0])


def _sampled_frames(folder: Path, count: int) -> list[Path]:
    frames = _images_under(folder)
    if len(frames) <= count:
        return frames
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count)]


def extract_faces(
    videos: Sequence[LabelledVideo],
    name: str,
    cache: Path,
    frames: int,
    real_frames: int,
    size: int = 224,
    workers: int | None = None,
) -> FaceSource:
    """Faces of labelled videos through ``fsfm prepare`` (resumable; reused on the next run).

    Videos are linked into ``<cache>/<label>/<video>.<ext>`` staging folders, one prepared dataset per
    frame count (real videos may get more frames, for class balance); frame folders are linked with
    ``frames`` evenly spaced frames each."""
    if not videos:
        raise DataError(f"{name}: no videos found")
    sources: list[FaceSource] = []
    for label, count in ((0, real_frames), (1, frames)):
        group = [v for v in videos if v.label == label]
        if not group:
            continue
        word = "fake" if label else "real"
        stage = cache / f"staging-{word}-{count}"
        for video in group:
            link_base = stage / word / video.video.replace("/", "__")
            if video.path.is_dir():
                link_base.mkdir(parents=True, exist_ok=True)
                for frame in _sampled_frames(video.path, count):
                    _symlink(frame, link_base / frame.name)
            else:
                _symlink(video.path, link_base.with_name(link_base.name + video.path.suffix.lower()))
        output = cache / f"faces-{word}-{count}"
        prepare_dataset(
            stage, output, PrepareConfig(size=size, frames=count), workers=workers
        )  # resumes; skips done files
        sources.append(PreparedFaces(output, name))
    return ConcatSource(sources, name) if len(sources) > 1 else sources[0]


def _symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(target.resolve(), link)


def _cache_key(spec: DataSpec) -> str:
    identity = json.dumps([spec.format, str(spec.path.resolve()), spec.split, sorted(spec.options.items())])
    return f"{spec.format}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


class DataWarning(UserWarning):
    """A data set may not be what the model expects."""


CROP_CHECK_SAMPLE = 32  # images whose size is read (headers only)
SQUARE_TOLERANCE = 0.1  # |width / height - 1| of a face crop
SIZE_FACTOR = 2.0  # crops more than this far from the model's input size (either way) are suspicious


def check_face_crops(source: ImageFiles, spec: DataSpec, input_size: int) -> None:
    """Refuse a set whose sampled images are mostly not square (whole photos, which would be resized and
    scored as faces), unless ``spec`` says ``crops=yes``; warn when square images are far from
    ``input_size``. The messages name the ``fsfm prepare`` command that cuts face crops."""
    from PIL import Image

    step = max(1, len(source.paths) // CROP_CHECK_SAMPLE)
    sizes = []
    for path in source.paths[::step][:CROP_CHECK_SAMPLE]:
        with Image.open(path) as image:
            sizes.append(image.size)
    not_square = [(w, h) for w, h in sizes if abs(w / h - 1) > SQUARE_TOLERANCE]
    prepare = f"fsfm prepare {spec.path} <out> --size {input_size}, then use prepared:<out>"
    if 2 * len(not_square) > len(sizes) and spec.options.get("crops", "").lower() not in ("yes", "1", "true"):
        w, h = not_square[0]
        raise DataError(
            f"{source.name}: {len(not_square)} of {len(sizes)} sampled images are not square (e.g. {w}x{h}): "
            f"whole photos, not face crops. Cut faces with `{prepare}` (or add ,crops=yes to use them as they are)"
        )
    sides = sorted(max(w, h) for w, h in sizes)
    median = sides[len(sides) // 2]
    if not input_size / SIZE_FACTOR <= median <= input_size * SIZE_FACTOR:
        warnings.warn(
            f"{source.name}: its images are about {median} px, the model takes {input_size} px face crops; if they "
            f"are not face crops at FSFM's 1.3x scale, run `{prepare}`",
            DataWarning,
            stacklevel=2,
        )


def open_source(
    spec: DataSpec,
    cache: Path,
    real_frames: int | None = None,
    workers: int | None = None,
    input_size: int | None = None,
) -> FaceSource:
    """The faces a ``DataSpec`` names (see the module doc). ``real_frames``: frames per real video
    when the spec does not say (the training protocol's balance); default = ``frames``. ``input_size``:
    the model's, to check that ``folder`` and ``csv`` sets look like face crops for it."""
    source = _open(spec, cache, real_frames, workers)
    if input_size is not None and isinstance(source, ImageFiles) and spec.format in ("auto", "folder", "csv"):
        check_face_crops(source, spec, input_size)
    return source


def _open(spec: DataSpec, cache: Path, real_frames: int | None, workers: int | None) -> FaceSource:
    path, fmt, opts, name = spec.path, spec.format, spec.options, spec.label
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if fmt == "auto":
        fmt = (
            "csv"
            if path.is_file() and path.suffix.lower() == ".csv"
            else "prepared"
            if (path / MANIFEST).is_file()
            else "folder"
        )
    label = attack_label(opts["label"]) if "label" in opts else None
    if fmt == "folder":
        return folder_source(path, name, label)
    if fmt == "csv":
        return csv_source(path, name)
    if fmt == "prepared":
        return PreparedFaces(path, name, label)
    if fmt == "mcio":
        if "domain" not in opts:
            raise DataError("mcio needs domain=<msu|casia|replay|oulu|celeb>")
        return mcio_source(path, opts["domain"], spec.split or "test", name)
    split = spec.split or ("train" if fmt == "ffpp" else "test")
    if fmt == "ffpp":
        methods = opts["methods"].split("+") if "methods" in opts else FFPP_METHODS
        videos = ffpp_videos(path, split, methods, opts.get("compression", "c23"))
    elif fmt == "celebdf":
        videos = celebdf_videos(path, split, opts.get("youtube_real", "no").lower() in ("1", "yes", "true"))
    elif fmt == "dfdc":
        videos = dfdc_videos(path)
    else:
        videos = dfdcp_videos(path, split)
    frames = int(opts.get("frames", 32))
    real = int(opts.get("real_frames", real_frames or frames))
    return extract_faces(videos, name, cache / _cache_key(spec), frames, real, int(opts.get("size", 224)), workers)


def split_by_video(source: FaceSource, fraction: float, seed: int) -> tuple[SubsetSource, SubsetSource]:
    """(train, held-out) with ``fraction`` of the videos of each class held out, at least one per
    class that has two or more videos."""
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in (0, 1):
        videos = sorted({item.video for item in source.items if item.label == label})
        if len(videos) >= 2:
            count = max(1, int(round(fraction * len(videos))))
            held |= set(rng.choice(videos, size=count, replace=False).tolist())
    keep = [i for i, item in enumerate(source.items) if item.video not in held]
    out = [i for i, item in enumerate(source.items) if item.video in held]
    return SubsetSource(source, keep, source.name), SubsetSource(source, out, f"{source.name}-heldout")


# ------------------------------------------------------------------------------- torch datasets
class Draw(NamedTuple):
    """One training sample as the batch sampler hands it out: which face, and the seed of its
    augmentation (and blend): a face drawn twice in an epoch gets two different augmentations."""

    index: int
    seed: int


class AugmentedFaces(Dataset):
    """(augmented image (3, S, S), attack label) per draw."""

    def __init__(self, source: FaceSource, transform: TrainTransform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(self.source.image(draw.index), np.random.default_rng(draw.seed))
        return image, torch.tensor(self.source.items[draw.index].label)


class SelfBlendedPairs(Dataset):
    """Per draw of a genuine face: ((2, 3, S, S) [real, self-blend], labels [0, 1]), a fresh blend
    every draw; both images of a pair get the same augmentation, so they differ only by the blend."""

    def __init__(self, source: FaceSource, transform: TrainTransform) -> None:
        self.source, self.transform = source, transform
        self.reals = [i for i, item in enumerate(source.items) if item.label == 0]
        if not self.reals:
            raise DataError(f"{source.name}: self-blending needs real faces")

    def __len__(self) -> int:
        return len(self.reals)

    def __getitem__(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(draw.seed)
        pair = blend_pair(self.source, self.reals[draw.index], rng)
        augment_seed = int(rng.integers(1 << 62))
        images = [self.transform(image, np.random.default_rng(augment_seed)) for image in (pair.real, pair.fake)]
        return torch.stack(images), torch.tensor([0, 1])


class EvalFaces(Dataset):
    """(image (3, S, S), attack label, index) per face, deterministic."""

    def __init__(self, source: FaceSource, transform: EvalTransform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(self.source.image(index)), self.source.items[index].label, index


def collate_faces(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Single faces and pairs alike -> images (N, 3, S, S), labels (N,)."""
    images = torch.cat([x.reshape(-1, *x.shape[-3:]) for x, _ in batch])
    labels = torch.cat([y.reshape(-1) for _, y in batch])
    return images, labels


class TrainBatchSampler:
    """Per-process training batches of ``Draw``s, by epoch (``set_epoch``): the same order on every
    rank, each rank taking its share; incomplete batches are dropped.

    mode ``none``/``loss``: a per-epoch permutation, split across ranks (DistributedSampler-style),
    repeated if ``iters_per_epoch`` asks for more. ``sampler``: indices drawn with replacement with
    weights 1 / (faces of its class). ``domain``: every batch takes the same number of faces from
    each (domain, class) cell, with replacement (the FAS recipe)."""

    def __init__(
        self,
        labels: Sequence[int],
        domains: Sequence[str],
        batch_size: int,
        mode: str,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        iters_per_epoch: int | None = None,
    ) -> None:
        self.labels, self.domains = np.asarray(labels), np.asarray(domains)
        self.batch_size, self.mode, self.seed = batch_size, mode, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        per_rank = len(self.labels) // world_size
        self.iters = iters_per_epoch or per_rank // batch_size
        if self.iters == 0:
            raise DataError(
                f"{len(self.labels)} training samples are too few for batches of {batch_size} "
                f"on {world_size} process(es)"
            )
        if mode == "domain":
            self.cells = [
                np.flatnonzero((self.domains == d) & (self.labels == y))
                for d in np.unique(self.domains)
                for y in (0, 1)
            ]
            self.cells = [c for c in self.cells if c.size]
            self.per_cell = batch_size // len(self.cells)
            if self.per_cell == 0:
                raise DataError(f"batch {batch_size} is smaller than the {len(self.cells)} (domain, class) cells")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iters

    def _order(self, generator: torch.Generator) -> np.ndarray:
        """Indices of one epoch for all ranks (before the rank split)."""
        n = len(self.labels)
        if self.mode == "sampler":
            counts = np.bincount(self.labels, minlength=2).astype(np.float64)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            return torch.multinomial(weights, n, replacement=True, generator=generator).numpy()
        return torch.randperm(n, generator=generator).numpy()

    def __iter__(self) -> Iterator[list[Draw]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        if self.mode == "domain":
            for _ in range(self.iters):
                indices = [int(i) for cell in self.cells for i in rng.choice(cell, self.per_cell)]
                yield [Draw(i, int(s)) for i, s in zip(indices, rng.integers(1 << 62, size=len(indices)), strict=False)]
            return
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        need = self.iters * self.batch_size
        mine: list[int] = []
        while len(mine) < need:
            order = self._order(generator)
            usable = (len(order) // self.world_size) * self.world_size
            mine += order[:usable][self.rank :: self.world_size].tolist()
        seeds = rng.integers(1 << 62, size=need)
        for b in range(self.iters):
            yield [Draw(mine[k], int(seeds[k])) for k in range(b * self.batch_size, (b + 1) * self.batch_size)]


def class_weights(labels: Sequence[int]) -> np.ndarray:
    """Inverse-frequency weights (genuine, attack), mean 1 over the samples: n / (2 * n_class)."""
    counts = np.bincount(np.asarray(labels), minlength=2).astype(np.float64)
    if counts.min() == 0:
        raise DataError("class-weighted training needs both real and fake samples")
    return len(labels) / (2 * counts)
