"""The service under hostile use, on real ``fsfm serve`` processes on loopback (issue 12): bounded
metrics under made-up model names, no outbound traffic, multipart parsing that never stalls the event
loop, and error messages without the server's internals."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.request import MAX_MODEL_NAME_CHARS
from service.errors import public_message
from service.grpc_stubs import pb, pb_grpc
from service.rest.multipart import MAX_PARTS
from tests.references import encode
from tests.servers import RunningServer, running_server

LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$")
INTERNALS = re.compile(r"0x[0-9a-fA-F]{4,}|object at|<_io|Traceback|/tmp/|/usr/|/work/|site-packages")


@pytest.fixture(scope="module")
def server(models, mtcnn_dir) -> RunningServer:
    with running_server(models, {"max_video_frames": 4}) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server) -> pb_grpc.FaceSecurityStub:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FaceSecurityStub(channel)


def _png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- bounded metrics -------------------------------------------------------------------------------


def test_random_model_names_leave_the_metrics_within_ten_percent(server, stub) -> None:
    """1000 requests naming made-up models (REST and gRPC) are counted under one ``unknown`` label."""
    image = _png()
    options = {"task": pb.TASK_DEEPFAKE}
    # one failure per door first: the ``unknown`` series then exist, as after any first such request
    httpx.post(server.rest_url + "/v1/deepfake", params={"model": "warm-up"}, files={"file": image})
    warm_up = pb.AnalysisOptions(model="warm-up", **options)
    _grpc_error(lambda: stub.AnalyzeImage(pb.AnalyzeImageRequest(image=pb.Image(encoded=image), options=warm_up)))
    before = len(httpx.get(server.rest_url + "/metrics").content)

    async def rest_flood() -> list[int]:
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as client:

            async def one() -> int:
                async with limit:
                    name = uuid.uuid4().hex[: 1 + len(uuid.uuid4().hex) % 32]
                    response = await client.post("/v1/deepfake", params={"model": name}, files={"file": image})
                    return response.status_code

            return await asyncio.gather(*(one() for _ in range(500)))

    assert set(asyncio.run(rest_flood())) == {404}
    for _ in range(500):
        request = pb.AnalyzeImageRequest(
            image=pb.Image(encoded=image), options=pb.AnalysisOptions(model=uuid.uuid4().hex, **options)
        )
        assert _grpc_error(lambda request=request: stub.AnalyzeImage(request)).code() == grpc.StatusCode.NOT_FOUND
    text = httpx.get(server.rest_url + "/metrics").text
    assert len(text.encode()) <= 1.1 * before
    labels = set(re.findall(r'fsfm_request_failure_total\{model="([^"]*)"', text))
    assert labels <= {"unknown", "default", "tiny-deepfake", "tiny-deepfake:1"} and "unknown" in labels


def test_a_grpc_model_name_past_the_limit_is_an_invalid_argument(server, stub) -> None:
    request = pb.AnalyzeImageRequest(
        image=pb.Image(encoded=_png()),
        options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE, model="m" * (MAX_MODEL_NAME_CHARS + 1)),
    )
    error = _grpc_error(lambda: stub.AnalyzeImage(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"longer than {MAX_MODEL_NAME_CHARS} characters" in error.details()
    response = httpx.post(
        server.rest_url + "/v1/deepfake", params={"model": "m" * (MAX_MODEL_NAME_CHARS + 1)}, files={"file": _png()}
    )
    assert response.status_code == 422 and response.json()["error"]["reason"] == "invalid_parameter"


# ---- no outbound traffic ------------------------------------------------------------------------------


def _outbound(trace: str) -> list[str]:
    """The ``connect``/``sendto``/``sendmsg`` calls of an strace log that go anywhere but loopback, or
    to a DNS port."""
    found = []
    for line in trace.splitlines():
        if not re.search(r"\b(connect|sendto|sendmsg)\(", line):
            continue
        for address in re.findall(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', line):
            host = address[0] or address[1]
            port = re.search(r"htons\((\d+)\)", line)
            if not LOOPBACK.match(host) or (port and port.group(1) == "53"):
                found.append(line.strip())
    return found


def test_the_server_makes_no_connection_but_to_its_loopback_clients(models, mtcnn_dir, tmp_path) -> None:
    """The whole server process, from start to exit, under strace while REST and gRPC requests are
    answered: no DNS lookup, no connection or datagram to anything but loopback, and nothing
    written to ``$TMPDIR`` (ONNX Runtime's telemetry writes ``.ses`` there)."""
    strace = shutil.which("strace")
    assert strace, "strace is not installed (.ci/run installs it)"
    trace, scratch = tmp_path / "strace.log", tmp_path / "tmp"
    scratch.mkdir()
    wrapper = [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace)]
    env = {**os.environ, "TMPDIR": str(scratch)}
    with running_server(models, {}, env=env, wrapper=wrapper, startup_timeout_s=180) as server:
        image = encode(np.asarray(Image.open(io.BytesIO(_png(256)))))
        for _ in range(3):
            assert httpx.post(server.rest_url + "/v1/deepfake", files={"file": image}, timeout=60).status_code == 200
            with grpc.insecure_channel(server.grpc_target) as channel:
                request = pb.AnalyzeImageRequest(
                    image=pb.Image(encoded=image), options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE)
                )
                pb_grpc.FaceSecurityStub(channel).AnalyzeImage(request, timeout=60)
            time.sleep(1)
        _terminate_traced(server)
    assert trace.stat().st_size > 0  # the trace saw the server's own loopback traffic
    assert _outbound(trace.read_text()) == []
    assert list(scratch.iterdir()) == []


def _terminate_traced(server: RunningServer) -> None:
    """SIGTERM to the server under strace (strace itself ignores it), then strace exits with it."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
    assert server.process.wait(timeout=server.stop_bound_s) == 0, server.log()


# ---- multipart parsing off the loop ------------------------------------------------------------------


def test_a_body_of_200k_tiny_parts_is_refused_quickly_without_stalling_the_loop(server) -> None:
    boundary = "b" * 40
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="p"\r\n\r\n{"x" * 16}\r\n'.encode()
    body = part * 200_000 + f"--{boundary}--\r\n".encode()
    assert len(body) >= 16 * 1024 * 1024
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.rest_url, timeout=10) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get("/livez").status_code == 200
                probes.append(time.monotonic() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.monotonic()
    try:
        response = httpx.post(
            server.rest_url + "/v1/deepfake",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=30,
        )
    finally:
        elapsed = time.monotonic() - started
        done.set()
        prober.join()
    assert response.status_code == 422, response.text
    assert response.json()["error"]["reason"] == "too_many_parts"
    assert str(MAX_PARTS) in response.json()["error"]["message"]
    assert elapsed < 3.0
    assert probes and max(probes) < 0.3, probes


# ---- clean messages ------------------------------------------------------------------------------------


def test_public_messages_drop_reprs_addresses_paths_and_tracebacks() -> None:
    assert public_message("cannot decode PNG: cannot identify image file <_io.BytesIO object at 0x7f3c2a1b09a0>") == (
        "cannot decode PNG: cannot identify image file"
    )
    assert public_message("cannot load /srv/models/m/1/model.onnx: bad graph") == "cannot load model.onnx: bad graph"
    assert public_message("failed Traceback (most recent call last):\n  File x") == "failed"
    assert public_message("handle 0x55d0c0ffee00 gone") == "handle (address) gone"
    kept = "Redis at redis://127.0.0.1:6379/0 is unreachable; send multipart/form-data; model 'a:1'"
    assert public_message(kept) == kept


CORRUPT_INPUTS = {
    "png": b"\x89PNG\r\n\x1a\n" + b"x" * 100,
    "jpeg": b"\xff\xd8\xff" + b"\x00" * 64,
    "webp": b"RIFF\x00\x00\x00\x00WEBP" + b"\x00" * 64,
    "mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 300,
}


@pytest.mark.parametrize("kind", CORRUPT_INPUTS)
def test_errors_of_corrupt_media_carry_no_internals(server, stub, kind: str) -> None:
    data = CORRUPT_INPUTS[kind]
    response = httpx.post(server.rest_url + "/v1/deepfake", files={"file": data}, timeout=30)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message and not INTERNALS.search(message), message
    if kind == "mp4":
        call = lambda: stub.AnalyzeVideo(  # noqa: E731
            pb.AnalyzeVideoRequest(video=data, options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE))
        )
    else:
        call = lambda: stub.AnalyzeImage(  # noqa: E731
            pb.AnalyzeImageRequest(image=pb.Image(encoded=data), options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE))
        )
    error = _grpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() and not INTERNALS.search(error.details()), error.details()
