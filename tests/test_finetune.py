"""Fine-tuning, evaluation, calibration and export on data the tests make.

The real faces are scikit-image's astronaut, turned, scaled, moved, flipped and recoloured
(``training.demo.astronaut_variant``), found and cropped by the real pipeline (``fsfm prepare``: MTCNN,
1.3x crop, 64 px); the fakes are self-blended images of them. A tiny ViT fine-tuned from an
official-format pretraining checkpoint must separate held-out faces (other augmentations) from their
self-blends far above chance.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from fsfm.cli import TaskName
from fsfm.face.crop import IMAGENET_MEAN, IMAGENET_STD, Normalization
from fsfm.models.checkpoints import classifier_from_state, load_checkpoint
from fsfm.models.config import vit_preset
from fsfm.models.vit import ViTClassifier, ViTEncoder
from fsfm.package.manifest import TASKS, Manifest
from fsfm.package.repository import load_package
from tests.official_format import official_finetuned_state, official_pretrain_state, save_official
from tests.packages import TINY_VIT
from training.augment import RAND_AUGMENT_OPS, TrainTransform, eval_pixels, fill_colour
from training.calibrate import chance_verdict
from training.demo import DEMO_ENCODER, build_demo_model, prepare_astronaut_faces
from training.evaluate import PackageScorer, checkpoint_scorer, score_source
from training.export import ExportError, export_checkpoint
from training.finetune import ChanceLevelError, Finetuner, FinetuneResult, initial_model
from training.finetune_commands import Task, calibrate, evaluate, export, finetune, quantize
from training.finetune_config import DataSpec, FinetuneConfig
from training.finetune_data import (
    DataError,
    DataWarning,
    PreparedFaces,
    SelfBlendedSource,
    TrainBatchSampler,
    celebdf_videos,
    dfdc_videos,
    dfdcp_videos,
    ffpp_videos,
    open_source,
)
from training.finetune_engine import Mixup, soft_target_ce
from training.metrics import roc_auc
from training.param_groups import layer_decay_groups
from training.recipe import RecipeWarning

SIZE = 64
SBI_VIT = vit_preset("fsfm_vit_tiny_patch16", img_size=SIZE, embed_dim=64, depth=2, num_heads=2)
MIN_HELD_OUT_AUC = 0.75  # chance is 0.5 with std ~0.04 on 48 + 48 faces; the run reaches ~0.83


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory, mtcnn_dir: Path) -> dict[str, Path]:
    """Prepared real faces: 192 for training, 48 held out (other augmentation seeds)."""
    root = tmp_path_factory.mktemp("astronaut_faces")
    faces = {
        "train": prepare_astronaut_faces(root / "train", range(192), SIZE),
        "heldout": prepare_astronaut_faces(root / "heldout", range(1000, 1048), SIZE),
    }
    assert [len(PreparedFaces(path, name, label=0)) for name, path in faces.items()] == [
        192,
        48,
    ]  # a face found in every image
    return faces


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread of two busy cores, and reproducibly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sbi_run(faces: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sbi_run")
    pretrained = save_official(root / "checkpoint-400.pth", official_pretrain_state(SBI_VIT))
    config = _run_config(
        pretrained,
        faces,
        root / "finetune",
        epochs=8,
        iters_per_epoch=75,
        warmup_epochs=1,
        batch_size=32,
        effective_batch=32,
        seed=0,
    )
    try:
        return Finetuner(config, progress=False).run()
    finally:
        torch.set_num_threads(threads)


def _heldout(faces: dict[str, Path]) -> SelfBlendedSource:
    """The held-out real faces and one fixed self-blend of each."""
    return SelfBlendedSource(PreparedFaces(faces["heldout"], "heldout", label=0), seed=123)


def test_sbi_finetuning_separates_held_out_faces_from_their_self_blends(
    sbi_run: FinetuneResult, faces: dict[str, Path]
) -> None:
    heldout = _heldout(faces)
    labels = np.array([item.label for item in heldout.items])
    scores = score_source(checkpoint_scorer(sbi_run.best_checkpoint, "deepfake"), heldout)
    assert len(labels) == 96 and labels.sum() == 48
    assert roc_auc(labels, scores) >= MIN_HELD_OUT_AUC
    assert sbi_run.val_metrics["val_auc"] >= 0.7  # the validation set: self-blends of held-out training videos


def test_checkpoint_is_official_layout_with_what_export_needs(sbi_run: FinetuneResult) -> None:
    checkpoint = load_checkpoint(sbi_run.best_checkpoint)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= checkpoint.keys()
    assert isinstance(checkpoint["args"], argparse.Namespace) and checkpoint["args"].task == "deepfake"
    keys = set(checkpoint["model"])
    assert {"cls_token", "pos_embed", "fc_norm.weight", "head.weight"} <= keys and not any(
        k.startswith("norm.") for k in keys
    )
    assert all(k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks.", "fc_norm.", "head.")) for k in keys)
    meta = checkpoint["fsfm"]
    assert meta["vit"]["img_size"] == SIZE and meta["classes"]["names"] == ["fake", "real"]
    assert [p["name"] for p in meta["thresholds"]["operating_points"]] == ["eer"]  # 38 real faces resolve no 1 %
    assert [u["target_fpr"] for u in meta["thresholds"]["unresolved"]] == [0.01, 0.001]
    assert meta["crop"]["scale"] == 1.3 and meta["crop"]["size"] == SIZE
    assert "self-blended" in meta["data"]
    log = [json.loads(line) for line in (sbi_run.best_checkpoint.parent / "log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and checkpoint["epoch"] == min(range(8), key=lambda e: log[e]["val_loss"])
    assert FinetuneConfig.load(sbi_run.best_checkpoint.parent / "config.json").sbi


def _cli(*commands: object) -> typer.Typer:
    app = typer.Typer()
    for command in commands:
        app.command()(command)
    return app


def test_export_evaluate_and_calibrate_the_finetuned_model(
    sbi_run: FinetuneResult, faces: dict[str, Path], tmp_path: Path
) -> None:
    package = export_checkpoint(
        sbi_run.best_checkpoint, tmp_path / "models", name="sbi-tiny", version=1, task="deepfake", demo=True
    )
    manifest = package.manifest
    meta = load_checkpoint(sbi_run.best_checkpoint)["fsfm"]
    assert manifest.thresholds.model_dump(mode="json") == meta["thresholds"] and manifest.demo
    assert manifest.provenance.metrics["val_auc"] == pytest.approx(sbi_run.val_metrics["val_auc"])
    assert manifest.onnx.max_abs_diff < 1e-4

    heldout = _heldout(faces)
    torch_scores = score_source(checkpoint_scorer(sbi_run.best_checkpoint, "deepfake"), heldout)
    onnx_scores = score_source(PackageScorer(package), heldout)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)

    # The held-out set on disk, twice: a folder of real/ and fake/ faces, and a CSV of half of it.
    folder = tmp_path / "heldout"
    rows = []
    for index, item in enumerate(heldout.items):
        kind = "fake" if item.label else "real"
        path = folder / kind / f"{item.video.replace('/', '_').replace('#', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(heldout.image(index)).save(path)
        rows.append([path.relative_to(folder).as_posix(), kind])
    with open(folder / "half.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *rows[::2]])

    runner = CliRunner()
    out = tmp_path / "evaluation"
    result = runner.invoke(
        _cli(evaluate, calibrate),
        [
            "evaluate",
            "--model",
            str(package.path),
            "--test",
            f"folder:{folder},name=heldout",
            "--test",
            f"csv:{folder / 'half.csv'}",
            "--output-dir",
            str(out),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["sets"]) == {"heldout", "half.csv"} and report["threshold_source"] == "default"
    frame = report["sets"]["heldout"]["frame"]
    assert frame["samples"] == 96 and frame["auc"] == pytest.approx(
        roc_auc(np.array([i.label for i in heldout.items]), onnx_scores), abs=1e-6
    )
    assert {"eer", "ap", "hter", "apcer", "bpcer", "accuracy", "tpr_at_fpr_1pct"} <= frame.keys()
    assert frame["tpr_at_fpr_1pct"] is None  # 48 real faces cannot resolve 1 %: reported as such
    (point,) = report["sets"]["heldout"]["fpr_points"]
    assert (point["resolvable"], point["genuine"], point["needed"]) == (False, 48, 1000)
    assert "TPR at 1% FPR: not resolvable (48 genuine faces, 1000 needed)" in result.output
    assert all((out / name).is_file() for name in ("roc.png", "roc-heldout.png", "roc-half.csv.png"))

    result = runner.invoke(
        _cli(evaluate, calibrate),
        [
            "calibrate",
            "--model",
            str(package.path),
            "--val",
            f"folder:{folder}",
            "--workers",
            "0",
            "--target-fpr",
            "0.25",
            "--target-fpr",
            "0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    calibrated = Manifest.load(package.path)
    assert calibrated.provenance.metrics["calibration_samples"] == 96
    point = calibrated.thresholds.for_target_fpr(0.25)  # 48 real faces resolve 25 % (40 needed), not 1 %
    assert point.fpr <= 0.25 and point.genuine == 48 and point.fpr_interval[1] > point.fpr
    assert "fpr_1pct     not resolvable: 48 genuine faces, 1000 needed" in result.output
    assert [u.target_fpr for u in calibrated.thresholds.unresolved] == [0.01]

    # The int8 variant of a trained model, judged on the same held-out faces.
    result = runner.invoke(
        _cli(quantize, calibrate),
        ["quantize", "--model", str(package.path), "--heldout", f"folder:{folder},name=heldout", "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    (check,) = Manifest.load(package.path).variant("int8").heldout
    assert check.set == "heldout" and check.faces == 96 and check.auc_fp32 == pytest.approx(frame["auc"], abs=1e-6)
    assert abs(check.auc_variant - check.auc_fp32) < 0.05 and check.label_agreement >= 0.9


def test_official_checkpoints_load_into_finetuning_and_export(
    faces: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    # Pretrained (online network, all decoder/projector keys): the encoder carries over unchanged.
    state = official_pretrain_state(TINY_VIT)
    pretrained = save_official(tmp_path / "checkpoint-400.pth", state)
    config = FinetuneConfig(
        task="deepfake",
        pretrained=pretrained,
        output_dir=tmp_path / "unused",
        train=[DataSpec(path=tmp_path)],
        input_size=64,
        num_heads=2,
    )
    model, _ = initial_model(config)
    reference = ViTEncoder(TINY_VIT)
    reference.load_state_dict(
        {k: v for k, v in state.items() if k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks."))}
    )
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ViTEncoder.forward(model.eval(), x), reference.eval()(x))
    bigger, _ = initial_model(config.model_copy(update={"input_size": 96}))
    assert bigger.pos_embed.shape == (1, 37, TINY_VIT.embed_dim)  # 6 x 6 patches + cls, interpolated

    # Fine-tuned (official DfD layout, no metadata): same logits in fine-tuning, torch scoring and ONNX.
    finetuned_state = official_finetuned_state(TINY_VIT, seed=3)
    finetuned = save_official(tmp_path / "checkpoint-min_val_loss.pth", finetuned_state, epoch=7)
    expected = classifier_from_state(finetuned_state, TINY_VIT)
    continued, _ = initial_model(config.model_copy(update={"pretrained": finetuned, "drop_path": 0.0}))
    with torch.no_grad():
        torch.testing.assert_close(continued.eval()(x), expected(x))
    heldout = PreparedFaces(faces["heldout"], "heldout", label=0)
    torch_scores = score_source(checkpoint_scorer(finetuned, "deepfake", num_heads=2), heldout)
    package = export_checkpoint(
        finetuned, tmp_path / "models", name="official", version=1, task="deepfake", num_heads=2
    )
    np.testing.assert_allclose(score_source(PackageScorer(package), heldout), torch_scores, atol=1e-4)
    assert load_package(package.path).manifest.crop.box_transform.sh != 1.0  # official weights: dlib boxes

    # ... and continue training from it through the command line (one short epoch).
    result = CliRunner().invoke(
        _cli(finetune),
        [
            "--task",
            "deepfake",
            "--pretrained",
            str(finetuned),
            "--train",
            f"prepared:{faces['train']},label=real",
            "--sbi",
            "--output-dir",
            str(tmp_path / "continued"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--input-size",
            "64",
            "--num-heads",
            "2",
            "--num-workers",
            "0",
            "--val-fraction",
            "0.1",
            "--force",  # one short epoch from a random head: its validation AUC may well be at chance
        ],
    )
    assert result.exit_code == 0, result.output
    continued_checkpoint = load_checkpoint(tmp_path / "continued" / "checkpoint-min_val_loss.pth")
    assert continued_checkpoint["fsfm"]["licence"].startswith("CC-BY-NC-4.0")  # official weights' licence carries over


def test_layer_decay_groups_and_the_schedule() -> None:
    model = ViTClassifier(TINY_VIT)  # depth 2: layers 0 (embeddings), 1, 2 (blocks), 3 (fc_norm, head)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["cls_token"]["lr_scale"] == by_name["patch_embed.proj.weight"]["lr_scale"] == 0.125
    assert (
        by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == 0.25
        and by_name["blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5
    )
    assert by_name["head.weight"]["lr_scale"] == by_name["fc_norm.bias"]["lr_scale"] == 1.0
    assert (
        by_name["pos_embed"]["weight_decay"]
        == by_name["cls_token"]["weight_decay"]
        == by_name["blocks.0.norm1.weight"]["weight_decay"]
        == 0.0
    )
    assert by_name["blocks.0.attn.qkv.weight"]["weight_decay"] == by_name["head.weight"]["weight_decay"] == 0.05
    assert len(by_name) == len(list(model.parameters()))

    config = FinetuneConfig(
        task="deepfake", pretrained=Path("x.pth"), output_dir=Path("out"), train=[DataSpec(path=Path("d"))]
    )
    peak = config.peak_lr(world_size=2)
    lr_at = config.lr_schedule(peak).lr_at
    assert peak == pytest.approx(2.5e-4 * 64 / 256)  # the paper: 2 GPUs x 32, blr 2.5e-4 -> 6.25e-5
    assert lr_at(0.0) == 0.0 and lr_at(2.5) == pytest.approx(peak / 2)
    assert lr_at(5.0) == pytest.approx(peak) and lr_at(10.0) == pytest.approx(config.min_lr)
    assert lr_at(7.5) == pytest.approx((peak + config.min_lr) / 2)


def test_task_choices_come_from_the_manifest_tasks() -> None:
    assert [t.value for t in Task] == [t.value for t in TaskName] == list(TASKS)
    assert inspect.signature(export).parameters["task"].annotation in (Task, "Task")


def test_mixup_cutmix_and_the_soft_target_loss() -> None:
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    classes = torch.tensor([0, 1, 1, 0])
    smooth = Mixup(0.0, 0.0, 1.0, 0.5, smoothing=0.1, num_classes=2)
    same, targets = smooth(images, classes, np.random.default_rng(0))
    assert same is images and torch.allclose(targets[0], torch.tensor([0.95, 0.05]))
    mixup = Mixup(0.8, 0.0, 1.0, 0.5, smoothing=0.0, num_classes=2)
    mixed, targets = mixup(images, classes, np.random.default_rng(1))
    lam = float(mixed[0, 0, 0, 0] - 3.0) / (0.0 - 3.0)  # sample 0 mixed with sample 3
    assert torch.allclose(targets.sum(1), torch.ones(4)) and targets[1, 1] == pytest.approx(
        1.0
    )  # 1 and 2 share a class
    assert targets[0, 0] == pytest.approx(1.0) and 0 < lam < 1
    cutmix = Mixup(0.0, 1.0, 1.0, 0.5, smoothing=0.0, num_classes=2)
    cut, targets = cutmix(images, torch.tensor([0, 0, 1, 1]), np.random.default_rng(2))
    pasted = float((cut[0] == 3.0).float().mean())  # the share of sample 0 now showing sample 3
    assert targets[0, 1] == pytest.approx(pasted)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert soft_target_ce(logits, hard) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item()
    )
    weighted = soft_target_ce(logits, hard, torch.tensor([3.0, 1.0]))
    reference = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), weight=torch.tensor([3.0, 1.0]))
    assert weighted == pytest.approx(reference.item())


def test_recipes_and_data_specs() -> None:
    base = {"pretrained": Path("x.pth"), "output_dir": Path("out"), "train": [DataSpec(path=Path("d"))]}
    dfd = FinetuneConfig(task="deepfake", **base)
    assert (dfd.epochs, dfd.warmup_epochs, dfd.batch_size, dfd.blr, dfd.layer_decay, dfd.weight_decay) == (
        10,
        5,
        32,
        2.5e-4,
        0.65,
        0.05,
    )
    assert (dfd.drop_path, dfd.mixup, dfd.cutmix, dfd.smoothing, dfd.reprob, dfd.selection) == (
        0.1,
        0.8,
        1.0,
        0.1,
        0.25,
        "loss",
    )
    diff = FinetuneConfig(task="diffusion", **base)
    assert (diff.batch_size, diff.blr, diff.epochs, diff.normalization) == (256, 5e-4, 50, "imagenet")
    fas = FinetuneConfig(task="liveness", **base)
    assert (fas.optimizer, fas.lr, fas.weight_decay, fas.schedule, fas.layer_decay, fas.balance) == (
        "adam",
        1e-4,
        1e-6,
        "constant",
        1.0,
        "domain",
    )
    assert fas.epochs * fas.iters_per_epoch == 4000 and fas.classes.names == ["spoof", "live"]
    sbi = FinetuneConfig(task="deepfake", sbi=True, mixup=0.2, **base)
    assert (sbi.mixup, sbi.cutmix, sbi.augment, sbi.balance) == (
        0.2,
        0.0,
        "sbi",
        "none",
    )  # given values win over the recipe
    with pytest.raises(ValueError, match="deepfake"):
        FinetuneConfig(task="liveness", sbi=True, **base)

    spec = DataSpec.parse("mcio:/data/MCIO,domain=msu,split=test")
    assert (spec.format, spec.path, spec.split, spec.options, spec.label) == (
        "mcio",
        Path("/data/MCIO"),
        "test",
        {"domain": "msu"},
        "mcio-msu-test",
    )
    assert DataSpec.parse("/data/faces").format == "auto" and DataSpec.parse("C:/x").path == Path("C:/x")
    with pytest.raises(ValueError, match="key=value"):
        DataSpec.parse("folder:/x,oops")


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_benchmark_layout_readers(tmp_path: Path) -> None:
    # FF++: official split pairs; fakes are <a>_<b> and <b>_<a>; a method folder in another case.
    ff = tmp_path / "FF++"
    (ff / "splits").mkdir(parents=True)
    (ff / "splits" / "train.json").write_text(json.dumps([["000", "003"], ["010", "005"]]))
    for vid in ("000", "003", "010", "005"):
        _touch(ff / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    for method in ("DeepFakes", "Face2Face"):
        for a, b in (("000", "003"), ("003", "000"), ("010", "005"), ("005", "010")):
            _touch(ff / "manipulated_sequences" / method / "c23/videos" / f"{a}_{b}.mp4")
    (ff / "manipulated_sequences/Face2Face/c23/videos/005_010.mp4").unlink()  # a missing download
    videos = ffpp_videos(ff, "train", ["Deepfakes", "Face2Face"])
    assert sum(v.label == 0 for v in videos) == 4 and sum(v.label for v in videos) == 7
    assert {v.video for v in videos if v.label == 0} == {"youtube/000", "youtube/003", "youtube/010", "youtube/005"}
    assert "DeepFakes/000_003" in {v.video for v in videos}

    # Celeb-DF v2: the official test list, YouTube-real left out unless asked for.
    cdf = tmp_path / "Celeb-DF-v2"
    listing = ["1 Celeb-real/id0_0000.mp4", "0 Celeb-synthesis/id0_id1_0000.mp4", "1 YouTube-real/00170.mp4"]
    (cdf.mkdir(), (cdf / "List_of_testing_videos.txt").write_text("\n".join(listing) + "\n"))
    for line in listing + ["1 Celeb-real/id9_0001.mp4"]:
        _touch(cdf / line.split()[1])
    assert [(v.video, v.label) for v in celebdf_videos(cdf)] == [
        ("Celeb-real/id0_0000", 0),
        ("Celeb-synthesis/id0_id1_0000", 1),
    ]
    assert len(celebdf_videos(cdf, youtube_real=True)) == 3
    assert [v.video for v in celebdf_videos(cdf, "train")] == ["Celeb-real/id9_0001"]

    # DFDC: labels.csv (1 = fake), videos anywhere below; DFDC preview: dataset.json, test entries only.
    dfdc = tmp_path / "DFDC"
    (dfdc.mkdir(), (dfdc / "labels.csv").write_text("filename,label\naaa.mp4,1\nbbb.mp4,0\nccc.mp4,1\n"))
    _touch(dfdc / "ori_videos/part_0/aaa.mp4")
    _touch(dfdc / "ori_videos/part_3/bbb.mp4")
    assert [(v.video, v.label) for v in dfdc_videos(dfdc)] == [("aaa", 1), ("bbb", 0)]
    dfdcp = tmp_path / "DFDCP"
    entries = {
        "method_A/1/a.mp4": {"label": "fake", "set": "test"},
        "original_videos/2/b.mp4": {"label": "real", "set": "test"},
        "original_videos/3/c.mp4": {"label": "real", "set": "train"},
    }
    (dfdcp.mkdir(), (dfdcp / "dataset.json").write_text(json.dumps(entries)))
    for rel in entries:
        _touch(dfdcp / rel)
    assert sorted((v.video, v.label) for v in dfdcp_videos(dfdcp)) == [("method_A/1/a", 1), ("original_videos/2/b", 0)]

    # MCIO (FLIP lists): test sets add each video's second frame.
    mcio = tmp_path / "MCIO"
    (mcio / "txt").mkdir(parents=True)
    (mcio / "txt/msu_real_test.txt").write_text("msu/test/real/real_client001_android_SD_scene01_frame0.png\n")
    (mcio / "txt/msu_fake_test.txt").write_text(
        "msu/test/fake/attack_client001_laptop_SD_ipad_video_scene01_frame0.png\n"
    )
    for name in ("real/real_client001_android_SD_scene01", "fake/attack_client001_laptop_SD_ipad_video_scene01"):
        for frame in (0, 1):
            _touch(mcio / "frame/msu/test" / f"{name}_frame{frame}.png")
    source = open_source(DataSpec.parse(f"mcio:{mcio},domain=M,split=test"), tmp_path / "cache")
    assert len(source) == 4 and [i.label for i in source.items] == [0, 0, 1, 1]
    assert len({i.video for i in source.items}) == 2 and {i.domain for i in source.items} == {"msu"}


def test_batch_sampler_modes() -> None:
    labels = [1] * 80 + [0] * 20  # 4:1 fake:real, as deepfake sets
    domains = ["a", "b"] * 50
    balanced = TrainBatchSampler(labels, domains, 20, "sampler", seed=0)
    drawn = np.array([labels[d.index] for batch in balanced for d in batch])
    assert len(balanced) == 5 and 0.35 < drawn.mean() < 0.65
    per_domain = TrainBatchSampler(labels, domains, 12, "domain", seed=0, iters_per_epoch=3)
    for batch in per_domain:
        cells = [(domains[d.index], labels[d.index]) for d in batch]
        assert len(batch) == 12 and all(cells.count(c) == 3 for c in {("a", 1), ("b", 0), ("b", 1), ("a", 0)})
    ranks = [list(TrainBatchSampler(labels, domains, 10, "none", seed=0, rank=r, world_size=2)) for r in (0, 1)]
    seen = [{d.index for batch in batches for d in batch} for batches in ranks]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 100
    again = list(TrainBatchSampler(labels, domains, 10, "none", seed=0, rank=0, world_size=2))
    assert again == ranks[0]  # same seed and epoch -> same draws, augmentation seeds included


def test_demo_model_goes_through_the_whole_pipeline(tmp_path: Path, mtcnn_dir: Path) -> None:
    """prepare -> our pretraining -> SBI fine-tuning from its checkpoint -> calibration -> export, marked demo."""
    package = build_demo_model(tmp_path / "models", tmp_path / "work", minutes_budget=0.3, progress=False)
    manifest = package.manifest
    assert manifest.demo and "NOT FIT FOR DECISIONS" in manifest.description
    assert manifest.thresholds.operating_points and "val_auc" in manifest.provenance.metrics
    pretrained = load_checkpoint(next((tmp_path / "work" / "pretrain").glob("checkpoint-[0-9]*.pth")))
    assert (
        "config" in pretrained and manifest.normalization.mean != Normalization().mean
    )  # our pretraining's statistics
    assert manifest.architecture.vit == DEMO_ENCODER


def test_augmentations_are_seeded_and_sized(astronaut_rgb: np.ndarray) -> None:
    face = astronaut_rgb[40:200, 150:310]
    for kind in ("simple", "sbi", "fas", "none"):
        transform = TrainTransform(kind, 48, Normalization(), reprob=0.25)
        first = [transform(face, np.random.default_rng(seed)) for seed in range(30)]
        assert all(x.shape == (3, 48, 48) and x.dtype == torch.float32 for x in first)
        assert torch.equal(first[3], transform(face, np.random.default_rng(3)))  # same seed, same augmentation
        assert len({float(x[:, :, :20].sum()) for x in first}) > 15 or kind == "none"  # they do vary
    assert eval_pixels(face[:, :100], 48, "center_crop").shape == (48, 48, 3)


def test_randaugment_fills_with_the_normalisation_mean() -> None:
    """The official fine-tuning calls timm with its normalisation mean: RandAugment's geometric ops fill with
    255 x that mean, (140, 108, 93) for the VGGFace2 statistics, not ImageNet's (124, 116, 104)."""
    assert fill_colour(Normalization()) == (140, 108, 93)
    imagenet = Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert fill_colour(imagenet) == (124, 116, 104)
    transform = TrainTransform("simple", 48, Normalization())
    white = Image.new("RGB", (48, 48), (255, 255, 255))
    for op in ("Rotate", "ShearX", "TranslateYRel"):
        moved = np.asarray(RAND_AUGMENT_OPS[op](white, 10.0, np.random.default_rng(0), transform.fill))
        corner_or_edge = {tuple(moved[0, 0]), tuple(moved[-1, -1]), tuple(moved[0, -1]), tuple(moved[-1, 0])}
        assert (140, 108, 93) in corner_or_edge, op


def _run_config(pretrained: Path, faces: dict[str, Path], output: Path, **fields: object) -> FinetuneConfig:
    """An SBI run of the tiny ViT on the prepared faces: one epoch of 20 iterations of 16 unless
    ``fields`` say otherwise."""
    run: dict[str, object] = {
        "epochs": 1,
        "iters_per_epoch": 20,
        "batch_size": 16,
        "effective_batch": 16,
        "lr": 2e-3,
        "layer_decay": 1.0,
        "drop_path": 0.0,
        "augment": "none",
        "num_workers": 0,
        "val_fraction": 0.2,
    }
    return FinetuneConfig(
        task="deepfake",
        pretrained=pretrained,
        output_dir=output,
        train=[DataSpec(format="prepared", path=faces["train"], options={"label": "real"})],
        sbi=True,
        input_size=SIZE,
        **(run | fields),
    )


def test_a_one_epoch_finetune_warns_about_the_warmup_and_learns(
    faces: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    """The recipe's 5 warm-up epochs would keep a 1-epoch run's lr below a fifth of its peak: the warm-up is
    cut to the recipe's share of the run (half), with a warning, and the model's scores (and loss) move off 50/50."""
    pretrained = save_official(tmp_path / "checkpoint-400.pth", official_pretrain_state(SBI_VIT))
    with pytest.warns(RecipeWarning, match="warming up for 0.5"):
        config = _run_config(pretrained, faces, tmp_path / "run")
    assert config.warmup_epochs == 0.5
    finetuner = Finetuner(config, progress=False, force=True)
    assert finetuner.validate()["metrics"]["val_loss"] == pytest.approx(np.log(2), abs=0.01)  # new head: 50/50
    _, before, _ = finetuner.predict(finetuner.val_source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)  # a 1-epoch model may be near chance: forced
        result = finetuner.run()
    _, after, _ = finetuner.predict(finetuner.val_source)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert config.lr_schedule(2e-3).lr_at(0.5) == 2e-3 and log[0]["lr"] < 1e-4  # peaked mid-run, then decayed
    # The scores leave 50/50 (by ~0.004-0.03 on average from ~5e-5: 20 steps of a tiny model on tiny data).
    assert np.abs(after - 0.5).mean() > max(1e-3, 20 * np.abs(before - 0.5).mean())
    assert {"val_genuine", "val_attacks"} <= result.val_metrics.keys()

    # Explicit warm-ups are kept, with a warning; the recipe's effective batch 64 is made up by accumulation.
    with pytest.warns(RecipeWarning, match="never reaches its peak"):
        assert _run_config(pretrained, faces, tmp_path / "x", warmup_epochs=2).warmup_epochs == 2
    recipe = FinetuneConfig(
        task="deepfake", pretrained=pretrained, output_dir=tmp_path, train=[DataSpec(path=tmp_path)]
    )
    assert recipe.accumulation(world_size=1) == 2 and recipe.accumulation(world_size=2) == 1
    assert recipe.peak_lr(world_size=1) == pytest.approx(2.5e-4 * 64 / 256)


def test_a_model_at_chance_fails_the_run_and_is_not_exported(
    faces: dict[str, Path], tmp_path: Path, astronaut_rgb: np.ndarray, one_thread: None
) -> None:
    """A validation set whose real and fake folders hold the same images: any model's AUC is exactly 0.5."""
    val = tmp_path / "val"
    for label in ("real", "fake"):
        (val / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(astronaut_rgb[20 + 5 * i : 250 + 5 * i, 140:370]).save(val / label / f"{i}.png")
    pretrained = save_official(tmp_path / "checkpoint-400.pth", official_pretrain_state(SBI_VIT))
    config = _run_config(
        pretrained, faces, tmp_path / "run", val=[DataSpec(format="folder", path=val)], warmup_epochs=0
    )
    with pytest.raises(ChanceLevelError, match="AUC 0.500 on 12 genuine"):
        Finetuner(config, progress=False).run()
    checkpoint = tmp_path / "run" / "checkpoint-min_val_loss.pth"
    assert load_checkpoint(checkpoint)["fsfm"]["metrics"]["val_auc"] == 0.5  # the checkpoints stay
    with pytest.raises(ExportError, match="near chance"):
        export_checkpoint(checkpoint, tmp_path / "models", name="m", version=1, task="deepfake")
    result = CliRunner().invoke(
        _cli(export),
        [
            "--checkpoint",
            str(checkpoint),
            "--name",
            "m",
            "--task",
            "deepfake",
            "--models",
            str(tmp_path / "models"),
            "--force",
        ],
    )
    assert result.exit_code == 0, result.output
    assert chance_verdict({"val_auc": 0.9, "val_genuine": 12, "val_attacks": 12}) is None
    assert chance_verdict({"val_auc": 0.7, "val_genuine": 6, "val_attacks": 6}) is not None  # 6 + 6 cannot tell
    assert chance_verdict({"val_auc": 0.61, "val_genuine": 5000, "val_attacks": 5000}) is not None


def test_folder_sets_must_look_like_face_crops(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    """Whole photos in a `folder:` set would be resized and scored as faces: refused with the command that
    cuts crops; square images far from the model's size are warned about; face crops pass quietly."""
    for name, shape in (("photos", (300, 512)), ("crops", (64, 64)), ("large", (400, 400))):
        for label in ("real", "fake"):
            (tmp_path / name / label).mkdir(parents=True)
            for i in range(3):
                pixels = np.asarray(Image.fromarray(astronaut_rgb).resize(shape[::-1]))
                Image.fromarray(pixels).save(tmp_path / name / label / f"{i}.png")
    photos = DataSpec.parse(f"folder:{tmp_path / 'photos'}")
    with pytest.raises(DataError, match=r"6 of 6 sampled images are not square \(e.g. 512x300\).*fsfm prepare"):
        open_source(photos, tmp_path / "cache", input_size=SIZE)
    assert len(open_source(photos, tmp_path / "cache")) == 6  # no model size, no check (e.g. listing a set)
    accepted = DataSpec.parse(f"folder:{tmp_path / 'photos'},crops=yes")
    with pytest.warns(DataWarning, match="about 512 px, the model takes 64 px"):
        assert len(open_source(accepted, tmp_path / "cache", input_size=SIZE)) == 6
    with pytest.warns(DataWarning, match="fsfm prepare"):
        open_source(DataSpec.parse(f"{tmp_path / 'large'}"), tmp_path / "cache", input_size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            len(open_source(DataSpec.parse(f"folder:{tmp_path / 'crops'}"), tmp_path / "cache", input_size=SIZE)) == 6
        )
