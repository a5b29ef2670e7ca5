"""Converts the MTCNN weights of facenet-pytorch 2.6.0 (MIT) into three ONNX files.

The wheel ships P-Net, R-Net and O-Net as PyTorch state dicts (``pnet.pt``, ``rnet.pt``,
``onet.pt``). The modules below reproduce the architecture those state dicts were trained for,
with the same parameter names, so the weights load strictly. Only setup code imports this
module: the detector itself (``fsfm.face.mtcnn``) runs the exported ONNX without PyTorch.

Output names are part of the contract with ``fsfm.face.mtcnn``: every net emits ``face_prob``
(the face channel of the softmax over {background, face}, shape (N, 1) or (N, 1, h, w)) and
``reg`` (box regression); O-Net also emits ``landmarks``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OPSET = 17
NET_NAMES = ("pnet", "rnet", "onet")
PARITY_TOLERANCE = 1e-4


def prelu(layer: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` written as ``slope * x + (1 - slope) * relu(x)``: the same values, exported as
    plain ops.

    ONNX Runtime's PRelu kernel was the largest cost in P-Net (a broadcast loop, and a layout
    change before and after it), while its NCHWc optimiser turns these per-channel products into
    fused convolutions: P-Net runs ~30% faster.
    """
    slope = layer.weight.view((1, -1) + (1,) * (x.dim() - 2))
    return x * slope + torch.relu(x) * (1 - slope)


def face_probability(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``softmax(layer(x), dim=1)[:, 1:2]``, computed as the sigmoid of the logit difference.

    With two classes the two are equal; the difference of the two output rows is one layer with
    one output, which ONNX Runtime fuses with the sigmoid, where a channel softmax over P-Net's
    large maps costs a transpose and a separate pass.
    """
    weight = layer.weight[1:] - layer.weight[:1]
    bias = layer.bias[1:] - layer.bias[:1]
    apply = F.conv2d if isinstance(layer, nn.Conv2d) else F.linear
    return torch.sigmoid(apply(x, weight, bias))


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window per output cell at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(prelu(self.prelu1, self.conv1(x)))
        x = prelu(self.prelu2, self.conv2(x))
        x = prelu(self.prelu3, self.conv3(x))
        return face_probability(self.conv4_1, x), self.conv4_2(x)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """Flattens NCHW in (N, W, H, C) order: the dense layers were trained on Caffe's layout."""
    return torch.flatten(x.permute(0, 3, 2, 1), start_dim=1)


class RNet(nn.Module):
    """Refinement net: scores and regresses 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(prelu(self.prelu1, self.conv1(x)))
        x = self.pool2(prelu(self.prelu2, self.conv2(x)))
        x = prelu(self.prelu3, self.conv3(x))
        x = prelu(self.prelu4, self.dense4(_flatten_caffe(x)))
        return face_probability(self.dense5_1, x), self.dense5_2(x)


class ONet(nn.Module):
    """Output net: scores, regresses and places 5 landmarks on 48x48 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(prelu(self.prelu1, self.conv1(x)))
        x = self.pool2(prelu(self.prelu2, self.conv2(x)))
        x = self.pool3(prelu(self.prelu3, self.conv3(x)))
        x = prelu(self.prelu4, self.conv4(x))
        x = prelu(self.prelu5, self.dense5(_flatten_caffe(x)))
        return face_probability(self.dense6_1, x), self.dense6_2(x), self.dense6_3(x)


# name -> (module class, example input side, output names, whether H/W are dynamic)
_SPECS: dict[str, tuple[type[nn.Module], int, tuple[str, ...], bool]] = {
    "pnet": (PNet, 64, ("face_prob", "reg"), True),
    "rnet": (RNet, 24, ("face_prob", "reg"), False),
    "onet": (ONet, 48, ("face_prob", "reg", "landmarks"), False),
}


def load_net(name: str, pt_path: Path) -> nn.Module:
    """Builds net ``name`` and loads its facenet-pytorch state dict strictly (names and shapes)."""
    module_cls = _SPECS[name][0]
    net = module_cls()
    state = torch.load(pt_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def export_onnx(name: str, net: nn.Module, out_path: Path) -> None:
    """Exports with a dynamic batch axis (and dynamic H/W for the fully convolutional P-Net)."""
    _, side, output_names, spatial = _SPECS[name]
    if spatial:
        input_axes = {0: "batch", 2: "height", 3: "width"}
        output_axes = {0: "batch", 2: "out_height", 3: "out_width"}
    else:
        input_axes = output_axes = {0: "batch"}
    dynamic_axes = {"input": input_axes} | {out: output_axes for out in output_names}
    example = torch.zeros(2, 3, side, side)
    # The TorchScript exporter (dynamo=False) is deprecated but still shipped, and exports these
    # small static graphs directly; its deprecation notice is noise here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            str(out_path),
            input_names=["input"],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


def check_parity(name: str, net: nn.Module, onnx_path: Path, seed: int = 0) -> float:
    """Largest |torch - onnxruntime| over every output on a random batch; raises above tolerance.

    P-Net is checked at a size other than the export example, so the dynamic H/W axes are
    exercised too.
    """
    import onnxruntime as ort

    _, side, output_names, spatial = _SPECS[name]
    shape = (3, 3, 57, 83) if spatial else (3, 3, side, side)
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in net(torch.from_numpy(x))]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(list(output_names), {"input": x})
    diff = max(float(np.max(np.abs(e - a))) for e, a in zip(expected, actual, strict=False))
    if diff >= PARITY_TOLERANCE:
        raise RuntimeError(f"{onnx_path.name}: ONNX differs from torch by {diff:.2e} (limit {PARITY_TOLERANCE})")
    return diff


def convert_mtcnn(pt_dir: Path, out_dir: Path) -> None:
    """Writes ``{pnet,rnet,onet}.onnx`` into ``out_dir`` from the ``.pt`` files in ``pt_dir``.

    Each file is exported and checked under a temporary name, then renamed into place, so an
    interrupted conversion never leaves a file that looks complete.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in NET_NAMES:
        net = load_net(name, pt_dir / f"{name}.pt")
        final = out_dir / f"{name}.onnx"
        tmp = out_dir / f".{name}.onnx.{os.getpid()}.tmp"
        try:
            export_onnx(name, net, tmp)
            check_parity(name, net, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
