"""The official face anti-spoofing checkpoints (FLIP / few_shot_fas style, ``<domain>_vit_0_shot_checkpoint_run_N
.pth.tar``) as a classifier a model package can serve.

Their network (FSFM-CVPR25 ``finuetune/cross_domain_FAS``; ``state_dict`` keys ``backbone.vit.*``,
``embedder.bottleneck_layer_fc.*``, ``classifier.classifier_layer.*``):

* the ViT's tokens after the last block, with token 0 replaced by ``fc_norm`` of the mean patch token
  (the others are left as they are, with no final norm);
* a 512-d bottleneck (Linear, ReLU; its dropout is off at test time) applied to *every* token;
* each feature divided by sqrt(2 x its L2 norm taken over the token axis) (``norm_flag``, on at test time,
  so one face's token-0 feature depends on all of its tokens);
* a linear classifier whose weight is L2-normalised over the class axis (per input feature), on token 0:
  logits (spoof, live), the probability of class 1 being the live score.

``FlipClassifier`` computes exactly that in one graph, with the flat ViT keys of ``ViTClassifier`` (so the
encoder is ours) and the head's parameters under ``head.``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fsfm.models.checkpoints import infer_vit_config
from fsfm.models.config import ViTConfig
from fsfm.models.vit import ViTClassifier, ViTEncoder

BACKBONE = "backbone.vit."
BOTTLENECK = "embedder.bottleneck_layer_fc."
CLASSIFIER = "classifier.classifier_layer."


class FlipHead(nn.Module):
    """Bottleneck over every token, token-axis feature normalisation, class-normalised linear classifier."""

    def __init__(self, embed_dim: int, bottleneck_dim: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(embed_dim, bottleneck_dim)
        self.classifier = nn.Linear(bottleneck_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens (token 0 the pooled one) -> (B, classes) logits of token 0."""
        features = torch.relu(self.bottleneck(tokens))  # (B, T, 512)
        scale = torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp(min=1e-12).sqrt() * math.sqrt(2.0)
        weight = self.classifier.weight / torch.linalg.vector_norm(self.classifier.weight, dim=0, keepdim=True)
        return (features[:, 0] / scale[:, 0]) @ weight.T + self.classifier.bias


class FlipClassifier(ViTClassifier):
    """A global-pool ViT with the official FAS head (see the module doc)."""

    def __init__(self, config: ViTConfig, bottleneck_dim: int = 512, num_classes: int = 2) -> None:
        super().__init__(config, num_classes=num_classes, global_pool=True)
        self.head = FlipHead(config.embed_dim, bottleneck_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.classifier.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = ViTEncoder.forward(self, images)  # (B, 1 + L, D), no final norm
        pooled = self.fc_norm(tokens[:, 1:].mean(dim=1, keepdim=True))
        return self.head(torch.cat([pooled, tokens[:, 1:]], dim=1))


def is_flip_state(state: dict[str, torch.Tensor]) -> bool:
    return f"{CLASSIFIER}weight" in state and any(k.startswith(BACKBONE) for k in state)


def flip_classifier_from_state(state: dict[str, torch.Tensor], num_heads: int | None = None) -> FlipClassifier:
    """An official FAS ``state_dict`` -> a loaded ``FlipClassifier`` (the bottleneck's duplicate keys under
    ``embedder.bottleneck_layer.0`` are the same tensors and are dropped)."""
    encoder = {k.removeprefix(BACKBONE): v for k, v in state.items() if k.startswith(BACKBONE)}
    ours = {k: v for k, v in encoder.items() if not k.startswith("head.")}  # the official head is an Identity
    ours |= {f"head.bottleneck.{k.removeprefix(BOTTLENECK)}": v for k, v in state.items() if k.startswith(BOTTLENECK)}
    ours |= {f"head.classifier.{k.removeprefix(CLASSIFIER)}": v for k, v in state.items() if k.startswith(CLASSIFIER)}
    bottleneck_dim, num_classes = state[f"{CLASSIFIER}weight"].shape[1], state[f"{CLASSIFIER}weight"].shape[0]
    model = FlipClassifier(infer_vit_config(ours, num_heads), bottleneck_dim, num_classes)
    model.load_state_dict(ours, strict=True)
    return model.eval()
