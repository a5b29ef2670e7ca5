"""Measure the box transform that maps our detector's boxes onto dlib's frontal-detector boxes.

Official FSFM weights were trained on crops around dlib boxes (method spec §3.2). To feed them the
crops they expect, a model package exported from official weights carries ``crop.box_transform``:
centre shift (dx, dy, in units of our box's width/height) and size ratios (sw, sh), the medians over
every face both detectors find. Run once, by hand; dlib is not a dependency of fsfm:

    python -m pip install --target /tmp/dlib dlib-bin
    PYTHONPATH=/tmp/dlib .venv/bin/python scripts/measure_box_transform.py

The faces come from the photos the tests use (scikit-image's astronaut, the sample photos of
``fsfm.assets.ensure_sample_photos``), each at three scales and mirrored.
"""

from __future__ import annotations

import json

import cv2
import dlib
import numpy as np
from skimage import data

from fsfm.assets import ensure_sample_photos
from fsfm.face.detector import create_detector
from fsfm.imaging import read_image_file
from tests.faces import iou

SCALES = (0.75, 1.0, 1.5)


def photos() -> list[np.ndarray]:
    folder = ensure_sample_photos()
    base = [data.astronaut(), read_image_file(folder / "group.jpg"), read_image_file(folder / "portrait.png")]
    out = []
    for image in base:
        for scale in SCALES:
            resized = cv2.resize(
                image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            )
            out += [resized, np.ascontiguousarray(resized[:, ::-1])]
    return out


def main() -> None:
    detector = create_detector()
    reference = dlib.get_frontal_face_detector()
    rows = []
    for image in photos():
        ours = [f.box.astype(float) for f in detector.detect(image)]
        for rect in reference(image, 1):  # upsample once, as FSFM's extraction does
            theirs = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], float)
            best = max(ours, key=lambda box: iou(box, theirs), default=None)
            if best is None or iou(best, theirs) < 0.3:
                continue
            w, h = best[2] - best[0], best[3] - best[1]
            rows.append(
                (
                    ((theirs[0] + theirs[2]) - (best[0] + best[2])) / 2 / w,
                    ((theirs[1] + theirs[3]) - (best[1] + best[3])) / 2 / h,
                    (theirs[2] - theirs[0]) / w,
                    (theirs[3] - theirs[1]) / h,
                )
            )
    values = np.array(rows)
    median = np.median(values, axis=0)
    spread = np.percentile(values, 75, axis=0) - np.percentile(values, 25, axis=0)
    print(
        json.dumps(
            {
                "faces": len(rows),
                "box_transform": dict(zip(("dx", "dy", "sw", "sh"), np.round(median, 4).tolist(), strict=False)),
                "interquartile_range": dict(zip(("dx", "dy", "sw", "sh"), np.round(spread, 4).tolist(), strict=False)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
