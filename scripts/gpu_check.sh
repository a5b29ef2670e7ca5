#!/usr/bin/env bash
# One-shot check of the TensorRT and torch engines on a machine with an NVIDIA GPU:
#  1. installs what is missing (TensorRT and CUDA Python for the driver's CUDA major version, fsfm's
#     dependencies) into a throwaway venv that also sees this Python's packages (a CUDA torch, ...);
#  2. runs the gpu tests: tiny packages, plans built fp32 and fp16, TensorRTEngine and TorchEngine on
#     CUDA against ONNX Runtime on the CPU;
#  3. exports a random ViT-B/16 package, builds its fp16 plan (profile 1/8/32), and prints images/s
#     of a full run() (host arrays in and out) at batch 1, 8 and 32 for ONNX Runtime's CUDA and
#     TensorRT execution providers (onnxruntime-gpu), native TensorRT and torch.
# TensorRT's packages on PyPI are stubs that download the real wheels from NVIDIA's own index when pip
# builds them: run this where that index is reachable, or with the wheels (tensorrt_cu13_bindings,
# tensorrt_cu13_libs, ...) in a folder: WHEELS=/path/to/wheels scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PARENT=${PYTHON:-python3}
VENV=${VENV:-/tmp/fsfm-gpu-venv}
WORK=$(mktemp -d)
PY=$VENV/bin/python
export PYTHONUNBUFFERED=1

command -v nvidia-smi >/dev/null || { echo "no NVIDIA driver (nvidia-smi) on this machine"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p')
case $CUDA in  # onnxruntime-gpu is built for CUDA 13 from 1.27 on
  12) ORT_GPU="onnxruntime-gpu<1.27" ;;
  13) ORT_GPU="onnxruntime-gpu>=1.27" ;;
  *) echo "the driver supports CUDA '$CUDA'; TensorRT wheels exist for 12 and 13"; exit 1 ;;
esac

# The venv's own packages come first, the parent Python's after (a .pth file): pip adds only what is missing.
if [[ ! -x $PY ]]; then
  "$PARENT" -m venv --without-pip "$VENV"
  "$PARENT" -c 'import site; print("\n".join(site.getsitepackages()))' \
    >"$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/parent-site.pth"
fi
pip_install() { "$PARENT" -m pip --python "$PY" install -q ${WHEELS:+--no-index --find-links "$WHEELS"} "$@"; }
missing=()
"$PY" -c 'import tensorrt' 2>/dev/null || missing+=("tensorrt-cu$CUDA-bindings" "tensorrt-cu$CUDA-libs")
"$PY" -c 'from cuda.bindings import runtime' 2>/dev/null || missing+=("cuda-bindings==$CUDA.*")
pip_install -e ".[train,dev]" "${missing[@]}"
"$PY" -c 'import tensorrt, torch; print("TensorRT", tensorrt.__version__, "| torch", torch.__version__)'

echo "== gpu tests (ONNX Runtime on the CPU is the reference)"
tests=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_engines.py -k gpu || tests=$?  # measure anyway

echo "== ViT-B/16: export (torch + ONNX Runtime CPU parity), then fp16 plan and throughput"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import torch

from fsfm.models.config import vit_preset
from fsfm.models.vit import ViTClassifier
from fsfm.package.manifest import PackageInfo
from training.export import write_package
from training.package_torch import save_torch_weights

torch.manual_seed(0)
model = ViTClassifier(vit_preset("fsfm_vit_base_patch16")).eval()
info = PackageInfo(name="vit-b16", version=1, task="deepfake", demo=True)
save_torch_weights(model, write_package(model, info, Path(sys.argv[1]), preset="fsfm_vit_base_patch16"))
EOF
# onnxruntime-gpu for the measurements only, in its own folder: the tests' and the export's reference
# stays ONNX Runtime on the CPU. Its CUDA and cuDNN libraries are the ones the CUDA torch brought.
pip_install --upgrade --no-deps --target "$VENV-onnxruntime-gpu" "$ORT_GPU"
TRT_LIBS=$("$PY" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)
PYTHONPATH=$VENV-onnxruntime-gpu LD_LIBRARY_PATH=$TRT_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$PY" - "$WORK" <<'EOF'
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fsfm.engines.tensorrt import TensorRTEngine
from fsfm.engines.torch import TorchEngine
from fsfm.package.repository import load_package
from training.tensorrt_build import add_plan_to_package, onnx_bytes

start = time.perf_counter()
package = load_package(Path(sys.argv[1]) / "vit-b16" / "1")
package = add_plan_to_package(package, precision="fp16", min_batch=1, opt_batch=8, max_batch=32)
plan = package.manifest.variant("fp16", "tensorrt-plan")
print(f"fp16 plan built in {time.perf_counter() - start:.0f} s: {plan}")
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels beside torch
half = onnx_bytes(package.onnx_path, "fp16")  # the graph the plan was built from
profile = {f"trt_profile_{k}_shapes": f"images:{b}x3x224x224" for k, b in (("min", 1), ("opt", 8), ("max", 32))}


def ort_run(providers):
    session = ort.InferenceSession(half, providers=providers)
    print("  onnxruntime providers in use:", session.get_providers())
    return lambda x: session.run(None, {"images": x})


backends = {
    "onnxruntime CUDA EP, fp16 graph": lambda: ort_run(["CUDAExecutionProvider"]),
    "onnxruntime TensorRT EP, fp16 graph": lambda: ort_run(
        [("TensorrtExecutionProvider", profile), "CUDAExecutionProvider"]
    ),
    "TensorRT native, fp16 plan": lambda: TensorRTEngine(package.variant_path(plan)).run,
    "torch eager CUDA, fp32": lambda: TorchEngine(package).run,
}
print(f"{'engine':<38} {'batch':>5} {'images/s':>9} {'ms/batch':>9}")
for label, make in backends.items():
    try:
        run = make()
    except Exception as exc:  # report and go on: one missing backend should not hide the others
        print(f"{label:<38} n/a: {exc}")
        continue
    for batch in (1, 8, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        for _ in range(3):
            run(x)
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 2.0:
            run(x)
            runs += 1
        print(f"{label:<38} {batch:>5} {runs * batch / elapsed:>9.0f} {1000 * elapsed / runs:>9.2f}")
EOF
exit $tests
