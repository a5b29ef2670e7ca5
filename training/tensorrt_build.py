"""Build a TensorRT plan (``model.plan``) from a package's ONNX graph, on the GPU that will run it.

Precision lives in the graph, not in builder flags: the network is strongly typed. TensorRT 11
removed the weak-typing flags (``BuilderFlag.FP16`` and the like) and NVIDIA's migration guide
replaces them with an ONNX graph converted to mixed precision beforehand; TensorRT 10 builds the
same strongly typed network. For ``fp16`` the graph is converted with ONNX Runtime's float16
converter (ONNX Runtime is already a dependency), keeping the model's float32 input and output,
and LayerNormalization in float32, as TensorRT's own builder warning advises: fp16 layer norms
after attention can overflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from fsfm.engines.tensorrt import current_device_name, require_tensorrt, trt_logger
from fsfm.models.checkpoints import file_sha256
from fsfm.package.manifest import PLAN_FILE, PlanBuild, Variant
from fsfm.package.repository import ModelPackage, load_package

PRECISIONS = ("fp32", "fp16")
FP32_OPS = ["LayerNormalization"]


def onnx_bytes(onnx_path: Path, precision: str) -> bytes:
    """The graph to build from: as exported (fp32), or converted to fp16 with fp32 I/O and norms."""
    if precision == "fp32":
        return Path(onnx_path).read_bytes()
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = OnnxModel(convert_float_to_float16(onnx.load(onnx_path), keep_io_types=True, op_block_list=FP32_OPS))
    half.topological_sort()  # the converter appends its Cast nodes at the end of the node list
    return half.model.SerializeToString()


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_gib: int = 4,
) -> Variant:
    """Build and serialise a TensorRT engine for ``onnx_path`` (one input, dynamic batch) that
    takes batches of ``min_batch..max_batch`` and is tuned for ``opt_batch`` (the batcher's usual
    batch); write it to ``plan_path`` atomically and describe it as a package variant. ``fp32`` leaves TensorRT its
    default of TF32 tensor-core math.

    Raises ``EngineError`` (a ``RuntimeError``) when TensorRT, CUDA Python or a GPU is missing,
    ``RuntimeError`` when parsing or building fails, ``ValueError`` for bad arguments.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {PRECISIONS} (int8 needs a Q/DQ-quantised graph)")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    trt, cudart = require_tensorrt()
    builder = trt.Builder(trt_logger())
    # Every TensorRT >= 10 network has an explicit batch axis; STRONGLY_TYPED is a no-op on 11.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse(onnx_bytes(onnx_path, precision)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise RuntimeError(f"{onnx_path} has {network.num_inputs} inputs; plans are built for one")
    image = network.get_input(0)
    sample = tuple(image.shape)[1:]
    if any(d < 0 for d in sample):
        raise RuntimeError(f"{onnx_path}: input {image.name} {tuple(image.shape)} must be dynamic in the batch only")
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, (min_batch, *sample), (opt_batch, *sample), (max_batch, *sample))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} ({precision}); its log above says why")
    plan_path = Path(plan_path)
    partial = plan_path.with_name(f".{plan_path.name}.partial")
    try:
        partial.write_bytes(serialized)  # IHostMemory is a buffer
        os.replace(partial, plan_path)
    finally:
        partial.unlink(missing_ok=True)
    build = PlanBuild(
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        device=current_device_name(cudart),
        tensorrt_version=trt.__version__,
    )
    return Variant(
        precision=precision,
        format="tensorrt-plan",
        file=plan_path.name,
        sha256=file_sha256(plan_path),
        method=f"TensorRT {trt.__version__} plan built on {build.device}",
        plan=build,
    )


def add_plan_to_package(
    package: ModelPackage,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_gib: int = 4,
) -> ModelPackage:
    """Build ``model.plan`` in the package folder and record it among the manifest's variants.
    The manifest is replaced atomically (written beside it, then renamed), so a reader
    sees the old manifest or the new one, never half of one."""
    variant = build_plan(
        package.onnx_path,
        package.path / PLAN_FILE,
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_gib=workspace_gib,
    )
    package.manifest.with_variant(variant).replace_in(package.path)
    return load_package(package.path)
