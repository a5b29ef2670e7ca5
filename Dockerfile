# syntax=docker/dockerfile:1.7
# Images of the scaled-out service (docs/scaling.md):
#   api     slim serving image: REST + gRPC, face detection, the Redis queue client. No PyTorch.
#   worker  GPU worker: `fsfm worker` with the CUDA and TensorRT runtimes (TensorRT plans, or ONNX
#           Runtime's CUDA / TensorRT providers). It never detects faces, so it carries no detector.
# Build: docker build --target api -t fsfm-api .   /   docker build --target worker -t fsfm-worker .
# Models are not baked in: mount a model repository at /models (FSFM_MODELS).

ARG PYTHON_VERSION=3.11

# ---- wheel: the project as one pure-Python wheel; each image installs it with its own extras ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- detector: MTCNN's ONNX weights, converted once at build time (conversion needs torch, the
# ---- api image must not: only the ONNX files leave this stage) -------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS detector
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "$(ls /wheels/fsfm-*.whl)[train]" \
    && FSFM_HOME=/opt/fsfm fsfm setup

# ---- api ----------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS api
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/fsfm-*.whl)[serve]" && rm -rf /wheels \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
    && useradd --system --uid 10001 --no-create-home fsfm
COPY --from=detector /opt/fsfm /opt/fsfm
ENV FSFM_HOME=/opt/fsfm FSFM_MODELS=/models FSFM_HOST=0.0.0.0 FSFM_PORT=8000 FSFM_GRPC_PORT=50051 \
    PYTHONUNBUFFERED=1
USER fsfm
EXPOSE 8000 50051
# Ready (models loaded, queue reachable), not only alive: compose starts dependents on it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fsfm"]
CMD ["serve"]

# ---- worker -------------------------------------------------------------------------------------
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --no-create-home fsfm
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheel /wheels /wheels
# onnxruntime-gpu replaces the CPU build (both install the `onnxruntime` module); tensorrt-cu12 and
# cuda-python < 13 are the TensorRT runtime and CUDA bindings that fsfm's TensorRT engine uses.
RUN pip install --no-cache-dir "$(ls /wheels/fsfm-*.whl)[serve]" && rm -rf /wheels \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir onnxruntime-gpu tensorrt-cu12 "cuda-python<13"
ENV FSFM_MODELS=/models FSFM_HOST=0.0.0.0 FSFM_METRICS_PORT=9400 PYTHONUNBUFFERED=1
USER fsfm
EXPOSE 9400
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fsfm"]
CMD ["worker"]
