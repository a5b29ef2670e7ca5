# syntax=docker/dockerfile:1.7
# Images of the scaled-out service (docs/scaling.md):
#   api     slim serving image: REST + gRPC, face detection, the Redis queue client. No PyTorch.
#   worker  GPU worker: `fsfm worker` with the CUDA and TensorRT runtimes (TensorRT plans, or ONNX
#           Runtime's CUDA / TensorRT providers).
# Build: docker build --target api -t fsfm-api:0.1.0 .   /   docker build --target worker -t fsfm-worker:0.1.0 .
# Both install the project's wheel, built in the first stage from the context (.dockerignore keeps it to
# what the wheel is built from); no source tree is copied into them. The wheel carries the committed gRPC
# stubs and the face detectors' ONNX weights (BlazeFace, MTCNN). Models are not baked in: mount a model repository at /models.

ARG PYTHON_VERSION=3.11

# ---- wheel: the project as one pure-Python wheel; each image installs it with its own extras ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); \
sys.exit(not {'service/proto_gen/fsfm/v1/analysis_pb2.py', 'fsfm/face/weights/mtcnn/onet.onnx', \
'fsfm/face/weights/blazeface/face_detection_back.onnx'} <= set(names))" \
        /wheels/fsfm-*.whl

# ---- api ----------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS api
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/fsfm-*.whl)[serve]" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
    && groupadd --system --gid 10001 fsfm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home fsfm \
    && install -d -o 10001 -g 10001 /var/cache/fsfm
ENV FSFM_HOME=/var/cache/fsfm FSFM_MODELS=/models FSFM_HOST=0.0.0.0 FSFM_PORT=8000 FSFM_GRPC_PORT=50051 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000 50051
# Ready (models loaded, queue reachable), not only alive: compose starts dependents on it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fsfm"]
CMD ["serve"]

# ---- worker -------------------------------------------------------------------------------------
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS worker
# Unpinned apt packages: the Python of the pinned base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 fsfm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home fsfm \
    && install -d -o 10001 -g 10001 /var/cache/fsfm
ENV PATH=/opt/venv/bin:$PATH
# onnxruntime-gpu replaces the CPU build (both install the `onnxruntime` module); tensorrt-cu12 and
# cuda-python < 13 are the TensorRT runtime and CUDA bindings that fsfm's TensorRT engine uses.
# Unpinned: pip picks the releases for the base image's CUDA 12 at build time.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/fsfm-*.whl)[serve]" \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir onnxruntime-gpu tensorrt-cu12 "cuda-python<13" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
ENV FSFM_HOME=/var/cache/fsfm FSFM_MODELS=/models FSFM_HOST=0.0.0.0 FSFM_METRICS_PORT=9400 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fsfm"]
CMD ["worker"]
