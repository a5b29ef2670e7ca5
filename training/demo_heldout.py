"""The demo model judged on faces of people it never saw, and its thresholds calibrated there.

The demo (``training.demo``) learned from one photograph (scikit-image's astronaut). Its thresholds and
stated metrics come from faces of other identities, built here, offline, from:

* real: every face the detector finds in the sample photos (``fsfm.assets.ensure_sample_photos``: the
  insightface wheel's group photo, six people, and its portrait, one) and in scikit-image's ``camera``
  (the cameraman, CC0, grey): 8 faces of 8 people;
* ``fake-sbi``: self-blended versions of each (``training.sbi``, the demo's own training artefact, so
  these flatter the model);
* ``fake-swap``: every ordered pair of two different people, the source face pasted onto the target
  (``face_swap``: a similarity warp on the 5 landmarks, the colour matched in Lab inside the face, a
  blurred elliptical mask), a simple swap made independently of the SBI code: the harder, honest test.

Every fake is made in the full photograph and then cut as the service cuts faces (the manifest's crop,
at the detected box of the original face), and written as ``<folder>/{real,fake-sbi,fake-swap}/*.png``:
a ``folder:`` set for ``fsfm calibrate`` and ``fsfm quantize``. So few genuine faces resolve no fixed-FPR
operating point (``training.metrics.fpr_point``); the EER point is the only threshold they support.

    python -m training.demo_heldout demo/models/demo-deepfake/1 --folder /tmp/demo-heldout [--write]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fsfm.face.crop import CropSpec, crop_face, crop_region
from fsfm.face.detector import FaceDetector
from fsfm.imaging import decode_image
from fsfm.package.manifest import Manifest
from training.calibrate import calibrated_thresholds, calibration_metrics
from training.metrics import roc_auc
from training.sbi import self_blend

SBI_PER_FACE = 4  # self-blends per real face (seeded)
FAKE_KINDS = ("fake-sbi", "fake-swap")
# The swap mask: an ellipse around eyes, nose and mouth, in eye distances.
_MASK_HALF_WIDTH, _MASK_HALF_HEIGHT, _MASK_BLUR = 0.95, 1.25, 0.12


@dataclass(frozen=True)
class SourceFace:
    """One real face: its photograph (RGB uint8), detected box and 5 landmarks, in the photo's pixels."""

    name: str
    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray


def other_identity_faces(detector: FaceDetector) -> list[SourceFace]:
    """The faces of the sample photos and of scikit-image's cameraman, largest photo first."""
    from skimage import data

    from fsfm.assets import ensure_sample_photos

    photos = ensure_sample_photos()
    images = {
        "group": decode_image((photos / "group.jpg").read_bytes()),
        "portrait": decode_image((photos / "portrait.png").read_bytes()),
        "camera": np.repeat(data.camera()[..., None], 3, axis=2),
    }
    return [
        SourceFace(f"{name}-{k}", image, face.box, np.asarray(face.landmarks, np.float64))
        for name, image in images.items()
        for k, face in enumerate(detector.detect(image))
    ]


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)


def face_swap(target: SourceFace, source: SourceFace) -> np.ndarray:
    """``target``'s photograph with ``source``'s inner face pasted over its own (RGB uint8)."""
    h, w = target.image.shape[:2]
    matrix, _ = cv2.estimateAffinePartial2D(source.landmarks, target.landmarks)
    warped = cv2.warpAffine(source.image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    eyes = target.landmarks[:2]
    eye_distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    centre = (eyes.mean(axis=0) + target.landmarks[3:].mean(axis=0)) / 2
    angle = float(np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1])))
    hard = np.zeros((h, w), np.float32)
    axes = (round(_MASK_HALF_WIDTH * eye_distance), round(_MASK_HALF_HEIGHT * eye_distance))
    cv2.ellipse(hard, (round(centre[0]), round(centre[1])), axes, angle, 0, 360, 1.0, thickness=-1)
    inside = hard > 0
    target_lab, source_lab = _lab(target.image), _lab(warped)
    for c in range(3):  # match the pasted face's mean and spread to the target face, per Lab channel
        s, t = source_lab[..., c][inside], target_lab[..., c][inside]
        source_lab[..., c] = (source_lab[..., c] - s.mean()) * (t.std() / max(s.std(), 1.0)) + t.mean()
    matched = cv2.cvtColor(np.clip(source_lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    weight = cv2.GaussianBlur(hard, (0, 0), _MASK_BLUR * eye_distance)[..., None]
    blended = weight * matched + (1 - weight) * target.image.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def self_blended(face: SourceFace, spec: CropSpec, seed: int) -> np.ndarray:
    """``face``'s photograph with one self-blend (``training.sbi``) made in the served crop's region,
    at the photograph's resolution."""
    h, w = face.image.shape[:2]
    x1, y1, x2, y2 = crop_region(face.box, w, h, spec)
    image = face.image.copy()
    patch = np.ascontiguousarray(image[y1:y2, x1:x2])
    image[y1:y2, x1:x2] = self_blend(patch, np.random.default_rng(seed), landmarks=face.landmarks - [x1, y1]).fake
    return image


def write_heldout(folder: Path, faces: list[SourceFace], spec: CropSpec) -> dict[str, int]:
    """``folder/{real,fake-sbi,fake-swap}/*.png``, served-style crops (module doc); faces per label. Each
    image is cut at the box of the real face it was made on."""
    images: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "real": {face.name: (face.image, face.box) for face in faces},
        "fake-sbi": {
            f"{face.name}-sbi{k}": (self_blended(face, spec, seed=1000 * i + k), face.box)
            for i, face in enumerate(faces)
            for k in range(SBI_PER_FACE)
        },
        "fake-swap": {
            f"{source.name}-on-{target.name}": (face_swap(target, source), target.box)
            for target, source in itertools.permutations(faces, 2)
        },
    }
    for label, named in images.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for name, (image, box) in named.items():
            crop = crop_face(image, box, spec)
            cv2.imwrite(str(folder / label / f"{name}.png"), np.ascontiguousarray(crop[..., ::-1]))
    return {label: len(named) for label, named in images.items()}


@dataclass(frozen=True)
class HeldoutScores:
    """Attack scores of the real faces and of each kind of fake."""

    real: np.ndarray
    fakes: dict[str, np.ndarray]

    def auc(self, kind: str | None = None) -> float:
        """AUC of real against one kind of fake, or against all of them."""
        fake = self.fakes[kind] if kind else np.concatenate(list(self.fakes.values()))
        return roc_auc(np.r_[np.zeros(len(self.real)), np.ones(len(fake))], np.r_[self.real, fake])

    def flagged_real(self, threshold: float) -> int:
        """How many real faces the threshold calls fake."""
        return int((self.real >= threshold).sum())


def score_heldout(package_dir: Path, folder: Path) -> HeldoutScores:
    """Scores of ``folder``'s faces by the package, through ONNX Runtime as served."""
    from fsfm.package.repository import load_package
    from training.evaluate import PackageScorer, score_source
    from training.finetune_data import folder_source

    scorer = PackageScorer(load_package(package_dir))

    def scores(label: str) -> np.ndarray:
        return score_source(scorer, folder_source(folder / label, label, label=0 if label == "real" else 1))

    return HeldoutScores(real=scores("real"), fakes={kind: scores(kind) for kind in FAKE_KINDS})


def recalibrated(manifest: Manifest, scores: HeldoutScores, note: str) -> Manifest:
    """``manifest`` with thresholds calibrated on the held-out scores (EER point; the fixed-FPR targets
    recorded as unresolved) and ``provenance.metrics`` replaced by the held-out ones (``heldout_*``, with
    ``heldout_<kind>_auc`` per kind of fake)."""
    fake = np.concatenate(list(scores.fakes.values()))
    labels = np.r_[np.zeros(len(scores.real)), np.ones(len(fake))]
    all_scores = np.r_[scores.real, fake]
    thresholds = calibrated_thresholds(labels, all_scores, target_fprs=(0.01, 0.001))
    metrics = calibration_metrics(labels, all_scores, None, prefix="heldout")
    metrics |= {f"heldout_{kind.removeprefix('fake-')}_auc": scores.auc(kind) for kind in FAKE_KINDS}
    provenance = manifest.provenance.model_copy(update={"metrics": metrics, "notes": note})
    return manifest.model_copy(update={"thresholds": thresholds, "provenance": provenance})


def main(package: Path, folder: Path = Path(".cache/demo-heldout"), write: bool = False) -> None:
    """Build the held-out faces, print how the package does on them, and with --write recalibrate it."""
    from fsfm.face.detector import create_detector

    manifest = Manifest.load(package)
    faces = other_identity_faces(create_detector())
    counts = write_heldout(folder, faces, manifest.crop)
    scores = score_heldout(package, folder)
    print(f"{folder}: {counts}")
    for kind in FAKE_KINDS:
        print(f"  AUC real vs {kind}: {scores.auc(kind):.3f}")
    print(f"  AUC real vs all fakes: {scores.auc():.3f}")
    for point in manifest.thresholds.operating_points:
        flagged = scores.flagged_real(point.threshold)
        print(f"  current {point.name} threshold {point.threshold:.4f}: {flagged}/{len(scores.real)} real flagged")
    note = (
        f"thresholds and metrics from faces of {len(faces)} people it never saw ({counts['real']} real faces of "
        f"the sample photos and scikit-image's cameraman; {counts['fake-sbi']} self-blended and "
        f"{counts['fake-swap']} face-swapped fakes of them; training/demo_heldout.py): far too few to resolve a "
        f"fixed false-positive rate"
    )
    updated = recalibrated(manifest, scores, note)
    new = updated.thresholds.default
    print(f"  new default (EER) {new:.4f}: {scores.flagged_real(new)}/{len(scores.real)} real flagged")
    if write:
        updated.replace_in(package)
        print(f"{package}: manifest rewritten")


if __name__ == "__main__":
    import typer

    typer.run(main)
