"""FSFM pretraining: official key names, the EMA target, the losses going down on faces the tests
make, exact resume, DDP under torchrun on CPU, and a ViT-B/16 training step."""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from fsfm.face.crop import Normalization
from fsfm.models.checkpoints import classifier_from_pretrained, load_checkpoint, model_state
from fsfm.models.config import vit_preset
from tests.official_format import (
    official_pretrain_optimizer,
    official_pretrain_state,
    save_official,
)
from tests.test_prepare import prepared_test_faces
from training.commands import Amp, Masking, pretrain
from training.datasets import MaskingCollate, PreparedFaces, PretrainBatchSampler
from training.masking import MASKING_STRATEGIES
from training.param_groups import weight_decay_groups
from training.prepare import PrepareConfig, prepare_dataset
from training.pretrain import Pretrainer
from training.pretrain_config import PretrainArchitecture, PretrainConfig
from training.pretrain_engine import ema_update
from training.pretrain_model import FSFMPretrainModel, FSFMTargetNetwork, parameter_counts
from training.recipe import RecipeWarning
from training.saving import group_names, load_optimizer_by_name, official_group_names
from training.schedules import momentum_at

TINY = PretrainArchitecture(
    encoder=vit_preset("fsfm_vit_tiny_patch16", img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4),
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=4,
    rep_decoder_num_heads=4,
    projector_hidden_dim=64,
    projector_dim=16,
)
EPOCHS, SAVE_EVERY = 50, 5  # 52 faces / batch 8 = 6 iterations per epoch: 300 steps
WINDOW = 20


def tiny_config(data: Path, output: Path, **overrides: object) -> PretrainConfig:
    fields = {
        "epochs": EPOCHS,
        "warmup_epochs": 5,
        "batch_size": 8,
        "lr": 1e-3,
        "effective_batch": None,  # no accumulation: the tiny runs step on every batch
        "num_workers": 0,
        "save_every": SAVE_EVERY,
    }
    return PretrainConfig(data=[data], output_dir=output, architecture=TINY, **{**fields, **overrides})


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny matrices gain nothing from intra-op threads; one keeps the time steady on a busy machine
    (and the resumed run must use the same thread count as the run it reproduces)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_log(folder: Path) -> list[dict[str, str]]:
    with open(folder / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_test_faces(tmp_path_factory.getbasetemp())[1]


@pytest.fixture(scope="module")
def tiny_run(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 300-step run of the tiny model, checkpoints every 5 epochs."""
    output = tmp_path_factory.mktemp("tiny-run")
    with single_thread():
        Pretrainer(tiny_config(faces, output), progress=False).run()
    return output


def test_state_dict_keys_are_the_official_ones() -> None:
    model = FSFMPretrainModel(TINY)
    official = official_pretrain_state(TINY.encoder, decoder_dim=32, decoder_depth=1)
    ours = model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}
    FSFMPretrainModel(TINY).load_state_dict(official)  # official weights drop in, strictly

    target = model.target_network()
    shared = {k for k in ours if not k.startswith(("predictor.", "decoder_"))}
    assert set(target.state_dict()) == shared
    # The quirk: the rep decoder's fixed position embedding is zeros in both networks.
    assert not ours["rep_decoder_pos_embed"].any() and not target.rep_decoder_pos_embed.any()
    assert ours["pos_embed"][0, 1:].abs().sum() > 0 and ours["decoder_pos_embed"][0, 1:].abs().sum() > 0
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "rep_decoder_pos_embed", "decoder_pos_embed"}
    assert not any(p.requires_grad for p in target.parameters())


def test_weight_decay_groups_and_schedules() -> None:
    model = FSFMPretrainModel(TINY)
    no_decay, decay = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight", "projector.projection_head.3.weight"} <= decayed
    assert all(names[id(p)].endswith("bias") or p.ndim == 1 for p in no_decay["params"])
    assert not {"pos_embed", "decoder_pos_embed"} & (decayed | {names[id(p)] for p in no_decay["params"]})
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0

    config = tiny_config(Path("."), Path("."), epochs=10, warmup_epochs=2, min_lr=1e-5)
    lr_at = config.lr_schedule(1e-3).lr_at
    assert lr_at(0.0) == 0.0 and lr_at(1.0) == pytest.approx(5e-4)
    assert lr_at(2.0) == pytest.approx(1e-3) and lr_at(6.0) == pytest.approx(5.05e-4)
    assert lr_at(10.0) == pytest.approx(1e-5)
    assert momentum_at(0, 100, 0.996) == 0.996 and momentum_at(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996) == 1.0


def test_ema_target_is_updated_every_iteration_and_gets_no_gradients(faces: Path, tmp_path: Path) -> None:
    trainer = Pretrainer(tiny_config(faces, tmp_path, accum_iter=2, warmup_epochs=0), progress=False)
    batches = iter(trainer.loader)
    online0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    target0 = {k: v.clone() for k, v in trainer.target.state_dict().items()}

    # Micro-step 0 of 2: gradients accumulate, the online weights stay, the target still moves.
    record = trainer.engine.train_step(next(batches), epoch=0, step=0)
    m = momentum_at(0, trainer.total_iters, 0.996)
    assert record["momentum"] == m == 0.996
    assert all(torch.equal(v, online0[k]) for k, v in trainer.model.state_dict().items())
    for name, value in trainer.target.state_dict().items():
        assert torch.allclose(value, m * target0[name] + (1 - m) * online0[name], atol=1e-7), name
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())  # every online part learns

    # Micro-step 1: the optimiser steps, then the target moves towards the new online weights.
    target1 = {k: v.clone() for k, v in trainer.target.state_dict().items()}
    record = trainer.engine.train_step(next(batches), epoch=0, step=1)
    m = momentum_at(1, trainer.total_iters, 0.996)
    online2 = trainer.model.state_dict()
    assert not torch.equal(online2["blocks.0.attn.qkv.weight"], online0["blocks.0.attn.qkv.weight"])
    for name, value in trainer.target.state_dict().items():
        assert torch.allclose(value, m * target1[name] + (1 - m) * online2[name], atol=1e-7), name
    assert all(p.grad is None and not p.requires_grad for p in trainer.target.parameters())
    assert not trainer.target.rep_decoder_pos_embed.any()  # zeros stay zeros under EMA


def test_ema_update_formula_on_plain_modules() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, 0.9)
    for name, value in target.state_dict().items():
        assert torch.allclose(value, 0.9 * before[name] + 0.1 * online.state_dict()[name])


def test_every_loss_term_goes_down(tiny_run: Path) -> None:
    rows = read_log(tiny_run)
    assert len(rows) == EPOCHS * 6 and [int(r["iteration"]) for r in rows] == list(range(EPOCHS * 6))
    curves = {k: np.array([float(r[k]) for r in rows]) for k in ("loss", "rec_m", "rec_fr", "cl")}
    first = {k: v[:WINDOW].mean() for k, v in curves.items()}
    last = {k: v[-WINDOW:].mean() for k, v in curves.items()}
    assert last["rec_m"] < 0.85 * first["rec_m"], (first, last)
    assert last["rec_fr"] < 0.85 * first["rec_fr"], (first, last)
    assert last["cl"] < first["cl"] - 0.1, (first, last)
    assert last["loss"] < first["loss"]
    # The total is the spec's weighted sum of the terms.
    total = curves["rec_m"] + 0.007 * curves["rec_fr"] + 0.1 * curves["cl"]
    assert np.allclose(total, curves["loss"], atol=1e-5)
    # lr follows warm-up + cosine from lr_at; momentum climbs from 0.996 towards 1.
    config = PretrainConfig.load(tiny_run / "config.json")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([config.lr_schedule(1e-3).lr_at(i / 6) for i in range(len(rows))], rel=1e-9, abs=1e-15)
    assert float(rows[0]["momentum"]) == 0.996 and 0.99999 < float(rows[-1]["momentum"]) < 1.0


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tiny_run: Path, tmp_path: Path) -> None:
    """Killed in epoch 47 after the epoch-44 checkpoint: the resumed run (through the CLI, from the
    folder's latest checkpoint) recomputes epochs 45-49 exactly and rewrites the log's tail."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint-44.pth", "checkpoint-te-44.pth"):
        shutil.copy(tiny_run / name, resumed / name)
    rows = read_log(tiny_run)
    with open(resumed / "log.csv", "w", newline="") as fh:  # the interrupted run's log, tail garbled
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "loss": "999"} if int(r["epoch"]) >= 45 else r for r in rows[: 47 * 6 + 2])

    app = typer.Typer()
    app.command()(pretrain)
    app.command("noop")(lambda: None)
    args = [
        "pretrain",
        "--config",
        str(tiny_run / "config.json"),
        "--output-dir",
        str(resumed),
        "--resume",
        str(resumed),
    ]
    with single_thread():
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)

    assert read_log(resumed) == rows  # bit-identical losses, lr and momentum from epoch 45 on
    final, reference = load_checkpoint(resumed / "checkpoint-49.pth"), load_checkpoint(tiny_run / "checkpoint-49.pth")
    assert all(torch.equal(final["model"][k], v) for k, v in reference["model"].items())
    target = load_checkpoint(resumed / "checkpoint-te-49.pth")["model"]
    assert all(
        torch.equal(target[k], v) for k, v in load_checkpoint(tiny_run / "checkpoint-te-49.pth")["model"].items()
    )


def test_resume_from_an_official_checkpoint_matches_optimiser_state_by_name(faces: Path, tmp_path: Path) -> None:
    """An official ``checkpoint-2.pth`` (+ ``checkpoint-te-2.pth``) whose AdamW state lists the parameters in the
    official model's order: restored by name, each moment lands on its parameter, and training continues."""
    state = official_pretrain_state(TINY.encoder, decoder_dim=32, decoder_depth=1)
    optimizer = official_pretrain_optimizer(state)
    folder = tmp_path / "official"
    folder.mkdir()
    save_official(folder / "checkpoint-2.pth", state, epoch=2, optimizer=optimizer)
    online = FSFMPretrainModel(TINY)
    online.load_state_dict(state)
    torch.save({"model": online.target_network().state_dict(), "epoch": 2}, folder / "checkpoint-te-2.pth")

    trainer = Pretrainer(tiny_config(faces, tmp_path / "continued", epochs=4), resume=folder, progress=False)
    ours = group_names(trainer.optimizer, trainer.model)
    official = official_group_names(state, trainer.model)
    assert sorted(map(sorted, ours)) == sorted(map(sorted, official)) and ours != official  # same, other order
    saved = optimizer["state"][len(official[0]) + official[1].index("projector.projection_head.0.weight")]
    restored = trainer.optimizer.state[dict(trainer.model.named_parameters())["projector.projection_head.0.weight"]]
    assert torch.equal(restored["exp_avg"], saved["exp_avg"]) and int(restored["step"]) == 2
    assert trainer.start_epoch == 3
    with single_thread():
        trainer.run()
    rows = read_log(tmp_path / "continued")
    assert {int(r["epoch"]) for r in rows} == {3} and all(np.isfinite(float(r["loss"])) for r in rows)
    no_decay, decay = optimizer["param_groups"]
    other = {"state": optimizer["state"], "param_groups": [no_decay | {"params": no_decay["params"][1:]}, decay]}
    with pytest.raises(ValueError, match="no state for"):  # a checkpoint of another model says so
        load_optimizer_by_name(trainer.optimizer, trainer.model, other, [official[0][1:], official[1]])


def test_pretrain_flags_are_the_config_fields_and_state_its_defaults() -> None:
    """Every flag but --config/--resume names a PretrainConfig field, defaults to None (so the config file or
    the field's default applies) and shows the field's default, read from PretrainConfig."""
    params = inspect.signature(pretrain).parameters
    assert set(params) - {"config", "resume"} <= set(PretrainConfig.model_fields)
    assert all(params[name].default.default is None for name in params)
    assert params["epochs"].default.help == f"Epochs (default {PretrainConfig.model_fields['epochs'].default})."
    assert params["norm_pix_loss"].default.help.endswith("(default on).")
    assert params["lr"].default.help == "Absolute peak lr (overrides --blr)."  # no default to show
    assert {m.value for m in Masking} == set(MASKING_STRATEGIES)
    assert {a.value for a in Amp} == {"auto", "bf16", "fp16", "off"}


def test_the_official_recipe_is_the_default(tmp_path: Path) -> None:
    """Clipping at 1.0 and the effective batch 4096 of the official runs; a warm-up as long as the run is cut
    to the recipe's share of it, with a warning."""
    with pytest.warns(RecipeWarning, match="warm-up of 40 epochs"):
        config = PretrainConfig(data=[tmp_path], output_dir=tmp_path, epochs=20)
    assert config.clip_grad == 1.0 and config.warmup_epochs == 2.0  # 40 / 400 of the run
    assert config.accumulation(world_size=4) == 4 and config.accumulation(world_size=1) == 16  # 256 x 4 x 4
    with pytest.warns(RecipeWarning, match="effective batch 512"):
        assert config.model_copy(update={"accum_iter": 2}).accumulation(world_size=1) == 2
    assert PretrainConfig(data=[tmp_path], output_dir=tmp_path, clip_grad=0).clip_grad == 0  # 0: off
    assert "(default 1.0)" in inspect.signature(pretrain).parameters["clip_grad"].default.help
    assert tiny_config(tmp_path, tmp_path).model == "custom"  # config.json names what it holds, not ViT-B
    assert PretrainConfig(data=[tmp_path], output_dir=tmp_path, model="fsfm_vit_small_patch16").model == (
        "fsfm_vit_small_patch16"
    )


def test_checkpoints_have_the_official_layout_and_feed_finetuning(tiny_run: Path, faces: Path) -> None:
    assert {p.name for p in tiny_run.glob("checkpoint-*.pth")} == {
        f"checkpoint{kind}-{e}.pth" for e in range(SAVE_EVERY - 1, EPOCHS, SAVE_EVERY) for kind in ("", "-te")
    }
    checkpoint = load_checkpoint(tiny_run / "checkpoint-49.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(checkpoint) and checkpoint["epoch"] == 49
    assert isinstance(checkpoint["args"], argparse.Namespace) and checkpoint["args"].masking == "crfr_p"
    classifier = classifier_from_pretrained(model_state(checkpoint), config=TINY.encoder)
    assert torch.equal(classifier.blocks[1].mlp.fc2.weight, checkpoint["model"]["blocks.1.mlp.fc2.weight"])
    assert classifier(torch.zeros(2, 3, 64, 64)).shape == (2, 2)

    target = load_checkpoint(tiny_run / "checkpoint-te-49.pth")["model"]
    FSFMTargetNetwork(TINY).load_state_dict(target)  # strict: exactly the target's keys
    assert not any(k.startswith(("predictor.", "decoder_")) for k in target)

    stats = Normalization.from_mean_std_file(tiny_run / "pretrain_ds_mean_std.txt")
    assert stats == PreparedFaces([faces]).normalization
    assert PretrainConfig.load(tiny_run / "config.json").arch == TINY


def test_masks_do_not_depend_on_the_number_of_loader_workers(faces: Path) -> None:
    dataset = PreparedFaces([faces])
    sampler = PretrainBatchSampler(len(dataset), 8, seed=3)
    sampler.set_epoch(2)
    collate = MaskingCollate(dataset.normalization, "crfr_p", 8, 0.75)
    runs = [list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=n)) for n in (0, 2)]
    for a, b in zip(*runs, strict=False):
        assert all(torch.equal(a[k], b[k]) for k in ("images", "mask", "fr_mask"))
    batch = runs[0][0]
    assert batch["images"].shape == (8, 3, 64, 64) and batch["mask"].shape == (8, 64)
    assert (batch["mask"].sum(1) == 48).all() and not (batch["fr_mask"] & ~batch["mask"]).any()
    # Normalised with the dataset's statistics: about zero mean, unit variance over the set.
    images = torch.cat([b["images"] for b in runs[0]])
    assert images.mean().abs() < 0.1 and (images.std() - 1).abs() < 0.1
    # Ranks split the permutation without overlap.
    parts = [PretrainBatchSampler(len(dataset), 4, 3, rank, 2) for rank in (0, 1)]
    seen = [{key.index for batch in part for key in batch} for part in parts]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 24


def test_torchrun_runs_the_same_pretraining_on_two_cpu_processes(faces: Path, tmp_path: Path) -> None:
    output = tmp_path / "ddp"
    config = tiny_config(faces, output, epochs=2, warmup_epochs=1, batch_size=4, lr=None, blr=0.256, save_every=1)
    config.save(tmp_path / "run.json")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training.commands",
        "pretrain",
        "--config",
        str(tmp_path / "run.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "on 2 process(es), effective batch 8" in result.stderr + result.stdout
    rows = read_log(output)
    assert len(rows) == 2 * 6  # 52 faces -> 26 per rank -> 6 batches of 4, per epoch
    # lr = blr * (4 per process x 2 processes) / 256 = 0.008 at the end of the 1-epoch warm-up.
    assert float(rows[3]["lr"]) == pytest.approx(0.008 * 3 / 6)
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "rec_m", "rec_fr", "cl"))
    checkpoint = load_checkpoint(output / "checkpoint-1.pth")
    assert checkpoint["epoch"] == 1 and (output / "checkpoint-te-1.pth").is_file()
    FSFMPretrainModel(TINY).load_state_dict(checkpoint["model"])


def test_vit_b16_builds_and_trains_one_step(faces: Path, tmp_path: Path) -> None:
    source = faces.parent / "faces-source" / "set_a"
    picked = tmp_path / "picked"
    picked.mkdir()
    for path in sorted(source.iterdir())[:2]:
        shutil.copy(path, picked)
    data = tmp_path / "faces-224"
    prepare_dataset(picked, data, PrepareConfig(size=224), workers=1, progress=False)
    config = PretrainConfig(
        data=[data], output_dir=tmp_path / "vit-b", batch_size=2, accum_iter=1, num_workers=0, epochs=1
    )
    trainer = Pretrainer(config, progress=False)

    counts = parameter_counts(trainer.model)
    target_counts = parameter_counts(trainer.target)
    print(f"\nViT-B/16 FSFM parameters: {counts}; target: {target_counts}")
    # The paper's ViT-B/16 and the released checkpoints: online ≈ 133.7 M (297 tensors), encoder ≈ 85.6 M,
    # target 188 tensors.
    assert counts["total"] == 133_734_400 and len(trainer.model.state_dict()) == 297
    assert counts["encoder"] == 85_647_360  # patch embed + cls + 12 blocks + final norm
    assert counts["pixel_decoder"] == 26_007_808  # 512-d, 8 blocks, -> 16*16*3
    assert counts["id_network"] == 21_675_776  # mask token, 2-block rep decoder, projector, predictor
    assert len(trainer.target.state_dict()) == 188
    assert trainer.peak_lr == pytest.approx(1.5e-4 * 2 / 256)

    from torch.utils.flop_counter import FlopCounterMode

    batch = next(iter(trainer.loader))
    with FlopCounterMode(display=False) as flops:
        first = trainer.engine.train_step(batch, epoch=0, step=0)
    start = time.perf_counter()
    second = trainer.engine.train_step(batch, epoch=0, step=1)
    seconds = time.perf_counter() - start
    gflop = flops.get_total_flops() / 2 / 1e9  # forward + backward of both networks, per image
    print(f"ViT-B/16 training step, batch 2, CPU: {seconds:.1f} s; {gflop:.0f} GFLOP per image")
    assert all(np.isfinite(r[k]) for r in (first, second) for k in ("loss", "rec_m", "rec_fr", "cl"))
    assert 100 < gflop < 130  # ~3x the online forward + the target's forward (spec architecture)
