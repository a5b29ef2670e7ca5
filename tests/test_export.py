"""torch ViT -> `fsfm export` -> model package -> ONNX Runtime: the round trip and its guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.models.config import vit_preset
from fsfm.models.vit import ViTClassifier
from fsfm.package import Manifest, ModelRepository, PackageError
from fsfm.package.manifest import PackageInfo
from fsfm_cli import app
from tests.official_format import official_finetuned_state, save_official
from training.export import ExportError, write_package

TINY = vit_preset("fsfm_vit_tiny_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture()
def official_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    path = save_official(tmp_path / "ckpt" / "checkpoint-min_val_loss.pth", official_finetuned_state(TINY), epoch=7)
    (path.parent / "pretrain_ds_mean_std.txt").write_text(
        '{"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.2]}\n{"mean": [0, 0, 0], "std": [1, 1, 1]}\n'
    )
    return path


def export_df(checkpoint: Path, repo: Path, *flags: str):
    """``fsfm export`` of the 2-head test checkpoint as the deepfake package ``df`` in ``repo``."""
    args = ["export", "--checkpoint", str(checkpoint), "--name", "df", "--task", "deepfake", "--models", str(repo)]
    return CliRunner().invoke(app, [*args, "--num-heads", "2", *flags])


def test_cli_export_round_trip_matches_torch(tmp_path, official_checkpoint) -> None:
    repo = tmp_path / "models"
    result = export_df(official_checkpoint, repo)
    assert result.exit_code == 0, result.output
    package = ModelRepository(repo).get("df")
    manifest = package.manifest
    assert manifest.version == 1 and manifest.task == "deepfake"
    assert manifest.classes.names == ["fake", "real"] and manifest.classes.attack_index == 0
    assert manifest.normalization.mean == (0.5, 0.4, 0.3)  # first line of the mean/std file
    assert manifest.architecture.vit == TINY and manifest.crop.size == 64
    assert 0 < manifest.onnx.max_abs_diff <= manifest.onnx.tolerance
    assert manifest.provenance.checkpoint == "checkpoint-min_val_loss.pth"

    reference = ViTClassifier(TINY).eval()
    reference.load_state_dict(official_finetuned_state(TINY))
    engine = OnnxRuntimeEngine(package.onnx_path)
    rng = np.random.default_rng(3)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = engine.run(x)["logits"]
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(expected) > 0.1  # the check compares outputs that actually vary


def test_export_refuses_an_existing_version_and_bad_tolerance(tmp_path) -> None:
    torch.manual_seed(0)
    model = ViTClassifier(TINY)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    info = PackageInfo(name="m", version=2, task="liveness")
    package = write_package(model, info, tmp_path)
    assert package.manifest.classes.names == ["spoof", "live"]
    with pytest.raises(ExportError, match="exists"):
        write_package(model, info, tmp_path)
    with pytest.raises(ExportError, match="tolerance"):
        write_package(model, info.model_copy(update={"version": 3}), tmp_path, tolerance=1e-12)
    assert not (tmp_path / "m" / "3").exists()  # nothing half-written


def test_repository_versions_and_broken_packages(tmp_path) -> None:
    torch.manual_seed(0)
    model = ViTClassifier(TINY)
    for version in (1, 2):
        write_package(model, PackageInfo(name="df", version=version, task="deepfake"), tmp_path)
    broken = tmp_path / "bad" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    repo = ModelRepository(tmp_path)
    assert repo.get("df").manifest.version == 2
    assert repo.get("df:1").manifest.version == 1
    assert repo.default_for_task("deepfake").manifest.ref == "df:2"
    assert str(broken) in repo.errors
    with pytest.raises(PackageError, match="no version 9"):
        repo.get("df:9")
    with pytest.raises(PackageError, match="no liveness model"):
        repo.default_for_task("liveness")
    manifest = Manifest.load(tmp_path / "df" / "2")
    assert json.loads((tmp_path / "df" / "2" / "manifest.json").read_text())["onnx"]["sha256"] == manifest.onnx.sha256


def test_official_checkpoints_get_the_dlib_box_mapping(tmp_path, official_checkpoint) -> None:
    from fsfm.face.crop import DLIB_BOX_TRANSFORM
    from training.export import export_checkpoint

    package = export_checkpoint(
        official_checkpoint, tmp_path / "models", name="off", version=1, task="deepfake", num_heads=2
    )
    assert package.manifest.crop.box_transform == DLIB_BOX_TRANSFORM
    assert package.manifest.crop.scale == 1.3


def test_cli_export_with_torch_weights_and_tensorrt_unavailable(tmp_path, official_checkpoint) -> None:
    repo = tmp_path / "models"
    result = export_df(official_checkpoint, repo, "--with-torch")
    assert result.exit_code == 0, result.output
    assert (repo / "df" / "1" / "model.pt").is_file()
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; the GPU tests in test_engines.py cover building plans")
    except ImportError:
        pass
    result = export_df(official_checkpoint, repo, "--version", "2", "--tensorrt")
    assert result.exit_code == 2
    assert "TensorRT is not installed" in result.stderr and "Traceback" not in result.output
