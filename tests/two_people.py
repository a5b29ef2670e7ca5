"""A test video of two people: two real faces (the astronaut, and a face of the sample group photo)
moving across a grey background, the second one manipulated in frames ``MANIPULATED`` by a
colour-shifted self-blend of its face (the face hull of ``training/sbi.py``'s outline, softened, blended
with a green-shifted copy of itself), as a face swap's colour mismatch would be. Encoded with PyAV
into memory."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np

from training.sbi import face_outline

FRAME_SIZE = (480, 272)  # width, height: even sides for yuv420p
FRAMES = 48
FPS = 24
MANIPULATED = range(20, 41)  # frames 20-40: the second person's face is blended
GREY = 128
# Where each face patch is cut from its photo (rows, columns). The blended face's 5 landmarks in its
# patch: those the default detector finds on the group photo's leftmost face (tests/faces.py), moved
# to the patch.
ASTRONAUT_PATCH = (slice(45, 215), slice(150, 305))
GROUP_PATCH = (slice(235, 420), slice(25, 195))
GROUP_PATCH_LANDMARKS = np.array([[60.6, 98.7], [104.3, 73.7], [97.6, 105.4], [91.9, 139.8], [124.5, 118.6]])
# Each person's top-left corner in frame 0 and its motion per frame (x, y), in pixels.
ASTRONAUT_PATH = ((20.0, 40.0), (2.0, 0.5))
GROUP_PATH = ((300.0, 40.0), (-0.5, 0.5))
COLOUR_SHIFT = np.array([-25.0, 70.0, -25.0])  # RGB added to the blended copy: a strong green cast
MASK_BLUR_PX = 9  # Gaussian sigma softening the hull's edge, as SBI's soft mask


def colour_blend(patch: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The patch with its face blended with a colour-shifted copy inside a soft face hull."""
    mask = np.zeros(patch.shape[:2], np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(face_outline(landmarks)).astype(np.int32)), 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), MASK_BLUR_PX)[..., None]
    source = np.clip(patch.astype(np.float32) + COLOUR_SHIFT, 0, 255)
    return np.round(mask * source + (1 - mask) * patch).astype(np.uint8)


def two_people_frames(astronaut: np.ndarray, group: np.ndarray) -> list[np.ndarray]:
    """``FRAMES`` RGB frames: the astronaut moving right along the left half, the group photo's
    leftmost face drifting down and left in the right half; the latter blended in ``MANIPULATED``."""
    first, second = astronaut[ASTRONAUT_PATCH], group[GROUP_PATCH]
    blended = colour_blend(second, GROUP_PATCH_LANDMARKS)
    width, height = FRAME_SIZE
    frames = []
    for i in range(FRAMES):
        frame = np.full((height, width, 3), GREY, np.uint8)
        for patch, ((x0, y0), (dx, dy)) in (
            (first, ASTRONAUT_PATH),
            (blended if i in MANIPULATED else second, GROUP_PATH),
        ):
            x, y = round(x0 + dx * i), round(y0 + dy * i)
            frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        frames.append(frame)
    return frames


def encode_mp4(frames: list[np.ndarray], fps: int = FPS) -> bytes:
    """MPEG-4 part 2 in MP4, in memory, near-lossless (the colours survive)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()
