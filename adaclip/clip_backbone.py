"""The CLIP backbone through open_clip: resolve config, resolve weights, build, load.

Three ways to get CLIP:
  * an architecture name plus an open_clip pretrained tag (open_clip fetches the weights),
  * an architecture name plus a local weights file (.pt, .bin, .safetensors, or OpenAI's
    TorchScript .pt),
  * an inline open_clip config (tiny test models), random weights unless a file is given.
"""

from __future__ import annotations

import copy
import zipfile
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


def resolve_model_cfg(clip: ClipConfig, *, consult_weights: bool = True) -> dict[str, Any]:
    """Return the full open_clip model config for ``clip`` (no weights are loaded).

    ``quick_gelu`` is always set in the result (see :func:`resolve_quick_gelu`), so the
    config a checkpoint records names the activation its weights were trained with.
    ``consult_weights=False`` (rebuilding from a checkpoint) never looks at the pretrained
    tag's config or the weights file: the recorded config alone decides.
    """
    if clip.model_cfg is not None:
        cfg = copy.deepcopy(clip.model_cfg)
    elif clip.arch == "tiny":
        cfg = copy.deepcopy(TINY_CLIP_CFG)
    else:
        import open_clip

        found = open_clip.get_model_config(clip.arch)
        if found is None:
            raise ValueError(
                f"unknown CLIP architecture {clip.arch!r}; known: "
                f"{', '.join(open_clip.list_models())}"
            )
        cfg = dict(found)
    cfg["quick_gelu"] = resolve_quick_gelu(clip, cfg, consult_weights=consult_weights)
    return cfg


def resolve_quick_gelu(
    clip: ClipConfig, model_cfg: dict[str, Any], *, consult_weights: bool = True
) -> bool:
    """The MLP activation the weights need: True for QuickGELU, False for GELU.

    In order of precedence: an explicit ``clip.quick_gelu``; a ``-quickgelu`` architecture
    name; the pretrained tag's open_clip config (every ``openai`` tag says QuickGELU, and
    open_clip 3.x only warns when the built tower disagrees); a weights file that is an
    OpenAI TorchScript archive; the model config's own ``quick_gelu``; GELU.
    """
    if clip.quick_gelu is not None:
        return clip.quick_gelu
    if clip.arch.endswith("-quickgelu"):
        return True
    if not consult_weights:
        return bool(model_cfg.get("quick_gelu", False))
    if clip.pretrained and clip.arch != "tiny":
        tag_cfg = pretrained_tag_cfg(clip.arch, clip.pretrained, required=False)
        if tag_cfg:
            return bool(tag_cfg.get("quick_gelu", False))
    if clip.weights_file and is_torchscript_archive(clip.weights_file):
        return True  # OpenAI's original releases are TorchScript archives, all QuickGELU
    return bool(model_cfg.get("quick_gelu", False))


def pretrained_tag_cfg(arch: str, tag: str, *, required: bool = True) -> dict[str, Any]:
    """open_clip's pretrained config of ``(arch, tag)`` ({} if unknown and not required)."""
    import open_clip

    cfg = dict(open_clip.get_pretrained_cfg(arch, tag))
    if not cfg and required:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipWeightsError(
            f"open_clip has no pretrained weights {arch}/{tag}; known tags for {arch}: "
            f"{', '.join(known) or 'none'}. A local file: --clip-weights FILE."
        )
    return cfg


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip archive (how OpenAI released its CLIP weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def build_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """Build an open_clip ``CLIP`` with random weights from a config dict."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    if "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError("CLIP configs with a Hugging Face text tower are not supported")
    return CLIP(**cfg)


def download_pretrained_weights(arch: str, tag: str) -> str:
    """Local path of the weights of an open_clip pretrained tag (fetched and cached by open_clip).

    Raises:
        ClipWeightsError: unknown tag, or the weights cannot be fetched (e.g. offline).
    """
    from open_clip.pretrained import download_pretrained

    tag_cfg = pretrained_tag_cfg(arch, tag)
    try:
        path = download_pretrained(tag_cfg)
    except Exception as err:  # hub and URL fetches fail in many ways offline
        raise ClipWeightsError(
            f"could not fetch open_clip weights {arch}/{tag}: {err}. "
            "Offline? Pass a local weights file (--clip-weights FILE) instead."
        ) from err
    if not path:
        raise ClipWeightsError(f"open_clip has no download location for {arch}/{tag}")
    return str(path)


def load_clip_weights(model: nn.Module, weights_file: str | Path) -> None:
    """Load a local CLIP weights file into ``model``.

    Accepts open_clip checkpoints (.pt, .bin, .safetensors) and OpenAI's TorchScript
    archives (read with ``torch.jit.load``; ``torch.load(weights_only=True)`` refuses them).
    """
    from open_clip.factory import load_checkpoint

    path = Path(weights_file)
    if not path.is_file():
        raise ClipWeightsError(f"CLIP weights file not found: {path}")
    try:
        if is_torchscript_archive(path):
            model.load_state_dict(_torchscript_state_dict(model, path), strict=True)
        else:
            load_checkpoint(model, str(path), strict=True)  # type: ignore[arg-type]
    except (RuntimeError, KeyError, ValueError) as err:
        raise ClipWeightsError(
            f"CLIP weights in {path} do not fit this architecture: {err}"
        ) from err


def _torchscript_state_dict(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive, without the entries that are not weights.

    OpenAI's archives carry ``input_resolution``, ``context_length`` and ``vocab_size`` as
    tensors, and a scripted module lists non-persistent buffers (``attn_mask``).
    """
    state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    persistent = set(model.state_dict())
    for name, _ in model.named_buffers():
        if name not in persistent:
            state.pop(name, None)
    return state


def create_clip(clip: ClipConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build CLIP with its weights; return the model and the resolved config.

    Resolve the config (activation included), resolve the weights (a local file, else the
    pretrained tag's file fetched by open_clip), build, load.

    Raises:
        ClipWeightsError: a pretrained tag cannot be fetched (e.g. offline) or a weights
            file does not load.
    """
    model_cfg = resolve_model_cfg(clip)
    weights = clip.weights_file
    if weights is None and clip.pretrained:
        weights = download_pretrained_weights(clip.arch, clip.pretrained)
    model = build_clip(model_cfg)
    if weights:
        load_clip_weights(model, weights)
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
