"""Model configuration: small dataclasses, one comment per field, JSON round-trip.

A checkpoint's ``config.json`` holds an :class:`AdaClipConfig` with the CLIP architecture
fully resolved (``ClipConfig.model_cfg``), so a checkpoint rebuilds without any hub access.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

FrameAgg = Literal["mean", "mlp", "transformer", "qscore"]
FRAME_AGGS: tuple[str, ...] = ("mean", "mlp", "transformer", "qscore")

# A small open_clip configuration that runs fast on a CPU. The vocabulary size must stay
# 49408: it is the size of the BPE vocabulary open_clip's tokenizer ships with.
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass
class ClipConfig:
    arch: str = "ViT-B-32"  # open_clip architecture name ("tiny" = TINY_CLIP_CFG)
    pretrained: str | None = None  # open_clip pretrained tag (e.g. "openai"), fetched by open_clip
    weights_file: str | None = None  # local CLIP weights (.pt / .bin / .safetensors)
    model_cfg: dict[str, Any] | None = None  # inline open_clip config; overrides `arch` lookup
    # MLP activation of the towers: True = QuickGELU (OpenAI's weights), False = GELU, None =
    # follow the weights (the pretrained tag's open_clip config, a `-quickgelu` arch name, an
    # OpenAI TorchScript file). Resolved into `model_cfg["quick_gelu"]` when the model is built.
    quick_gelu: bool | None = None


@dataclass
class PolicyConfig:
    enabled: bool = True  # False: uniform selection of K of the N candidates (no policy)
    backbone_weights: str | None = None  # local MobileNetV3-Large state dict; random if None
    freeze_backbone: bool = True  # `--freeze-cnn`: no gradient into MobileNetV3
    resolution: int = 224  # frames are resized to this before the policy backbone
    feature_dim: int = 1280  # MobileNetV3-Large feature after Linear(960->1280)+Hardswish
    hidden_dim: int = 512  # H: width of the temporal transformer
    num_heads: int = 8  # heads of the temporal self-attention block
    mlp_ratio: int = 4  # MLP width multiple in the temporal block
    scorer_hidden: int = 1024  # hidden width of the per-frame scorer
    # L2-normalise the 1280-d backbone features and scale them by sqrt(1280) before the
    # projection. Not in the paper nor its code (a deviation): it keeps a RANDOM frozen
    # backbone's shrinking activations usable. None = on without `backbone_weights`, off
    # with them; resolved (and recorded in the checkpoint) when the model is built.
    feature_rescale: bool | None = None


@dataclass
class AdaClipConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    num_candidates: int = 16  # N: candidate frames decoded per video
    top_k: int = 12  # K: frames kept and encoded by CLIP
    frame_agg: str = "mlp"  # one of FRAME_AGGS
    agg_temperature: float = 1.0  # T_agg of the score softmax
    agg_heads: int = 8  # attention heads of the transformer aggregator (must divide D)
    max_text_len: int = 32  # caption tokens (32 MSR-VTT, 64 paragraphs)
    zero_shot: bool = False  # CLIP weights only: uniform K frames, mean pooling

    def __post_init__(self) -> None:
        if isinstance(self.clip, dict):
            self.clip = ClipConfig(**self.clip)
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration."""
        if self.frame_agg not in FRAME_AGGS:
            raise ValueError(f"frame_agg must be one of {FRAME_AGGS}, got {self.frame_agg!r}")
        if not 1 <= self.top_k <= self.num_candidates:
            raise ValueError(
                f"top_k (K={self.top_k}) must be between 1 and num_candidates "
                f"(N={self.num_candidates})"
            )
        if self.max_text_len < 2:
            raise ValueError("max_text_len must be at least 2 (start and end tokens)")
        if self.agg_heads < 1:
            raise ValueError(f"agg_heads must be at least 1, got {self.agg_heads}")

    @property
    def frame_selection(self) -> str:
        """How the K frames are chosen: ``policy``, ``uniform`` (K of N) or ``all`` (K = N)."""
        if self.uses_policy:
            return "policy"
        return "all" if self.top_k == self.num_candidates else "uniform"

    @property
    def uses_policy(self) -> bool:
        """True when frames are chosen by the learned policy."""
        return self.policy.enabled and not self.zero_shot

    @property
    def aggregation(self) -> str:
        """The aggregator in effect (zero-shot always mean-pools)."""
        return "mean" if self.zero_shot else self.frame_agg

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaClipConfig:
        """Build from a dict, rejecting unknown keys so typos fail loudly."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AdaClipConfig keys: {sorted(unknown)}")
        data = copy.deepcopy(data)
        policy = data.get("policy")
        if isinstance(policy, dict) and "feature_rescale" not in policy:
            policy["feature_rescale"] = True  # written before the field existed: always on
        return cls(**data)


def tiny_config(**overrides: Any) -> AdaClipConfig:
    """A tiny, CPU-friendly configuration for tests, the demo and smoke runs."""
    cfg: dict[str, Any] = {
        "clip": ClipConfig(arch="tiny", model_cfg=copy.deepcopy(TINY_CLIP_CFG)),
        "policy": PolicyConfig(resolution=64, hidden_dim=64, num_heads=4, scorer_hidden=128),
        "num_candidates": 8,
        "top_k": 4,
    }
    cfg.update(overrides)
    return AdaClipConfig(**cfg)
