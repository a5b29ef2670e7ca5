"""The FSFM pretraining network (FSFM paper, arXiv 2412.12032; docs/pretraining.md): MIM with a masked
autoencoder, plus instance discrimination between an online network and its EMA target, the "3C" losses.

    online  (masked view):  encoder -> norm ─┬─> pixel decoder -> patches        L_rec^m, L_rec^fr
                                             └─> rep decoder -> mean -> projector -> predictor ─┐
    target  (full view, no grad, EMA):  encoder -> norm -> rep decoder -> mean -> projector ────┴─> L_cl

``FSFMTargetNetwork`` holds what both branches share; ``FSFMPretrainModel`` (the online network) adds
the predictor and the pixel decoder. Both subclass ``ViTEncoder`` so state-dict keys are flat and
exactly the official ones (the released checkpoints, docs/finetuning.md): ``cls_token``, ``pos_embed``,
``patch_embed.*``, ``blocks.*``, ``norm.*``, ``mask_token``, ``rep_decoder_{embed,pos_embed,blocks,norm,pred}``,
``projector.projection_head.{0,1,3}.*``, and online only ``predictor.projection_head.{0,1,3}.*``,
``decoder_{embed,pos_embed,blocks,norm,pred}``. The fine-tuning side keeps the encoder keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fsfm.models.pos_embed import sincos_2d
from fsfm.models.vit import Block, LayerNorm, ViTEncoder, init_vit_weights
from training.pretrain_config import PretrainArchitecture

INFONCE_TEMPERATURE = 0.1


class ProjectionMLP(nn.Module):
    """BYOL-style MLP: Linear -> LayerNorm -> ReLU -> Linear (keys ``projection_head.{0,1,3}``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(x)


def _fixed_embedding(num_tokens: int, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, num_tokens, dim), requires_grad=False)


class FSFMTargetNetwork(ViTEncoder):
    """Encoder + final ``norm`` + shared ``mask_token`` + rep decoder + projector: the target (EMA)
    network, and the part of the online network that the ID branch runs through."""

    def __init__(self, arch: PretrainArchitecture) -> None:
        super().__init__(arch.encoder)
        d, n = arch.encoder.embed_dim, arch.encoder.num_patches + 1
        self.arch = arch
        self.norm = LayerNorm(d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        # Rep decoder. Its position embedding is declared fixed but the official model never
        # initialises it, so it is all zeros; the target copies the online state dict, so it is zero
        # there too: the rep decoder effectively has no position embedding. Replicated on purpose
        # (an official quirk, checked on the released checkpoints), so official checkpoints and ours
        # behave alike.
        self.rep_decoder_embed = nn.Linear(d, d)
        self.rep_decoder_pos_embed = _fixed_embedding(n, d)
        self.rep_decoder_blocks = nn.ModuleList(
            Block(d, arch.rep_decoder_num_heads) for _ in range(arch.rep_decoder_depth)
        )
        self.rep_decoder_norm = LayerNorm(d)
        self.rep_decoder_pred = nn.Linear(d, d)
        self.projector = ProjectionMLP(d, arch.projector_hidden_dim, arch.projector_dim)

    def _init_all(self) -> None:
        """MAE's init over the whole network (the MLP heads' own init is overwritten by xavier too,
        as officially): xavier Linear / zero bias, LayerNorm (1, 0), tokens N(0, 0.02), patch-embed
        conv as a linear layer. Fixed position embeddings are set by their owners."""
        self.apply(init_vit_weights)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def insert_mask_tokens(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + V, D) visible tokens in shuffled order -> (B, 1 + L, D) in patch order with the
        shared ``mask_token`` at the masked positions (cls token kept first)."""
        b, n, d = x.shape
        num_masked = ids_restore.shape[1] - (n - 1)
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, num_masked, d)], dim=1)  # (B, L, D)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        return torch.cat([x[:, :1], tokens], dim=1)

    def forward_encoder(
        self, images: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W), mask bool (B, L) (True = masked; None = keep all) -> latent (B, 1 + V, D)
        after the final norm, and ids_restore (B, L) undoing the visible-first order (None if full).

        Patches are ordered by ``argsort(mask)`` (visible first) and the first V kept; position
        embeddings are added before dropping, the cls token prepended after (as mae ``models_mae.py``
        ``forward_encoder``)."""
        x = self.embed(images)  # (B, L, D)
        ids_restore = None
        if mask is not None:
            num_visible = int((~mask[0]).sum())  # the same for every row (fixed K per strategy)
            ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # (B, L), visible first
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            ids_keep = ids_shuffle[:, :num_visible]
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, V, D)
        x = self.run_blocks(self.prepend_cls(x))  # (B, 1 + V, D)
        return self.norm(x), ids_restore

    def forward_rep_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor | None) -> torch.Tensor:
        """latent (B, 1 + V, D) -> representation tokens (B, 1 + L, D): embed, re-insert mask tokens,
        (zero) position embedding, blocks, norm, projection back to the encoder width."""
        x = self.rep_decoder_embed(latent)
        if ids_restore is not None:
            x = self.insert_mask_tokens(x, ids_restore)
        x = x + self.rep_decoder_pos_embed
        for block in self.rep_decoder_blocks:
            x = block(x)
        return self.rep_decoder_pred(self.rep_decoder_norm(x))

    def forward_projection(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W) -> projector output (B, projector_dim) after token-mean pooling (cls included)."""
        latent, ids_restore = self.forward_encoder(images, mask)
        return self.projector(self.forward_rep_decoder(latent, ids_restore).mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The target branch: the full, unmasked image -> L2-normalised projection (B, projector_dim)."""
        return F.normalize(self.forward_projection(images, None).float(), dim=-1)


class FSFMPretrainModel(FSFMTargetNetwork):
    """The online network: the target's parts plus the predictor and the MAE pixel decoder; its
    ``forward`` returns the 3C losses for a masked batch given the target's projections."""

    def __init__(
        self,
        arch: PretrainArchitecture,
        norm_pix_loss: bool = True,
        weight_fr: float = 0.007,
        weight_cl: float = 0.1,
        cl_loss: str = "simsiam",
    ) -> None:
        super().__init__(arch)
        enc, dd = arch.encoder, arch.decoder_embed_dim
        self.norm_pix_loss, self.weight_fr, self.weight_cl, self.cl_loss = norm_pix_loss, weight_fr, weight_cl, cl_loss
        self.predictor = ProjectionMLP(arch.projector_dim, arch.projector_hidden_dim, arch.projector_dim)
        # Pixel decoder. Unlike MAE, mask tokens (encoder width, shared) go in before decoder_embed.
        self.decoder_embed = nn.Linear(enc.embed_dim, dd)
        self.decoder_pos_embed = _fixed_embedding(enc.num_patches + 1, dd)
        self.decoder_blocks = nn.ModuleList(Block(dd, arch.decoder_num_heads) for _ in range(arch.decoder_depth))
        self.decoder_norm = LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, enc.patch_size**2 * enc.in_chans)
        self._init_all()
        self.decoder_pos_embed.data.copy_(torch.from_numpy(sincos_2d(dd, enc.grid_size)).unsqueeze(0))

    def target_network(self) -> FSFMTargetNetwork:
        """A target network initialised as a copy of this online network's shared parameters (which
        also copies the zero rep-decoder position embedding), frozen: it only moves by EMA."""
        target = FSFMTargetNetwork(self.arch)
        own = self.state_dict()
        target.load_state_dict({k: own[k] for k in target.state_dict()})
        target.requires_grad_(False)
        return target

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + V, D) -> predicted pixels of every patch (B, L, p*p*3)."""
        x = self.decoder_embed(self.insert_mask_tokens(latent, ids_restore))  # (B, 1 + L, Dd)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # cls dropped

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patch pixels in MAE's (row, column, channel) order."""
        p, c = self.arch.encoder.patch_size, self.arch.encoder.in_chans
        b, _, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward_loss(
        self,
        images: torch.Tensor,
        pred: torch.Tensor,
        mask: torch.Tensor,
        fr_mask: torch.Tensor,
        online: torch.Tensor,
        target: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The 3C losses (computed in fp32 by ``forward``).

        rec_m: per-patch MSE averaged over all masked patches of the batch (intra-region consistency).
        rec_fr: the same over the patches of the covered region M_fr (inter-region coherency); 0 when
            the batch has none (the official code divides 0/0 there and stops on the NaN).
        cl: local-to-global correspondence between online prediction and target projection.
        loss = rec_m + weight_fr * rec_fr + weight_cl * cl.
        """
        target_pixels = self.patchify(images)  # (B, L, p*p*3) of the normalised image
        if self.norm_pix_loss:
            mean = target_pixels.mean(dim=-1, keepdim=True)
            var = target_pixels.var(dim=-1, keepdim=True)  # unbiased, as MAE
            target_pixels = (target_pixels - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred - target_pixels) ** 2).mean(dim=-1)  # (B, L)
        mask, fr_mask = mask.float(), fr_mask.float()
        rec_m = (per_patch * mask).sum() / mask.sum()
        rec_fr = (per_patch * fr_mask).sum() / fr_mask.sum().clamp(min=1.0)
        cl = self.contrastive_loss(online, target)
        loss = rec_m + self.weight_fr * rec_fr + self.weight_cl * cl
        return {"loss": loss, "rec_m": rec_m, "rec_fr": rec_fr, "cl": cl}

    def contrastive_loss(self, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L2-normalised (B, E) online predictions vs. target projections; gradient to the online side
        only, one direction (no symmetrisation), as the official code."""
        target = target.detach()
        if self.cl_loss == "simsiam":  # the paper's setting: -0.5 * mean cosine
            return -0.5 * (online * target).sum(dim=-1).mean()
        if self.cl_loss == "byol":
            return (2 - 2 * (online * target).sum(dim=-1)).mean()
        if self.cl_loss == "infonce":  # MoCo-v3 form over the local batch, tau = 0.1
            logits = online @ target.T / INFONCE_TEMPERATURE
            labels = torch.arange(online.shape[0], device=online.device)
            return F.cross_entropy(logits, labels) * 2 * INFONCE_TEMPERATURE
        raise ValueError(f"unknown cl_loss {self.cl_loss!r}")

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, mask: torch.Tensor, fr_mask: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) normalised; mask, fr_mask bool (B, L); target (B, E) the target
        network's normalised projections of the same, unmasked images -> the loss terms."""
        latent, ids_restore = self.forward_encoder(images, mask)  # (B, 1 + V, D)
        assert ids_restore is not None
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*3)
        rep = self.forward_rep_decoder(latent, ids_restore)  # (B, 1 + L, D)
        online = self.predictor(self.projector(rep.mean(dim=1)))  # (B, E)
        with torch.autocast(images.device.type, enabled=False):
            online = F.normalize(online.float(), dim=-1)
            return self.forward_loss(images.float(), pred.float(), mask, fr_mask, online, target.float())


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters by part, from the official key names: ``encoder`` (patch embed, cls, blocks, norm),
    ``pixel_decoder`` (decoder_*), ``id_network`` (mask token, rep decoder, projector, predictor),
    ``fixed`` (the frozen position embeddings), ``total``."""
    parts = {"encoder": 0, "pixel_decoder": 0, "id_network": 0, "fixed": 0}
    for name, param in model.named_parameters():
        if not param.requires_grad and name.endswith("pos_embed"):
            part = "fixed"
        elif name.startswith("decoder_"):
            part = "pixel_decoder"
        elif name.startswith(("mask_token", "rep_decoder_", "projector.", "predictor.")):
            part = "id_network"
        else:
            part = "encoder"
        parts[part] += param.numel()
    parts["total"] = sum(parts.values())
    return parts
