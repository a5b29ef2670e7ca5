"""A test model that judges a face crop by its pixels alone: the mean greenness of the crop,
G - (R + B) / 2, through a steep logistic. Skin is red over green over blue, so a real face's crop
scores low (0.01-0.06 for the faces of ``tests/two_people.py``); its colour-shifted blends turn the
face green and score high (0.97-0.999). The ONNX graph (ReduceMean over the pixels, one MatMul)
replaces a tiny package's own, so the real service runs it with its real engine, batcher and crop
convention; nothing in it sees a frame number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fsfm.models.checkpoints import file_sha256
from fsfm.package import ModelPackage
from fsfm.package.repository import load_package
from tests.packages import make_tiny_package

GREENNESS_AT_HALF = 0.05  # crop greenness (full scale 1) scored 0.5: real faces' crops measure about 0, the blends 0.11
STEEPNESS = 60.0  # logit per unit of greenness: real faces score under 0.06, the blends over 0.95


def colour_logits_graph(mean: list[float], std: list[float], attack_index: int, opset: int) -> onnx.ModelProto:
    """(B, 3, S, S) normalised crops -> (B, 2) logits: the attack class's STEEPNESS * (greenness -
    GREENNESS_AT_HALF), the other's 0, with the pixels un-normalised (pixel / 255 = x * std + mean) in
    the weights."""
    mean_a, std_a = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    greenness = np.array([-0.5, 1.0, -0.5])  # per channel R, G, B
    weights = np.zeros((3, 2), np.float32)
    weights[:, attack_index] = STEEPNESS * greenness * std_a
    bias = np.zeros(2, np.float32)
    bias[attack_index] = STEEPNESS * (float(greenness @ mean_a) - GREENNESS_AT_HALF)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["channel_means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["channel_means", "weights"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        ],
        "colour_model",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "size", "size"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def make_colour_package(repository: Path, name: str = "colour-deepfake") -> ModelPackage:
    """A deepfake package (threshold 0.5) whose ``model.onnx`` is ``colour_logits_graph``."""
    package = make_tiny_package(repository, name=name)
    manifest = package.manifest
    normalization = manifest.normalization
    graph = colour_logits_graph(
        normalization.mean, normalization.std, manifest.classes.attack_index, manifest.onnx.opset
    )
    onnx.save(graph, package.onnx_path)
    onnx_info = manifest.onnx.model_copy(update={"sha256": file_sha256(package.onnx_path)})
    manifest.model_copy(update={"onnx": onnx_info}).replace_in(package.path)
    return load_package(package.path)
