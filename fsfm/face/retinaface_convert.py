"""RetinaFace (ResNet-50) in PyTorch, and its conversion from published weights to ONNX.

The module tree mirrors biubug6/Pytorch_Retinaface and ternaus/retinaface (``retinaface-pytorch``)
key for key, so their state dicts load strictly. The backbone is torchvision's ResNet-50 (v1.5:
stride on the 3x3 conv) written out here, because torchvision is not a dependency.

The two weight files expect different input normalisation, so the choice is baked into the ONNX
graph: the exported model always takes RGB pixels in [0, 255] and returns box offsets (``loc``),
face/background probabilities (``conf``) and landmark offsets (``landms``) per prior.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CHANNELS = 256  # FPN / SSH width of the ResNet-50 configs of both repositories
ANCHORS_PER_CELL = 2
OPSET = 17

# ternaus trained with albumentations' Normalize on RGB (ImageNet mean/std of [0, 1] pixels);
# biubug6 trains and tests on cv2's BGR minus a per-channel mean, without scaling.
Normalization = Literal["ternaus", "biubug6"]
_NORMALIZATIONS: dict[str, tuple[bool, tuple[float, ...], tuple[float, ...]]] = {
    # name: (flip RGB to BGR, mean, std), in the 0..255 pixel scale
    "ternaus": (False, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "biubug6": (True, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0)),
}

# Prefixes the training wrappers add: DataParallel ("module.") and ternaus' Lightning module ("model.").
_WRAPPER_PREFIXES = ("module.", "model.")


class ConversionError(RuntimeError):
    """The weights do not fit the architecture, or the ONNX file disagrees with PyTorch."""


def _conv_bn(in_channels: int, out_channels: int, kernel: int, relu: bool, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN [+ ReLU], keys ``.0`` / ``.1`` as in the reference ``conv_bn*`` helpers.

    The reference uses LeakyReLU with slope 0.1 only for widths <= 64; at 256 channels it is a ReLU.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (1x1 -> 3x3 with stride -> 1x1, expansion 4)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = _conv_bn(in_channels, out_channels, 1, relu=False, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Body(nn.Module):
    """ResNet-50 without pooling/fc, returning layer2..layer4 (strides 8/16/32, 512/1024/2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(in_channels, width, stride if block == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    """Lateral 1x1 convs to 256 channels, nearest-upsampled top-down sum, 3x3 merge convs."""

    def __init__(self, in_channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], CHANNELS, 1, relu=True)
        self.output2 = _conv_bn(in_channels[1], CHANNELS, 1, relu=True)
        self.output3 = _conv_bn(in_channels[2], CHANNELS, 1, relu=True)
        self.merge1 = _conv_bn(CHANNELS, CHANNELS, 3, relu=True)
        self.merge2 = _conv_bn(CHANNELS, CHANNELS, 3, relu=True)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        p5 = self.output3(c5)
        p4 = self.merge2(self.output2(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest"))
        p3 = self.merge1(self.output1(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(CHANNELS, CHANNELS // 2, 3, relu=False)
        self.conv5X5_1 = _conv_bn(CHANNELS, CHANNELS // 4, 3, relu=True)
        self.conv5X5_2 = _conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=False)
        self.conv7X7_2 = _conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=True)
        self.conv7x7_3 = _conv_bn(CHANNELS // 4, CHANNELS // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5_1 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_1), branch7], dim=1))


class Head(nn.Module):
    """1x1 conv predicting ``values`` numbers per anchor, flattened to (N, H*W*anchors, values)."""

    def __init__(self, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(CHANNELS, ANCHORS_PER_CELL * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """RetinaFace-ResNet50; ``forward`` takes the normalised image and returns (loc, class logits, landms)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ResNet50Body()
        self.fpn = FPN((512, 1024, 2048))
        self.ssh1 = SSH()
        self.ssh2 = SSH()
        self.ssh3 = SSH()
        self.ClassHead = nn.ModuleList(Head(2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(*self.body(x))
        features = [ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), pyramid, strict=False)]

        def run(heads: nn.ModuleList) -> torch.Tensor:
            return torch.cat([head(feature) for head, feature in zip(heads, features, strict=False)], dim=1)

        return run(self.BboxHead), run(self.ClassHead), run(self.LandmarkHead)


class RetinaFaceForExport(nn.Module):
    """What the ONNX file computes: RGB [0, 255] NCHW in, (loc, softmaxed conf, landms) out."""

    def __init__(self, model: RetinaFace, normalization: Normalization) -> None:
        super().__init__()
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(_NORMALIZATIONS)}, got {normalization!r}")
        self.model = model
        self.to_bgr, mean, std = _NORMALIZATIONS[normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.to_bgr:
            image = image.flip(1)
        loc, logits, landms = self.model((image - self.mean) / self.std)
        return loc, F.softmax(logits, dim=-1), landms


def _read_weights_file(path: Path) -> object:
    """``torch.load`` a .pth, or the one weights file inside an ordinary zip (the ternaus release).

    A torch checkpoint is itself a zip, recognised by its ``data.pkl`` member.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
            if not any(name.endswith("data.pkl") for name in names):
                if len(names) != 1:
                    raise ConversionError(f"{path}: expected one weights file in the zip, found {names}")
                return torch.load(io.BytesIO(archive.read(names[0])), map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return _strip_wrapper_prefix({key[len(prefix) :]: value for key, value in state_dict.items()})
    return state_dict


def load_retinaface_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a RetinaFace-ResNet50 weights file, with keys as ``RetinaFace`` names them.

    Accepts a raw state dict (.pth), the ternaus release zip wrapping one, a checkpoint dict with a
    ``state_dict`` entry, and keys prefixed by ``module.`` (DataParallel) or ``model.`` (Lightning).
    """
    loaded = _read_weights_file(Path(path))
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    return _strip_wrapper_prefix(loaded)


def build_retinaface(weights: Path) -> RetinaFace:
    """A RetinaFace in eval mode with ``weights`` loaded strictly."""
    model = RetinaFace()
    try:
        model.load_state_dict(load_retinaface_state_dict(weights), strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"{weights} is not a RetinaFace-ResNet50 state dict: {exc}") from exc
    return model.eval()


def _export(model: nn.Module, sample: torch.Tensor, out_onnx: Path) -> None:
    outputs = ["loc", "conf", "landms"]
    dynamic_axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic_axes.update({name: {0: "batch", 1: "priors"} for name in outputs})
    torch.onnx.export(
        model,
        (sample,),
        str(out_onnx),
        input_names=["image"],
        output_names=outputs,
        dynamic_axes=dynamic_axes,
        opset_version=OPSET,
        dynamo=False,
    )


def verify_onnx(model: nn.Module, onnx_path: Path, sample: torch.Tensor, rtol: float = 1e-3) -> dict[str, float]:
    """Run ``sample`` through torch and ONNX Runtime; raise unless every output matches.

    Tolerance is relative to each output's largest magnitude, since random-weight and real models
    produce very different scales. Returns the relative error per output.
    """
    import onnxruntime as ort

    with torch.no_grad():
        expected = [t.numpy() for t in model(sample)]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"image": sample.numpy()})
    errors: dict[str, float] = {}
    for output, want, got in zip(session.get_outputs(), expected, actual, strict=False):
        if want.shape != got.shape:
            raise ConversionError(f"{output.name}: ONNX shape {got.shape} != torch shape {want.shape}")
        errors[output.name] = float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-6))
    off = {name: err for name, err in errors.items() if err > rtol}
    if off:
        raise ConversionError(f"{onnx_path}: ONNX disagrees with torch (relative error {off}, tolerance {rtol})")
    return errors


def convert_retinaface(
    weights: Path,
    out_onnx: Path,
    normalization: Normalization = "ternaus",
    verify_size: tuple[int, int] = (160, 160),
    rtol: float = 1e-3,
) -> Path:
    """Convert a RetinaFace-ResNet50 weights file to ONNX and check it against PyTorch.

    normalization: which training recipe the weights come from: ``"ternaus"`` for the
    ``retinaface-pytorch`` release (``retinaface_resnet50_2020-07-20*.zip``), ``"biubug6"`` for
    Pytorch_Retinaface's ``Resnet50_Final.pth``. The key layouts are identical, so the file
    cannot tell; a wrong choice gives a valid model that finds few faces.
    verify_size: (height, width) of the random image used for the parity check.
    """
    out_onnx = Path(out_onnx)
    model = RetinaFaceForExport(build_retinaface(Path(weights)), normalization).eval()
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand((1, 3, *verify_size), generator=generator) * 255
    with torch.no_grad():
        _export(model, sample, out_onnx)
    errors = verify_onnx(model, out_onnx, sample, rtol)
    log.info("converted %s -> %s (relative errors %s)", weights, out_onnx, errors)
    return out_onnx
