"""The CLIP backbone through open_clip: resolve config, resolve weights, build, load.

Three ways to get CLIP:
  * an architecture name plus an open_clip pretrained tag (open_clip fetches the weights),
  * an architecture name plus a local weights file (.pt, .bin or .safetensors),
  * an inline open_clip config (tiny test models), random weights unless a file is given.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaclip.config import TINY_CLIP_CFG, ClipConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipWeightsError(RuntimeError):
    """CLIP weights could not be resolved (offline, unknown tag, bad file)."""


def resolve_model_cfg(clip: ClipConfig) -> dict[str, Any]:
    """Return the full open_clip model config for ``clip`` (no weights involved)."""
    if clip.model_cfg is not None:
        return copy.deepcopy(clip.model_cfg)
    if clip.arch == "tiny":
        return copy.deepcopy(TINY_CLIP_CFG)
    import open_clip

    cfg = open_clip.get_model_config(clip.arch)
    if cfg is None:
        raise ValueError(
            f"unknown CLIP architecture {clip.arch!r}; known: {', '.join(open_clip.list_models())}"
        )
    if clip.arch.endswith("-quickgelu"):
        cfg["quick_gelu"] = True
    return dict(cfg)


def build_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """Build an open_clip ``CLIP`` with random weights from a config dict."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    if "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError("CLIP configs with a Hugging Face text tower are not supported")
    return CLIP(**cfg)


def load_clip_weights(model: nn.Module, weights_file: str | Path) -> None:
    """Load a local CLIP weights file (.pt, .bin, .safetensors) into ``model``."""
    from open_clip.factory import load_checkpoint

    path = Path(weights_file)
    if not path.is_file():
        raise ClipWeightsError(f"CLIP weights file not found: {path}")
    try:
        load_checkpoint(model, str(path), strict=True)  # type: ignore[arg-type]
    except (RuntimeError, KeyError, ValueError) as err:
        raise ClipWeightsError(
            f"CLIP weights in {path} do not fit this architecture: {err}"
        ) from err


def create_clip(clip: ClipConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build CLIP with its weights; return the model and the resolved config.

    Raises:
        ClipWeightsError: a pretrained tag cannot be fetched (e.g. offline) or a weights
            file does not load.
    """
    model_cfg = resolve_model_cfg(clip)
    if clip.pretrained and not clip.weights_file:
        import open_clip

        try:
            model = open_clip.create_model(clip.arch, pretrained=clip.pretrained)
        except Exception as err:  # open_clip raises many kinds for hub/offline failures
            raise ClipWeightsError(
                f"could not load open_clip weights {clip.arch}/{clip.pretrained}: {err}. "
                "Offline? Pass a local weights file (--clip-weights FILE) instead."
            ) from err
        return model, model_cfg
    model = build_clip(model_cfg)
    if clip.weights_file:
        load_clip_weights(model, clip.weights_file)
    return model, model_cfg


def clip_image_size(model_cfg: dict[str, Any]) -> int:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return int(size if isinstance(size, int) else size[0])


def clip_context_length(model_cfg: dict[str, Any]) -> int:
    return int(model_cfg["text_cfg"].get("context_length", 77))


def preprocess_for_clip(frames: Tensor, image_size: int) -> Tensor:
    """uint8 frames (M, H, W, 3) -> normalised float pixels (M, 3, S, S) for CLIP."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (M, 3, H, W)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def frozen_clip_parameter_names(clip_model: nn.Module) -> list[str]:
    """Names of CLIP parameters the recipe keeps frozen (METHOD section 8).

    Patch embedding, class and position embeddings, ln_pre and the token embedding.
    """
    frozen_prefixes = (
        "visual.conv1.",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.",
        "token_embedding.",
        "positional_embedding",
    )
    return [n for n, _ in clip_model.named_parameters() if n.startswith(frozen_prefixes)]
