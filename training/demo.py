"""The first-run demo model: built through the real pipeline in a few minutes on a CPU, so that a fresh
install serves something.

    augmented copies of one public-domain face photo (scikit-image's astronaut, NASA)
      -> ``fsfm prepare`` (detector, 1.3x crop, 64 px, region maps)
      -> short FSFM pretraining of a small ViT (CRFR-P masking, EMA target)
      -> self-blended-images fine-tuning (real faces only) with a held-out validation set
      -> thresholds calibrated on that set -> ``fsfm export`` with ``demo=True``

One identity and minutes of training make a model that knows the artefacts of self-blending on that
one face and little else: it is marked a demo in its manifest (and so in every response) and is not
fit for decisions. ``docs/finetuning.md`` says how to get real weights.

``python -m training.demo --models models`` builds it when the repository holds no model. The package
committed under ``demo/models/`` was built this way (``demo/PROVENANCE.md``), so that ``make run`` serves
it without PyTorch. The photo comes from scikit-image, part of the ``train`` extra.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fsfm.models.config import ViTConfig
from fsfm.package.repository import ModelPackage, ModelRepository
from training.export import export_checkpoint
from training.finetune import Finetuner
from training.finetune_config import DataSpec, FinetuneConfig
from training.prepare import PrepareConfig, prepare_dataset
from training.pretrain import Pretrainer, latest_checkpoint
from training.pretrain_config import PretrainArchitecture, PretrainConfig

DEMO_NAME = "demo-deepfake"
DEMO_SIZE = 64
DEMO_ENCODER = ViTConfig(img_size=DEMO_SIZE, patch_size=16, embed_dim=64, depth=2, num_heads=2)
DEMO_DESCRIPTION = (
    "DEMO MODEL, NOT FIT FOR DECISIONS: a 2-block ViT pretrained and fine-tuned (self-blended images) for a few "
    "minutes on augmented copies of one photograph (scikit-image's astronaut). On faces of people it never saw it "
    "scores at chance and flags real faces as fake as often as fakes (demo/PROVENANCE.md). It exists so that a fresh "
    "install can be tried; see docs/finetuning.md for real weights."
)
# Planned work at minutes_budget = 3 (measured on 2 CPU cores: ~2 minutes); scaled with the budget.
_PLAN = {"faces": 240, "pretrain_epochs": 20, "finetune_epochs": 8, "finetune_iters": 75}


def astronaut_variant(seed: int, size: int = 256) -> np.ndarray:
    """scikit-image's astronaut, maybe mirrored, turned (+-12 deg), scaled (0.85-1.15), moved and
    recoloured (hue, saturation, brightness), as a (size, size, 3) uint8 image."""
    from skimage import data

    rng = np.random.default_rng(seed)
    image = data.astronaut()
    if rng.random() < 0.5:
        image = np.ascontiguousarray(image[:, ::-1])
    matrix = cv2.getRotationMatrix2D((256.0, 127.0), rng.uniform(-12, 12), rng.uniform(0.85, 1.15))
    matrix[:, 2] += rng.uniform(-20, 20, 2)
    image = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    hsv[..., 2] *= rng.uniform(0.7, 1.2)
    image = cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def prepare_astronaut_faces(folder: Path, seeds: range, size: int = DEMO_SIZE) -> Path:
    """Write astronaut variants to ``folder/raw/real/`` and prepare them into ``folder/prepared``."""
    raw = folder / "raw" / "real"
    raw.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        path = raw / f"astronaut_{seed:05d}.png"
        if not path.is_file():
            Image.fromarray(astronaut_variant(seed)).save(path)
    prepare_dataset(
        raw.parent, folder / "prepared", PrepareConfig(size=size, min_face_size=32), workers=1, progress=False
    )
    return folder / "prepared"


def build_demo_model(
    repository: Path, work_dir: Path, minutes_budget: float = 3.0, progress: bool = True
) -> ModelPackage:
    """Run the pipeline above and export ``demo-deepfake`` into ``repository`` (the next free version)."""
    import torch

    started = time.monotonic()
    scale = max(minutes_budget / 3.0, 0.1)
    work_dir = Path(work_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-block ViT is faster on one thread than two contending ones
    try:
        faces = prepare_astronaut_faces(work_dir / "faces", range(max(40, int(_PLAN["faces"] * scale))))
        pretrain = PretrainConfig(
            data=[faces],
            output_dir=work_dir / "pretrain",
            architecture=PretrainArchitecture(
                encoder=DEMO_ENCODER,
                decoder_embed_dim=64,
                decoder_depth=2,
                decoder_num_heads=2,
                rep_decoder_depth=1,
                rep_decoder_num_heads=2,
                projector_hidden_dim=256,
                projector_dim=64,
            ),
            epochs=max(1, round(_PLAN["pretrain_epochs"] * scale)),
            warmup_epochs=1,
            batch_size=32,
            effective_batch=None,  # a demo on one CPU steps on every batch
            lr=1e-3,
            num_workers=0,
            device="cpu",
            save_every=1000,
        )
        Pretrainer(pretrain, progress=progress).run()
        finetune = FinetuneConfig(
            task="deepfake",
            pretrained=latest_checkpoint(pretrain.output_dir),
            output_dir=work_dir / "finetune",
            train=[DataSpec(format="prepared", path=faces, options={"label": "real"}, name="astronaut")],
            sbi=True,
            input_size=DEMO_SIZE,
            epochs=max(1, round(_PLAN["finetune_epochs"] * scale)),
            iters_per_epoch=_PLAN["finetune_iters"],
            warmup_epochs=1,
            batch_size=32,
            effective_batch=32,
            lr=2e-3,
            layer_decay=1.0,
            drop_path=0.0,
            augment="none",
            num_workers=0,
            device="cpu",
            val_fraction=0.2,
            demo=True,
            description=DEMO_DESCRIPTION,
            licence="demo weights from a public-domain photo (NASA); not for decisions",
        )
        # A demo of the pipeline, not a detector: kept whatever its validation AUC (its manifest records it).
        result = Finetuner(finetune, progress=progress, force=True).run()
    finally:
        torch.set_num_threads(threads)
    repository = Path(repository)
    versions = (
        [p.manifest.version for p in ModelRepository(repository).packages if p.manifest.name == DEMO_NAME]
        if repository.is_dir()
        else []
    )
    package = export_checkpoint(
        result.best_checkpoint,
        repository,
        name=DEMO_NAME,
        version=max(versions, default=0) + 1,
        task="deepfake",
        force=True,
        demo=True,
    )
    if progress:
        print(
            f"demo model {package.manifest.ref} built in {time.monotonic() - started:.0f} s: {package.path}", flush=True
        )
    return package


def main(
    models: Path = Path("models"),
    work_dir: Path = Path(".cache/demo"),
    minutes: float = 3.0,
    force: bool = False,
) -> None:
    """Build the demo model into ``models`` unless the repository already holds a model (or --force)."""
    if not force and models.is_dir() and ModelRepository(models).packages:
        print(f"{models} already holds models; no demo model built")
        return
    build_demo_model(models, work_dir, minutes)


if __name__ == "__main__":
    import typer

    typer.run(main)
