"""The local cache of converted model assets (today: the MTCNN detector's ONNX files).

Assets are prepared once, by setup code (``fsfm setup``) or the tests' session fixture, and the
detector only ever reads them: nothing is downloaded at detection time.

MTCNN comes from the facenet-pytorch 2.6.0 wheel on PyPI (MIT licence), which ships the three
nets as PyTorch state dicts. We do not depend on that package (it pins old torch and numpy); we
fetch its wheel with pip, take the ``.pt`` files out of it and convert them to ONNX with
``fsfm.face.mtcnn_convert``. ``FSFM_FACENET_WHEEL`` can point at an already downloaded wheel
for machines without access to PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FACENET_VERSION = "2.6.0"
FACENET_REQUIREMENT = f"facenet-pytorch=={FACENET_VERSION}"
MTCNN_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
# The source state dicts stay next to the ONNX files, for re-checking the conversion.
MTCNN_TORCH_SUBDIR = "torch"
_WHEEL_DATA_DIR = "facenet_pytorch/data"
_PT_NAMES = ("pnet.pt", "rnet.pt", "onet.pt")


def cache_dir() -> Path:
    """Root of the fsfm cache: ``$FSFM_HOME``, default ``~/.cache/fsfm``."""
    return Path(os.environ.get("FSFM_HOME", Path.home() / ".cache" / "fsfm")).expanduser()


def mtcnn_dir() -> Path:
    """Where the converted MTCNN ONNX files live in the cache."""
    return cache_dir() / "detectors" / f"mtcnn-facenet-{FACENET_VERSION}"


def ensure_mtcnn(dest: Path | None = None) -> Path:
    """Returns a folder holding ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx``, converting once.

    dest: the folder to fill; default ``mtcnn_dir()``. Needs PyTorch (and pip access to PyPI or
    ``FSFM_FACENET_WHEEL``) only when the ONNX files are not there yet.
    """
    folder = Path(dest) if dest is not None else mtcnn_dir()
    if all((folder / name).is_file() for name in MTCNN_FILES):
        return folder
    try:
        from fsfm.face.mtcnn_convert import convert_mtcnn
    except ImportError as exc:
        raise RuntimeError(
            f"the MTCNN detector weights are missing from {folder} and converting them needs "
            f"PyTorch ({exc}); run `fsfm setup` on a machine with the training extras installed, "
            "or copy a converted folder there"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="fsfm-mtcnn-") as tmp:
        wheel = _facenet_wheel(Path(tmp))
        pt_dir = _extract_weights(wheel, folder / MTCNN_TORCH_SUBDIR)
        convert_mtcnn(pt_dir, folder)
        _write_source(folder, wheel, pt_dir)
    return folder


def _facenet_wheel(work: Path) -> Path:
    """The facenet-pytorch wheel: ``$FSFM_FACENET_WHEEL`` if set, else downloaded by pip."""
    given = os.environ.get("FSFM_FACENET_WHEEL")
    if given:
        wheel = Path(given).expanduser()
        if not wheel.is_file():
            raise RuntimeError(f"FSFM_FACENET_WHEEL points at {wheel}, which is not a file")
        return wheel
    return download_wheel(FACENET_REQUIREMENT, work / "wheel", hint="set FSFM_FACENET_WHEEL to its path")


def download_wheel(requirement: str, dest: Path, hint: str = "") -> Path:
    """``pip download --no-deps`` one wheel of ``requirement`` into ``dest`` (setup time only)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    project = requirement.split("=")[0].split("<")[0].split(">")[0].replace("-", "_").lower()
    wheels = sorted(p for p in Path(dest).glob("*.whl") if p.name.lower().startswith(project + "-"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {requirement} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}\nOffline, download the wheel elsewhere and {hint or 'retry'}."
        )
    return wheels[-1]


def _extract_weights(wheel: Path, out_dir: Path) -> Path:
    """Copies the three MTCNN state dicts out of the wheel into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in _PT_NAMES:
            member = f"{_WHEEL_DATA_DIR}/{name}"
            try:
                (out_dir / name).write_bytes(archive.read(member))
            except KeyError as exc:
                raise RuntimeError(f"{wheel.name} has no {member}; is it facenet-pytorch {FACENET_VERSION}?") from exc
    return out_dir


def _write_source(folder: Path, wheel: Path, pt_dir: Path) -> None:
    """Records where the weights came from (provenance for licence and reproducibility)."""
    source = {
        "package": FACENET_REQUIREMENT,
        "wheel": wheel.name,
        "license": "MIT",
        "sha256": {name: hashlib.sha256((pt_dir / name).read_bytes()).hexdigest() for name in _PT_NAMES},
    }
    tmp = folder / ".SOURCE.json.tmp"
    tmp.write_text(json.dumps(source, indent=2) + "\n")
    os.replace(tmp, folder / "SOURCE.json")


# Real photographs for tests, benchmarks and the demo model, taken from a registry package rather
# than committed: the insightface wheel ships sample images (a group photo with six faces, a
# portrait). They are test material only, never training data for a model meant for use.
SAMPLES_REQUIREMENT = "insightface==2.1"
_SAMPLE_MEMBERS = {"group.jpg": "insightface/data/images/t1.jpg", "portrait.png": "insightface/data/images/Tom_Hanks_54745.png"}


def ensure_sample_photos(dest: Path | None = None) -> Path:
    """A folder holding ``group.jpg`` (six faces) and ``portrait.png`` (one face), fetched once."""
    folder = Path(dest) if dest is not None else cache_dir() / "samples"
    if all((folder / name).is_file() for name in _SAMPLE_MEMBERS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fsfm-samples-") as tmp:
        wheel = download_wheel(SAMPLES_REQUIREMENT, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            for name, member in _SAMPLE_MEMBERS.items():
                part = folder / f".{name}.tmp"
                part.write_bytes(archive.read(member))
                os.replace(part, folder / name)
    return folder
