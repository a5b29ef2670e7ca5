"""``fsfm pull`` through the real ``huggingface_hub`` client against a loopback server (``tests/hf_server.py``,
via ``HF_ENDPOINT``) that serves the official repository's layout with checkpoints in the official formats
written here (tiny ViTs): the licence gate, verification, one servable package per fine-tuned model with the
official preprocessing, class semantics and FAS threshold, and the FLIP-style FAS head computed as the official
code computes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.crop import IMAGENET_MEAN, Normalization, normalize
from fsfm.models.checkpoints import file_sha256, load_checkpoint
from fsfm.models.config import vit_preset
from fsfm.models.vit import ViTEncoder
from fsfm.package.repository import ModelRepository
from tests.hf_server import hub_server
from tests.official_format import (
    official_fas_checkpoint,
    official_finetuned_state,
    official_pretrain_state,
    save_official,
)
from training.evaluate import PackageScorer
from training.finetune_commands import pull
from training.pull import OFFICIAL, REPO_ID, PullError
from training.pull import pull as run_pull

TINY = vit_preset("fsfm_vit_tiny_patch16", img_size=64, embed_dim=64, depth=2, num_heads=1)  # 64-wide heads
VF2_STATS = Normalization(mean=(0.55, 0.42, 0.37), std=(0.28, 0.24, 0.23))
FAS_DOMAINS = ("msu", "casia", "replay", "oulu")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``Wolowolo/fsfm-3c`` as laid out on the Hub, every checkpoint in its official format."""
    root = tmp_path_factory.mktemp("fsfm-3c")
    vf2 = root / "pretrained_models" / "VF2_ViT-B"
    vf2.mkdir(parents=True)
    save_official(vf2 / "checkpoint-400.pth", official_pretrain_state(TINY))
    (vf2 / "pretrain_ds_mean_std.txt").write_text(VF2_STATS.to_mean_std_line() + "\n")
    dfd = root / "finetuned_models" / "FF++_c23_32frames"
    (dfd / "experiments_test").mkdir(parents=True)
    save_official(dfd / "checkpoint-min_val_loss.pth", official_finetuned_state(TINY, seed=1), epoch=7)
    (dfd / "experiments_test" / "test_results.txt").write_text("CDF-v2 AUC ...\n")
    diff = root / "finetuned_models" / "FF++_DF_c23_32frames"
    (diff / "correct_version").mkdir(parents=True)
    save_official(diff / "checkpoint-min_val_loss.pth", official_finetuned_state(TINY, seed=2))  # class order bug
    save_official(diff / "correct_version" / "checkpoint-min_val_loss.pth", official_finetuned_state(TINY, seed=3))
    for i, domain in enumerate(FAS_DOMAINS):
        folder = root / "finetuned_models" / "MCIO_protocol" / f"{domain}_0shot"
        folder.mkdir(parents=True)
        official_fas_checkpoint(folder / f"{domain}_vit_0_shot_checkpoint_run_0.pth.tar", TINY, 0.4 + i / 100, seed=i)
    return root


@pytest.fixture
def hub(repository: Path, monkeypatch: pytest.MonkeyPatch):
    with hub_server(repository, REPO_ID) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(pull)
    app.command("noop")(lambda: None)
    return app


def test_nothing_is_downloaded_without_accepting_the_licence(hub, tmp_path: Path) -> None:
    args = ["pull", "dfd", "--models", str(tmp_path / "models"), "--download-dir", str(tmp_path / "dl")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code != 0
    assert "CC BY-NC 4.0" in result.output and "--accept-licence" in result.output
    assert not (tmp_path / "dl").exists() and not (tmp_path / "models").exists()
    with pytest.raises(PullError, match="non-commercial"):
        run_pull(["dfd"], tmp_path / "models", tmp_path / "dl", accept_licence=False)


def test_pull_verifies_and_exports_a_servable_package_per_task(hub, repository: Path, tmp_path: Path) -> None:
    models, downloads = tmp_path / "models", tmp_path / "dl"
    args = ["pull", "--accept-licence", "--models", str(models), "--download-dir", str(downloads)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    pretrained = downloads / "pretrained_models" / "VF2_ViT-B" / "checkpoint-400.pth"
    assert f"--pretrained {pretrained}" in result.output and pretrained.is_file()  # an encoder: no package

    packages = {p.manifest.name: p for p in ModelRepository(models).packages}
    assert set(packages) == {"fsfm-dfd", "fsfm-diff", *(f"fsfm-fas-{d}" for d in FAS_DOMAINS)}
    face = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for name, package in packages.items():
        manifest = package.manifest
        assert manifest.licence.startswith("CC-BY-NC-4.0") and manifest.crop.center_crop_from is None
        scores = PackageScorer(package)(face)  # ONNX Runtime, as served
        assert scores.shape == (3,) and np.isfinite(scores).all(), name
    dfd, diff, fas = packages["fsfm-dfd"].manifest, packages["fsfm-diff"].manifest, packages["fsfm-fas-msu"].manifest
    assert (dfd.task, dfd.classes.names, dfd.classes.attack_index) == ("deepfake", ["fake", "real"], 0)
    assert dfd.normalization == VF2_STATS and diff.normalization.mean == IMAGENET_MEAN  # DiFF: --normalize_from_IMN
    correct = (
        repository / "finetuned_models" / "FF++_DF_c23_32frames" / "correct_version" / "checkpoint-min_val_loss.pth"
    )
    assert diff.provenance.checkpoint_sha256 == file_sha256(correct)  # the class-order-fixed DiFF model
    assert (fas.task, fas.classes.names, fas.architecture.head) == ("liveness", ["spoof", "live"], "flip")
    assert fas.thresholds.default == pytest.approx(1 - 0.4) and "optimistic" in (fas.provenance.notes or "")

    again = CliRunner().invoke(_cli(), [*args[:1], "dfd", *args[1:]])
    assert again.exit_code == 0 and "fsfm-dfd:1 already in the repository" in again.output

    hub.tamper["finetuned_models/FF++_c23_32frames/checkpoint-min_val_loss.pth"] = b"x" * dfd_size(repository)
    with pytest.raises(PullError, match="SHA-256"):
        run_pull(["dfd"], models, tmp_path / "dl2", accept_licence=True, progress=False)


def dfd_size(repository: Path) -> int:
    return (repository / "finetuned_models" / "FF++_c23_32frames" / "checkpoint-min_val_loss.pth").stat().st_size


def official_fas_logits(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The official FAS forward (``fas_model_fix`` with ``norm_flag``), on the raw ``state_dict``."""
    vit = {k.removeprefix("backbone.vit."): v for k, v in state.items() if k.startswith("backbone.vit.")}
    encoder = ViTEncoder(TINY, learnable_pos_embed=True)
    encoder.load_state_dict({k: v for k, v in vit.items() if not k.startswith("fc_norm.")})
    with torch.no_grad():
        x = encoder(images)  # blocks' output, no final norm
        x_gp = torch.nn.functional.layer_norm(
            x[:, 1:, :].mean(dim=1), (TINY.embed_dim,), vit["fc_norm.weight"], vit["fc_norm.bias"], eps=1e-6
        )
        x_new = x.clone()
        x_new[:, 0, :] = x_gp
        feature = torch.relu(
            x_new @ state["embedder.bottleneck_layer_fc.weight"].T + state["embedder.bottleneck_layer_fc.bias"]
        )
        feature = feature / (torch.norm(feature, p=2, dim=1, keepdim=True).clamp(min=1e-12) ** 0.5 * 2**0.5)
        weight = state["classifier.classifier_layer.weight"]
        weight = weight / torch.norm(weight, 2, 0, True)
        out = feature @ weight.T + state["classifier.classifier_layer.bias"]
    return out[:, 0]


def test_a_flip_style_fas_checkpoint_exports_and_serves_its_official_outputs(
    hub, repository: Path, tmp_path: Path
) -> None:
    (result,) = run_pull(["fas-m"], tmp_path / "models", tmp_path / "dl", accept_licence=True, progress=False)
    state = load_checkpoint(result.checkpoint)["state_dict"]
    faces = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    x = normalize(faces, result.package.manifest.normalization)
    expected = official_fas_logits(state, torch.from_numpy(x)).numpy()
    served = OnnxRuntimeEngine(result.package.onnx_path).run(x)["logits"]
    np.testing.assert_allclose(served, expected, atol=1e-4)
    live = torch.softmax(torch.from_numpy(expected), dim=-1)[:, 1].numpy()  # the official score
    np.testing.assert_allclose(PackageScorer(result.package)(faces), 1 - live, atol=1e-5)  # ours: the attack score
    assert OFFICIAL["fas-m"].package == "fsfm-fas-msu"
