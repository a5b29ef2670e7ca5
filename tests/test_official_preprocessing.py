"""The official test-time preprocessing end to end: our crop tensor against an independent reference of each
official chain on a real photo, and the package recording (and evaluation applying) the chain it was
exported with.

The reference follows the official code's steps (wolo-wolo/FSFM-CVPR25): FF++'s ``get_boundingbox`` (a dlib
box enlarged 1.3x around its integer centre, clipped at the image) -> the crop -> torchvision's ``Resize((224,
224), BICUBIC)`` on a PIL image [-> ``Resize(256, BICUBIC)`` -> ``CenterCrop(224)``, the README's
``--apply_simple_augment``] -> ``ToTensor`` -> ``Normalize``; written here with PIL and numpy alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from fsfm.face.crop import CropSpec, Normalization, center_crop_side, crop_face, normalize
from fsfm.face.mtcnn import MtcnnDetector
from fsfm.models.config import vit_preset
from fsfm.package.repository import load_package
from tests.official_format import official_finetuned_state, save_official
from training.evaluate import PackageScorer
from training.finetune_commands import export

NORM = Normalization()  # the VGGFace2 statistics of the official pretraining
TINY = vit_preset("fsfm_vit_tiny_patch16", img_size=64, embed_dim=64, depth=2, num_heads=2)


def official_box(box: tuple[int, int, int, int], width: int, height: int, scale: float = 1.3) -> tuple[int, int, int]:
    """FF++'s ``get_boundingbox``: (left, top, side) of the enlarged square."""
    x1, y1, x2, y2 = box
    side = int(max(x2 - x1, y2 - y1) * scale)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left, top = max(int(cx - side // 2), 0), max(int(cy - side // 2), 0)
    side = min(width - left, side, height - top)
    return left, top, side


def reference_tensor(image: np.ndarray, box: tuple[int, int, int, int], size: int, readme: bool) -> np.ndarray:
    left, top, side = official_box(box, image.shape[1], image.shape[0])
    face = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size), Image.Resampling.BICUBIC)
    if readme:
        resize_to = int(size / (224 / 256))
        face = face.resize((resize_to, resize_to), Image.Resampling.BICUBIC)  # Resize(256) of a square
        offset = int(round((resize_to - size) / 2.0))  # torchvision CenterCrop
        face = face.crop((offset, offset, offset + size, offset + size))
    pixels = np.asarray(face, dtype=np.float64) / 255.0
    return ((pixels - np.asarray(NORM.mean)) / np.asarray(NORM.std)).transpose(2, 0, 1)


def test_our_crops_match_each_official_chain_on_a_real_photo(mtcnn_dir: Path, astronaut_rgb: np.ndarray) -> None:
    (face,) = MtcnnDetector(mtcnn_dir).detect(astronaut_rgb)
    # dlib boxes are integers. The official centre is rounded down and the square's corner then by side // 2;
    # ours rounds the corner of the float square: the two agree unless a centre is whole and the side odd (then
    # ours sits a pixel up/left). A box of the detector's, rounded to one where they agree:
    x1, y1, x2, y2 = (round(float(v)) for v in face.box)
    if (x1 + x2) % 2 == 0:
        x2 += 1
    if (y1 + y2) % 2 == 0:
        y2 += 1
    box = (x1, y1, x2, y2)
    assert box[2] - box[0] > 60  # the astronaut's face, ~90 px
    for readme in (False, True):
        spec = CropSpec(size=224, scale=1.3, center_crop_from=center_crop_side(224) if readme else None)
        ours = normalize(crop_face(astronaut_rgb, np.array(box, dtype=np.float32), spec), NORM)
        reference = reference_tensor(astronaut_rgb, box, 224, readme)
        assert ours.shape == reference.shape == (3, 224, 224)
        assert np.abs(ours - reference).max() <= 1 / 255, readme
    assert center_crop_side(224) == 256 and center_crop_side(384) == 384  # official crop_pct: 1.0 above 224


@pytest.mark.parametrize("transform", [None, "center_crop"])
def test_export_of_an_official_checkpoint_records_its_test_transform(tmp_path: Path, transform: str | None) -> None:
    checkpoint = save_official(tmp_path / "checkpoint-min_val_loss.pth", official_finetuned_state(TINY))
    args = ["--checkpoint", str(checkpoint), "--name", "official", "--task", "deepfake", "--num-heads", "2"]
    args += ["--models", str(tmp_path / "models")] + (["--test-transform", transform] if transform else [])
    app = typer.Typer()
    app.command()(export)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    package = load_package(tmp_path / "models" / "official" / "1")
    crop, notes = package.manifest.crop, package.manifest.provenance.notes or ""
    if transform is None:  # the paper's numbers came from the plain resize
        assert crop.center_crop_from is None and "paper's test log" in notes
        assert PackageScorer(package).mode == "resize"
    else:
        assert crop.center_crop_from == center_crop_side(64) == 73 and "README" in notes
        assert PackageScorer(package).mode == "center_crop"  # evaluation applies what the package says
