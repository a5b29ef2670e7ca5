"""The configuration of one FSFM pretraining run, saved as ``config.json`` beside its checkpoints.

Defaults are the paper's (FSFM, arXiv 2412.12032; docs/pretraining.md): ViT-B/16, pixel decoder
512-d x 8 blocks x 16 heads, rep decoder 2 blocks x 16 heads, projector/predictor 4096 -> 256, CRFR-P at
75 %, norm-pix loss, lambda_fr 0.007, lambda_cl 0.1 (SimSiam form), AdamW (0.9, 0.95), weight decay 0.05,
blr 1.5e-4 scaled by effective batch / 256, 40 warm-up epochs, EMA momentum 0.996 -> 1; and the official
code's (wolo-wolo/FSFM-CVPR25): global-norm gradient clipping at 1.0, an effective batch of 4096 (the README's
256 x 4 accumulation x 4 GPUs; accumulation makes it up on fewer GPUs, ``training.recipe``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from fsfm.models.config import VIT_PRESETS, ViTConfig, vit_preset
from training.masking import MASKING_STRATEGIES
from training.recipe import accumulation_steps, capped_warmup
from training.schedules import CosineSchedule

OFFICIAL_EFFECTIVE_BATCH = 4096
OFFICIAL_WARMUP_SHARE = 40 / 400  # the recipe's warm-up share of its run, kept when a run is shorter


CUSTOM_MODEL = "custom"  # ``model`` of a config whose architecture is no preset


def preset_name(config: ViTConfig) -> str | None:
    """The VIT_PRESETS name with the same architecture (any input size), if one."""
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
    for name, preset in VIT_PRESETS.items():
        if all(getattr(preset, k) == getattr(config, k) for k in keys):
            return name
    return None


class PretrainArchitecture(BaseModel):
    """Shapes of the FSFM pretraining network. The rep decoder's width equals the encoder's (it shares
    the encoder-wide ``mask_token``), as in every official variant."""

    encoder: ViTConfig = Field(default_factory=lambda: vit_preset("fsfm_vit_base_patch16"))
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    rep_decoder_depth: int = 2
    rep_decoder_num_heads: int = 16
    projector_hidden_dim: int = 4096
    projector_dim: int = 256


class PretrainConfig(BaseModel):
    """Everything a pretraining run needs; ``epochs`` and friends count passes over the data."""

    data: list[Path] = Field(min_length=1, description="prepared face datasets (`fsfm prepare` outputs), concatenated")
    output_dir: Path
    model: str = Field(
        default="fsfm_vit_base_patch16",
        description="encoder preset; with `architecture` given, the preset it is (or 'custom'), set by the config",
    )
    architecture: PretrainArchitecture | None = None

    # Masking and losses.
    masking: str = "crfr_p"
    mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
    norm_pix_loss: bool = True
    weight_fr: float = 0.007
    weight_cl: float = 0.1
    cl_loss: Literal["simsiam", "byol", "infonce"] = "simsiam"

    # Optimisation.
    epochs: int = Field(default=400, ge=1)
    warmup_epochs: float = Field(default=40, ge=0)
    batch_size: int = Field(default=256, ge=1, description="per process (GPU)")
    accum_iter: int | None = Field(
        default=None, ge=1, description="gradient accumulation steps; default: those reaching effective_batch"
    )
    effective_batch: int | None = Field(
        default=OFFICIAL_EFFECTIVE_BATCH,
        ge=1,
        description="batch x processes x accumulation the run aims for when accum_iter is not given "
        "(the official 4096); None: no accumulation",
    )
    blr: float = 1.5e-4
    lr: float | None = Field(default=None, description="absolute peak lr; default blr * effective batch / 256")
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    ema_momentum: float = Field(default=0.996, ge=0.0, le=1.0)
    clip_grad: float | None = Field(
        default=1.0, ge=0.0, description="global-norm gradient clipping (the official loop's 1.0); 0 or None: off"
    )

    # Runtime.
    seed: int = 0
    num_workers: int = Field(default=8, ge=0)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        default="auto", description="auto: bf16 on CUDA if supported, else fp16 on CUDA; fp32 on CPU"
    )
    device: str = Field(default="auto", description="auto (CUDA when present), cpu or cuda")
    save_every: int = Field(default=20, ge=1, description="epochs between checkpoints (the last is always saved)")

    @model_validator(mode="after")
    def _fill_architecture(self) -> PretrainConfig:
        if self.architecture is None:
            self.architecture = PretrainArchitecture(encoder=vit_preset(self.model))
        else:  # config.json names the encoder it holds, not a preset it is not
            self.model = preset_name(self.architecture.encoder) or CUSTOM_MODEL
        if self.masking not in MASKING_STRATEGIES:
            raise ValueError(f"unknown masking {self.masking!r}; choose from {sorted(MASKING_STRATEGIES)}")
        from_default = "warmup_epochs" not in self.model_fields_set
        self.warmup_epochs = capped_warmup(self.warmup_epochs, self.epochs, OFFICIAL_WARMUP_SHARE, from_default)
        return self

    def accumulation(self, world_size: int) -> int:
        """Accumulation steps of a run on ``world_size`` processes: ``accum_iter``, else those that reach
        ``effective_batch``."""
        return accumulation_steps(self.accum_iter, self.effective_batch, self.batch_size, world_size)

    @property
    def arch(self) -> PretrainArchitecture:
        assert self.architecture is not None  # filled by the validator
        return self.architecture

    def lr_schedule(self, peak_lr: float) -> CosineSchedule:
        """Warm-up over ``warmup_epochs``, then half-cosine to ``min_lr`` at ``epochs``."""
        return CosineSchedule(peak_lr, self.epochs, self.warmup_epochs, self.min_lr)

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        return cls.model_validate_json(Path(path).read_text())
