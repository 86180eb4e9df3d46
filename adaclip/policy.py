"""The frame-selection policy network (METHOD section 2).

MobileNetV3-Large features per candidate frame -> Linear(1280->H) + position embedding
-> one pre-norm self-attention block -> scorer MLP -> one logit per frame.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaclip.config import PolicyConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MobileNetFeatures(nn.Module):
    """MobileNetV3-Large cut after the first Linear(960->1280)+Hardswish: (M,3,R,R) -> (M,1280)."""

    def __init__(self, weights_file: str | None = None) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large

        net = mobilenet_v3_large(weights=None)
        if weights_file:
            state = torch.load(Path(weights_file), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            net.load_state_dict(state)
        self.features = net.features
        self.avgpool = net.avgpool
        self.head = nn.Sequential(net.classifier[0], net.classifier[1])  # Linear + Hardswish

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x)).flatten(1)  # (M, 960)
        return self.head(x)  # (M, 1280)


class TemporalBlock(nn.Module):
    """Pre-norm residual self-attention block over the N candidates."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width * mlp_ratio), nn.GELU(), nn.Linear(width * mlp_ratio, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)  # (B, N, H)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class PolicyNetwork(nn.Module):
    """Scores each of N candidate frames; higher means more worth keeping."""

    def __init__(
        self, config: PolicyConfig, num_candidates: int, *, load_backbone_weights: bool = True
    ) -> None:
        """Build the policy.

        Args:
            config: policy settings; ``feature_rescale`` None: on without backbone weights.
            num_candidates: N, the length of the position embedding.
            load_backbone_weights: open ``config.backbone_weights``; False when the weights
                come next from a checkpoint (the file need not exist any more).
        """
        super().__init__()
        self.config = config
        self.feature_rescale = (
            config.backbone_weights is None
            if config.feature_rescale is None
            else config.feature_rescale
        )
        self.backbone = MobileNetFeatures(
            config.backbone_weights if load_backbone_weights else None
        )
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.proj = nn.Linear(config.feature_dim, config.hidden_dim)
        self.pos_embedding = nn.Parameter(torch.zeros(num_candidates, config.hidden_dim))
        nn.init.normal_(self.pos_embedding, std=0.01)
        self.temporal = TemporalBlock(config.hidden_dim, config.num_heads, config.mlp_ratio)
        self.scorer = nn.Sequential(
            nn.Linear(config.hidden_dim, config.scorer_hidden),
            nn.ReLU(),
            nn.Linear(config.scorer_hidden, 1),
        )

    def train(self, mode: bool = True) -> PolicyNetwork:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics stay fixed
        return self

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 frames (M, H, W, 3) -> ImageNet-normalised (M, 3, R, R)."""
        r = self.config.resolution
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, frames: Tensor) -> Tensor:
        """Frame logits.

        Args:
            frames: uint8 candidate frames (B, N, H, W, 3).

        Returns:
            (B, N) logits s_i.
        """
        b, n = frames.shape[:2]
        pixels = self.preprocess(frames.flatten(0, 1))  # (B*N, 3, R, R)
        if self.config.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(pixels)
        else:
            feats = self.backbone(pixels)  # (B*N, 1280)
        if self.feature_rescale:
            # Unit-RMS features (a deviation from the paper): a random, frozen MobileNetV3
            # shrinks activations ~10x per stage; this keeps the projection's input usable.
            feats = F.normalize(feats, dim=-1) * feats.shape[-1] ** 0.5
        x = self.proj(feats.view(b, n, -1)) + self.pos_embedding[:n]  # (B, N, H)
        x = self.temporal(x)
        return self.scorer(x).squeeze(-1)  # (B, N)
