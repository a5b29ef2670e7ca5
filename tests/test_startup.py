"""What ``fsfm serve`` says before and while it starts: checks before anything is bound or announced,
absolute paths, warnings for demo models and for a public address without API keys, and honest
readiness (``/readyz`` 503 ``no_models`` for an empty repository, ``/livez``)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from service.startup import StartupError, check_startup, is_loopback
from tests.packages import make_tiny_package
from tests.servers import REPO_ROOT, running_server

SERVE = [sys.executable, "-m", "fsfm_cli", "serve", "--port", "0", "--grpc-port", "0"]


def serve_fails(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SERVE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 2, result
    return result


def test_a_missing_repository_fails_before_serving_with_its_absolute_path(tmp_path) -> None:
    result = serve_fails("--models", "nowhere", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(tmp_path / "nowhere") in lines[-1]
    assert "Traceback" not in result.stderr and "fsfm serving" not in result.stderr + result.stdout


def test_a_tls_certificate_without_its_key_is_one_line(tmp_path, mtcnn_dir) -> None:
    (tmp_path / "models").mkdir()
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    result = serve_fails("--models", str(tmp_path / "models"), env={"FSFM_GRPC_TLS_CERT": str(cert)})
    assert result.stderr.strip().splitlines()[-1] == (
        "error: gRPC TLS needs both FSFM_GRPC_TLS_CERT and FSFM_GRPC_TLS_KEY; FSFM_GRPC_TLS_KEY is not set"
    )
    assert "Traceback" not in result.stderr


def test_a_tls_key_that_is_not_the_certificates_is_one_line(tmp_path, mtcnn_dir) -> None:
    """A key file that holds no private key (here: the certificate again) fails the checks in one line,
    not with gRPC's bind-failure traceback."""
    (tmp_path / "models").mkdir()
    cert = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1"]
        + ["-keyout", str(tmp_path / "key.pem"), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    env = {"FSFM_GRPC_TLS_CERT": str(cert), "FSFM_GRPC_TLS_KEY": str(cert)}
    result = serve_fails("--models", str(tmp_path / "models"), env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: FSFM_GRPC_TLS_CERT") and "private key" in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("door", ["--port", "--grpc-port"])
def test_a_port_in_use_is_one_line(tmp_path, mtcnn_dir, door: str) -> None:
    (tmp_path / "models").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_fails("--models", str(tmp_path / "models"), door, str(port))
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot ") and f"127.0.0.1:{port}" in last, result.stderr
    assert "Traceback" not in result.stderr


def test_warnings_name_demo_models_and_a_public_address_without_keys(tmp_path, mtcnn_dir, caplog) -> None:
    make_tiny_package(tmp_path, name="tiny-deepfake", task="deepfake", demo=True)
    with caplog.at_level(logging.WARNING, logger="fsfm.service"):
        startup = check_startup(Settings(models=tmp_path, host="0.0.0.0"), grpc=False)
    assert any("tiny-deepfake:1" in w and "DEMO" in w for w in startup.warnings)
    assert any("0.0.0.0 without API keys" in w for w in startup.warnings)
    assert len(caplog.records) == len(startup.warnings)
    quiet = check_startup(Settings(models=tmp_path, host="127.0.0.1", api_keys=["k"]), grpc=False)
    assert not any("API keys" in w for w in quiet.warnings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("api.example", False),
    ],
)
def test_loopback_addresses(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_startup_error_is_not_a_package_error(tmp_path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        check_startup(Settings(models=tmp_path / "absent"), grpc=False)


def test_an_empty_repository_is_live_but_not_ready(tmp_path, mtcnn_dir) -> None:
    (tmp_path / "models").mkdir()
    with running_server(tmp_path / "models", wait_ready=False) as server:
        deadline = time.monotonic() + 30
        while not (response := httpx.get(server.rest_url + "/readyz")).json()["models_loaded"]:
            assert time.monotonic() < deadline, response.json()
            time.sleep(0.05)
        readiness = response.json()
        assert response.status_code == 503
        assert readiness["reason"] == "no_models" and readiness["models"] == [] and not readiness["ready"]
        assert httpx.get(server.rest_url + "/livez").json() == {"status": "ok"}
        assert "no model package in" in server.log()
