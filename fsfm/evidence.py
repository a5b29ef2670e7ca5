"""Per-face evidence, opt-in per request: which parts of the crop drove the score (heatmap), whether the
label survives ordinary re-encoding (robustness), and an audit record that traces a decision without
keeping the media. Pure numpy and OpenCV (in memory: ``cv2.imencode``), free of the service and of torch.

Kinds (``EVIDENCE_KINDS``), asked for as a comma-separated list (``parse_evidence``):

- ``heatmap``: occlusion sensitivity (Zeiler & Fergus, "Visualizing and Understanding Convolutional
  Networks", ECCV 2014, section 4.2). The model input is cut into ``OCCLUSION_CELLS_PER_SIDE`` squared
  cells; each is greyed (set to the normalisation mean, i.e. 0 in the normalised tensor) in its own copy,
  and the copies are scored by the same engine as the face. A cell's value is ``|score - occluded
  score|``, in [0, 1]: how much the attack score depends on it. Cost: ``OCCLUSION_CELLS_PER_SIDE ** 2``
  extra inferences per face (49). It needs no extra model output, so it works with every package and
  engine (ONNX Runtime, OpenVINO, TensorRT, int8 variants) exactly as the face was scored.
  The PNG is the grid upsampled (bilinear) to the crop's side, scaled to its own maximum and colour-mapped
  (OpenCV's JET: blue = no influence, red = the most); ``box`` is the crop's square in image pixels.
- ``robustness``: the face crop (the model input, 8-bit RGB) re-encoded as JPEG at quality 50, and
  downscaled by 0.5 (area) and back (bicubic), each re-normalised and re-scored. The probes act on the
  crop, not on the image region (which would need the detector again). ``fragile`` is true when any
  probe's label differs from the face's label at the request's threshold. Cost: 2 extra inferences per face.
- ``audit``: SHA-256 of the request's media bytes, the model (name, version, package hash), thresholds,
  engine and code version, and the time. No inference.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

import fsfm
from fsfm.face.crop import CropSpec, Normalization, crop_region, normalize
from fsfm.package.manifest import Manifest
from fsfm.scoring import label_for

HEATMAP, ROBUSTNESS, AUDIT = "heatmap", "robustness", "audit"
EVIDENCE_KINDS = (HEATMAP, ROBUSTNESS, AUDIT)
FACE_EVIDENCE_KINDS = frozenset({HEATMAP, ROBUSTNESS})  # the kinds that cost inferences, per face
OCCLUSION_METHOD = "occlusion"
OCCLUSION_CELLS_PER_SIDE = 7  # 49 extra inferences per face; at 224 px each cell is 32 px, 2x2 ViT-B/16 patches
JPEG_PROBE_QUALITY = 50  # a social-media grade recompression: a robust detector keeps its label through it
DOWNSCALE_PROBE_FACTOR = 0.5  # half the resolution and back, as a re-upload at lower resolution would
PROBES = (f"jpeg_q{JPEG_PROBE_QUALITY}", f"downscale_{DOWNSCALE_PROBE_FACTOR}")
GIT_TIMEOUT_S = 2.0  # reading the checkout's commit once (the service does it at start-up); a slow git only drops it


def parse_evidence(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"heatmap,audit"`` or ``["heatmap", "audit"]`` -> the kinds; empty parts are ignored. An unknown
    kind is a ValueError that lists the known ones."""
    if value is None:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else value
    kinds = frozenset(part.strip() for part in parts if part.strip())
    if unknown := sorted(kinds - set(EVIDENCE_KINDS)):
        raise ValueError(f"unknown evidence {unknown}; choose from {', '.join(EVIDENCE_KINDS)}")
    return kinds


def inferences_per_face(kinds: Iterable[str]) -> int:
    """Extra inferences the evidence ``kinds`` cost per face."""
    kinds = set(kinds)
    return OCCLUSION_CELLS_PER_SIDE**2 * (HEATMAP in kinds) + len(PROBES) * (ROBUSTNESS in kinds)


# ---- heatmap: occlusion ----------------------------------------------------------------------------


def cell_edges(size: int, cells: int = OCCLUSION_CELLS_PER_SIDE) -> np.ndarray:
    """(cells + 1,) pixel edges of ``cells`` near-equal cells over ``size`` pixels."""
    return np.linspace(0, size, cells + 1).round().astype(int)


def occluded(tensor: np.ndarray, cells: int = OCCLUSION_CELLS_PER_SIDE) -> np.ndarray:
    """(3, S, S) normalised input -> (cells * cells, 3, S, S): copy ``r * cells + c`` has cell (r, c) set to 0
    (the normalisation mean: a mean-grey patch)."""
    edges = cell_edges(tensor.shape[-1], cells)
    batch = np.repeat(tensor[None], cells * cells, axis=0)
    for r in range(cells):
        for c in range(cells):
            batch[r * cells + c, :, edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = 0.0
    return batch


def occlusion_grid(score: float, occluded_scores: np.ndarray) -> np.ndarray:
    """The face's attack score and its occluded copies' (cells * cells,) -> (cells, cells) grid of
    ``|score - occluded score|`` in [0, 1]."""
    cells = int(round(len(occluded_scores) ** 0.5))
    return np.clip(np.abs(score - occluded_scores.astype(np.float64)), 0.0, 1.0).reshape(cells, cells)


def heatmap_png(grid: np.ndarray, size: int) -> bytes:
    """(rows, cols) grid in [0, 1] -> a colour-mapped ``size`` x ``size`` PNG (scaled to the grid's maximum)."""
    peak = float(grid.max())
    scaled = grid / peak if peak > 0 else np.zeros_like(grid)
    upsampled = cv2.resize(scaled.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(np.clip(upsampled * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    ok, encoded = cv2.imencode(".png", coloured)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def crop_square(box: np.ndarray, image_w: int, image_h: int, spec: CropSpec) -> list[float]:
    """[x1, y1, x2, y2] in image pixels of what the model input shows: the crop region, narrowed to its
    centre part when the crop convention centre-crops (``center_crop_from``)."""
    x1, y1, x2, y2 = (float(v) for v in crop_region(box, image_w, image_h, spec))
    if spec.center_crop_from is not None and spec.center_crop_from > spec.size:
        keep = spec.size / spec.center_crop_from
        cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * keep / 2, (y2 - y1) * keep / 2
        x1, y1, x2, y2 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    return [round(v, 1) for v in (x1, y1, x2, y2)]


@dataclass
class Heatmap:
    method: str
    grid: np.ndarray  # (rows, cols), 0..1
    png: bytes  # the grid as a colour-mapped PNG of the crop's size
    box: list[float]  # the crop's square in image pixels: where the PNG goes

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "grid": [[round(float(v), 4) for v in row] for row in self.grid],
            "png": base64.b64encode(self.png).decode("ascii"),
            "box": self.box,
        }


# ---- robustness probes -----------------------------------------------------------------------------


def denormalize(tensor: np.ndarray, norm: Normalization) -> np.ndarray:
    """(3, S, S) normalised input -> the 8-bit RGB crop (S, S, 3) it was made from (``normalize``'s inverse)."""
    rgb = np.moveaxis(tensor, 0, -1) * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def jpeg_recompressed(crop: np.ndarray, quality: int = JPEG_PROBE_QUALITY) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def downscaled_and_back(crop: np.ndarray, factor: float = DOWNSCALE_PROBE_FACTOR) -> np.ndarray:
    h, w = crop.shape[:2]
    small = cv2.resize(crop, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def probe_inputs(tensor: np.ndarray, norm: Normalization) -> np.ndarray:
    """(3, S, S) normalised input -> (len(PROBES), 3, S, S): the crop re-encoded as each probe does, normalised."""
    crop = denormalize(tensor, norm)
    return normalize(np.stack([jpeg_recompressed(crop), downscaled_and_back(crop)]), norm)


@dataclass
class Robustness:
    probes: dict[str, float]  # probe name -> its attack score
    fragile: bool  # some probe's label differs from the face's

    def to_json(self) -> dict:
        return {"probes": {name: round(score, 6) for name, score in self.probes.items()}, "fragile": self.fragile}


def robustness(label: str, probe_scores: np.ndarray, threshold: float, manifest: Manifest) -> Robustness:
    """The face's ``label`` and its probes' attack scores (in ``PROBES`` order) -> the probe verdict."""
    scores = {name: float(score) for name, score in zip(PROBES, probe_scores, strict=True)}
    fragile = any(label_for(score, threshold, manifest) != label for score in scores.values())
    return Robustness(scores, fragile)


@dataclass
class FaceEvidence:
    heatmap: Heatmap | None = None
    robustness: Robustness | None = None

    def to_json(self) -> dict:
        out: dict = {}
        if self.heatmap is not None:
            out[HEATMAP] = self.heatmap.to_json()
        if self.robustness is not None:
            out[ROBUSTNESS] = self.robustness.to_json()
        return out


def evidence_inputs(tensor: np.ndarray, kinds: frozenset[str], norm: Normalization) -> np.ndarray:
    """(3, S, S) normalised input of a judged face -> the inputs its evidence ``kinds`` score, in order:
    the occluded copies (heatmap), then the probes (robustness); (``inferences_per_face(kinds)``, 3, S, S)."""
    parts = [occluded(tensor)] if HEATMAP in kinds else []
    if ROBUSTNESS in kinds:
        parts.append(probe_inputs(tensor, norm))
    return np.concatenate(parts) if parts else np.zeros((0, *tensor.shape), np.float32)


def face_evidence(
    kinds: frozenset[str],
    score: float,
    label: str,
    input_scores: np.ndarray,
    square: list[float],
    threshold: float,
    manifest: Manifest,
) -> FaceEvidence:
    """A judged face's evidence from the attack scores of its ``evidence_inputs`` (same order)."""
    evidence = FaceEvidence()
    if HEATMAP in kinds:
        cells = OCCLUSION_CELLS_PER_SIDE**2
        grid = occlusion_grid(score, input_scores[:cells])
        evidence.heatmap = Heatmap(OCCLUSION_METHOD, grid, heatmap_png(grid, manifest.crop.size), square)
        input_scores = input_scores[cells:]
    if ROBUSTNESS in kinds:
        evidence.robustness = robustness(label, input_scores, threshold, manifest)
    return evidence


# ---- audit record ----------------------------------------------------------------------------------


def package_sha256(folder: Path) -> str:
    """The package's hash: SHA-256 of its ``manifest.json`` as stored, which pins every graph file by its own
    SHA-256 (``onnx.sha256``, ``variants[].sha256``); read once, when the package is loaded."""
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


@functools.cache
def code_version() -> str:
    """``fsfm <version>+<build>``: the installed distribution's version, then ``g<commit>`` (12 hex digits)
    when running from a git checkout, ``wheel`` when installed, ``source`` when the checkout's commit
    cannot be read. Computed once."""
    try:
        version = importlib.metadata.version("fsfm")
    except importlib.metadata.PackageNotFoundError:
        version = fsfm.__version__
    source = Path(fsfm.__file__).resolve().parents[1]
    if not (source / ".git").exists():
        return f"fsfm {version}+wheel"
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"fsfm {version}+g{commit}" if commit else f"fsfm {version}+source"


def audit_record(
    media_sha256: str,
    manifest: Manifest,
    package_hash: str,
    threshold: float,
    threshold_source: str,
    engine: dict[str, str] | None,
    request_id: str,
) -> dict:
    """What traces a decision without its media (``AuditOut`` in docs/api.md)."""
    return {
        "request_id": request_id,
        "input_sha256": media_sha256,
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "package_sha256": package_hash,
            "onnx_sha256": manifest.onnx.sha256,
        },
        "thresholds": manifest.thresholds.model_dump(mode="json"),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "engine": engine,
        "code_version": code_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
