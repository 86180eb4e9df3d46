"""A checkpoint's text tower alone: what a query encoder needs, without the image tower,
the policy or the aggregator.

``load_text_tower`` builds only CLIP's text parts (token and position embeddings, the
text transformer, ``ln_final``, the projection) from the checkpoint's recorded open_clip
config, and reads only their tensors from ``model.safetensors``. Its embeddings are those
of ``AdaCLIP.encode_text`` on the same checkpoint (same modules, same weights, same
trimmed and length-grouped forward pass).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaclip.checkpoint import (
    WEIGHTS_FILE,
    check_loaded_keys,
    model_id_of,
    read_checkpoint_config,
)
from adaclip.config import AdaClipConfig
from adaclip.text import encode_text_grouped, tokenize

# The CLIP parameters of the text tower, as named inside AdaCLIP's state dict.
TEXT_PREFIXES = (
    "clip.token_embedding.",
    "clip.positional_embedding",
    "clip.transformer.",
    "clip.ln_final.",
    "clip.text_projection",
)


class ClipTextTower(nn.Module):
    """The text half of an open_clip ``CLIP``, with the attribute names of ``CLIP`` (so
    ``adaclip.text.encode_text_trimmed`` runs on it unchanged)."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.model import _build_text_tower

        cfg = copy.deepcopy(model_cfg)
        text = _build_text_tower(
            int(cfg["embed_dim"]), cfg["text_cfg"], bool(cfg.get("quick_gelu", False)), None
        )
        self.transformer = text.transformer
        self.context_length = text.context_length
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.text_pool_type = text.pool_type
        self.text_eos_id = text.eos_id
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)


class TextOnlyModel(nn.Module):
    """A checkpoint's text tower with ``AdaCLIP``'s text interface (``encode_text``,
    ``tokenize``, ``config``, ``model_id``, ``embed_dim``, ``image_size``)."""

    def __init__(self, config: AdaClipConfig) -> None:
        super().__init__()
        model_cfg = config.clip.model_cfg
        if model_cfg is None:
            raise ValueError("a checkpoint config records the resolved CLIP model_cfg")
        self.config = config
        self.model_id: str | None = None
        self.clip = ClipTextTower(model_cfg)
        self.embed_dim = int(model_cfg["embed_dim"])
        size = model_cfg["vision_cfg"].get("image_size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return tokenize(texts, self.config.max_text_len)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], max_tokens: int = 4096) -> Tensor:
        """Captions -> unit text embeddings (B, D), as ``AdaCLIP.encode_text``."""
        tokens = self.tokenize(texts).to(self.device)
        return F.normalize(encode_text_grouped(self.clip, tokens, max_tokens), dim=-1)


def load_text_tower(folder: str | os.PathLike[str], device: str = "cpu") -> TextOnlyModel:
    """The text tower of a local checkpoint folder: only its tensors are read.

    Raises:
        CheckpointError: the folder is no checkpoint, or its text tensors do not match
            the recorded config.
    """
    from safetensors import safe_open

    config, _ = read_checkpoint_config(folder)
    model = TextOnlyModel(config)
    state: dict[str, Tensor] = {}
    with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
            if key.startswith(TEXT_PREFIXES):
                state[key] = weights.get_tensor(key)
    missing, unexpected = model.load_state_dict(state, strict=False)
    check_loaded_keys(folder, missing, unexpected, "text tower weights")
    model.model_id = model_id_of(folder)
    return model.to(device).eval()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
