"""What the benchmarks send: a real photograph with one face, unless the user gives an image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fsfm.face.detector import FaceDetector
from fsfm.imaging import decode_image
from fsfm.package.manifest import Manifest

JPEG_QUALITY = 90
CONTEXT = 2.0  # the crop's side, in face widths: the face with some of its surroundings


def one_face_jpeg(detector: FaceDetector, image: Path | None = None) -> bytes:
    """``image``'s bytes as they are; by default, a JPEG of the largest face of the sample group
    photo (``fsfm.assets.ensure_sample_photos``) with ``CONTEXT`` face widths of surroundings, so
    that each request carries exactly one face, as in an identity check."""
    if image is not None:
        return Path(image).read_bytes()
    from fsfm.assets import ensure_sample_photos

    group = decode_image((ensure_sample_photos() / "group.jpg").read_bytes())
    faces = detector.detect(group)
    if not faces:
        raise RuntimeError("the detector found no face in the sample group photo")
    face = max(faces, key=lambda f: f.width * f.height)
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    half = CONTEXT * max(face.width, face.height) / 2
    h, w = group.shape[:2]
    x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
    x2, y2 = int(min(w, cx + half)), int(min(h, cy + half))
    crop = np.ascontiguousarray(group[y1:y2, x1:x2, ::-1])  # RGB -> BGR for OpenCV
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


GROUP_FRAME_ROWS = (83, 803)  # a 1280x720 frame of the 1280x886 group photo, all six faces inside


def group_frame_jpeg() -> bytes:
    """A 1280x720 JPEG frame of the sample group photo (rows 83-803, cropped, not resized): six faces,
    the frame the detection and end-to-end figures of docs/performance.md are measured on."""
    from fsfm.assets import ensure_sample_photos

    group = decode_image((ensure_sample_photos() / "group.jpg").read_bytes())
    frame = np.ascontiguousarray(group[GROUP_FRAME_ROWS[0] : GROUP_FRAME_ROWS[1], :, ::-1])  # RGB -> BGR
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def sample_face_tensors(detector: FaceDetector, manifest: Manifest) -> np.ndarray:
    """The judged faces of the sample group photo, cropped and normalised for ``manifest``'s model:
    real inputs for comparing an engine variant's outputs with the original's."""
    from fsfm.analysis import prepare_faces
    from fsfm.assets import ensure_sample_photos

    group = decode_image((ensure_sample_photos() / "group.jpg").read_bytes())
    prepared = prepare_faces(group, detector.detect(group), manifest)
    tensors = [p.tensor for p in prepared if p.tensor is not None]
    if not tensors:
        raise RuntimeError("no face of the sample group photo is large enough for the model")
    return np.stack(tensors)


def sample_face_folder(detector: FaceDetector, manifest: Manifest, folder: Path) -> Path:
    """``folder/real/*.png``: the faces of the sample photos, cut as ``manifest``'s model is served
    them (a held-out set on which ``fsfm quantize`` judges a benchmark package's variants). Reused
    when already there."""
    from fsfm.assets import ensure_sample_photos
    from fsfm.face.crop import crop_face

    real = folder / "real"
    if real.is_dir() and any(real.iterdir()):
        return folder
    real.mkdir(parents=True, exist_ok=True)
    photos = ensure_sample_photos()
    for photo in sorted(photos.iterdir()):
        if photo.suffix.lower() not in (".jpg", ".png"):
            continue
        image = decode_image(photo.read_bytes())
        for k, face in enumerate(detector.detect(image)):
            if min(face.width, face.height) >= manifest.crop.min_face_size:
                crop = crop_face(image, face.box, manifest.crop)
                cv2.imwrite(str(real / f"{photo.stem}-{k}.png"), np.ascontiguousarray(crop[..., ::-1]))
    return folder
