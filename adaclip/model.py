"""The AdaCLIP model: policy -> Hard-Top-k -> CLIP image tower -> aggregation.

Training (``forward``): the policy scores all N candidates, Hard-Top-k picks K with a
straight-through gradient, CLIP encodes all N for A @ F, but only the K picked frames in
the autograd graph (the others get exactly zero gradient through the one-hot A).
Inference (``encode_video``): no gradient, so CLIP runs on ONLY the K kept frames.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaclip.aggregation import build_aggregator, qscore_similarity
from adaclip.clip_backbone import (
    build_clip,
    clip_context_length,
    clip_image_size,
    create_clip,
    frozen_clip_parameter_names,
    preprocess_for_clip,
    resolve_model_cfg,
)
from adaclip.config import AdaClipConfig
from adaclip.loss import MAX_LOGIT_SCALE
from adaclip.policy import PolicyNetwork
from adaclip.text import encode_text_grouped, encode_text_trimmed, tokenize
from adaclip.topk import hard_topk, time_ordered, topk_indices


@dataclass
class VideoEncoding:
    """What ``encode_video`` returns for a batch of B videos."""

    video: Tensor  # (B, D) unit video embedding
    frames: Tensor  # (B, K, D) raw CLIP embeddings of the kept frames, time order
    indices: Tensor  # (B, K) kept candidate indices, ascending (time order)
    weights: Tensor  # (B, K) aggregation weights
    logits: Tensor | None = None  # (B, N) policy logits; None without a policy


@dataclass
class TrainOutput:
    """What the training ``forward`` returns."""

    text: Tensor  # (B, D) raw text embeddings
    video: Tensor | None  # (B, D) unit video embeddings; None for query-dependent Q-Score
    frames: Tensor  # (B, K, D) selected frame embeddings
    logits: Tensor | None  # (B, N) policy logits; None without a policy
    indices: Tensor | None = None  # (B, K) kept candidate indices (the hard selection)


def uniform_indices(num_candidates: int, k: int) -> Tensor:
    """K candidate indices spread evenly over N (all N when K == N)."""
    return torch.linspace(0, num_candidates - 1, k).round().long()  # (K,)


class AdaCLIP(nn.Module):
    """Adaptive frame selection + CLIP + frame aggregation."""

    def __init__(self, config: AdaClipConfig, *, load_pretrained: bool = True) -> None:
        """Build the model.

        Args:
            config: the model configuration; copied, never modified. ``self.config`` holds
                the resolved copy (CLIP config, activation, policy rescaling) that a
                checkpoint records.
            load_pretrained: load the CLIP weights (tag or file) and the policy backbone's
                weights file. False when the weights come next from a checkpoint: nothing
                outside the checkpoint folder is opened and no hub is asked.
        """
        super().__init__()
        config = copy.deepcopy(config)
        self.clip: Any
        if load_pretrained:
            self.clip, model_cfg = create_clip(config.clip)
        else:
            if config.clip.model_cfg is None:
                raise ValueError("a checkpoint config records the resolved CLIP model_cfg")
            model_cfg = resolve_model_cfg(config.clip, consult_weights=False)
            self.clip = build_clip(model_cfg)
        config.clip.model_cfg = model_cfg  # resolved: a checkpoint rebuilds without a hub
        config.clip.quick_gelu = bool(model_cfg.get("quick_gelu", False))
        if config.policy.feature_rescale is None:
            config.policy.feature_rescale = config.policy.backbone_weights is None
        context_length = clip_context_length(model_cfg)
        if config.max_text_len > context_length:
            raise ValueError(
                f"max_text_len {config.max_text_len} exceeds the CLIP text tower's context "
                f"length ({context_length} tokens)"
            )
        self.config = config
        self.model_id: str | None = None  # set when loaded from a checkpoint folder
        self.image_size = clip_image_size(model_cfg)
        self.embed_dim = int(model_cfg["embed_dim"])
        self.policy = (
            PolicyNetwork(
                config.policy, config.num_candidates, load_backbone_weights=load_pretrained
            )
            if config.uses_policy
            else None
        )
        self.aggregator = build_aggregator(
            config.aggregation, self.embed_dim, config.agg_temperature, config.agg_heads
        )
        for name in frozen_clip_parameter_names(self.clip):
            self.clip.get_parameter(name).requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the learnable ``logit_scale`` parameter in [0, ln 100] (call after each step).

        The loss clamps the value it uses as well; clamping the parameter keeps it from
        drifting where the clamped loss gives it no gradient back (as CLIP's training does).
        """
        self.clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    # ----------------------------------------------------------------- towers
    def encode_images(self, frames: Tensor) -> Tensor:
        """uint8 frames (M, H, W, 3) -> raw CLIP image embeddings (M, D)."""
        pixels = preprocess_for_clip(frames.to(self.device), self.image_size)
        return self.clip.encode_image(pixels)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return tokenize(texts, self.config.max_text_len)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) -> raw text embeddings (B, D), padding trimmed."""
        return encode_text_trimmed(self.clip, tokens.to(self.device))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], max_tokens: int = 4096) -> Tensor:
        """Captions -> unit text embeddings (B, D), grouped by length for speed."""
        tokens = self.tokenize(texts).to(self.device)
        return F.normalize(encode_text_grouped(self.clip, tokens, max_tokens), dim=-1)

    # -------------------------------------------------------------- selection
    def select_indices(self, frames: Tensor) -> tuple[Tensor, Tensor | None]:
        """Kept candidate indices (B, K) in time order, and the policy logits (B, N)."""
        b, n = frames.shape[:2]
        if self.policy is None:
            idx = uniform_indices(n, self.config.top_k).to(self.device)
            return idx.unsqueeze(0).expand(b, -1), None
        logits = self.policy(frames.to(self.device))  # (B, N)
        return topk_indices(logits, self.config.top_k), logits

    def aggregate(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(B, K, D) frames -> unit video (B, D), weights (B, K).

        With Q-Score the stored video vector is the mean-pooled one (the first stage of a
        two-stage search); the query-dependent score is ``qscore_similarity``.
        """
        if self.aggregator is None:
            k = frames.shape[1]
            video = F.normalize(F.normalize(frames, dim=-1).mean(1), dim=-1)
            return video, frames.new_full(frames.shape[:2], 1.0 / k)
        return self.aggregator(frames)

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def encode_video(self, frames: Tensor) -> VideoEncoding:
        """Encode videos running the CLIP image tower on the K kept frames only.

        Args:
            frames: uint8 candidate frames (B, N, H, W, 3).

        Returns:
            VideoEncoding with the video vector, K frame vectors, indices and weights.
        """
        b = frames.shape[0]
        idx, logits = self.select_indices(frames)  # (B, K), (B, N)
        rows = torch.arange(b, device=idx.device).unsqueeze(1)
        kept = frames.to(self.device)[rows, idx]  # (B, K, H, W, 3)
        feats = self.encode_images(kept.flatten(0, 1)).view(b, idx.shape[1], -1)  # (B, K, D)
        video, weights = self.aggregate(feats)
        return VideoEncoding(video=video, frames=feats, indices=idx, weights=weights, logits=logits)

    # --------------------------------------------------------------- training
    def forward(
        self, frames: Tensor, tokens: Tensor, tau: float = 1.0, grad_all_frames: bool = False
    ) -> TrainOutput:
        """Training forward.

        Args:
            frames: uint8 candidate frames (B, N, H, W, 3).
            tokens: caption token ids (B, L).
            tau: Hard-Top-k temperature.
            grad_all_frames: run CLIP on all N candidates in the graph (the paper's public
                code; same loss and gradients, more memory and time). Default: the N-K
                unselected frames run without gradient (:meth:`candidate_features`).
        """
        b, n = frames.shape[:2]
        text = self.encode_tokens(tokens)  # (B, D)
        frames = frames.to(self.device)
        logits: Tensor | None = None
        if self.policy is None:
            idx = uniform_indices(n, self.config.top_k).to(self.device)
            feats = self.encode_images(frames[:, idx].flatten(0, 1)).view(b, len(idx), -1)
            kept = idx.unsqueeze(0).expand(b, -1)
        else:
            logits = self.policy(frames)  # (B, N)
            selection = time_ordered(
                hard_topk(logits, self.config.top_k, tau, training=self.training)
            )  # (B, K, N), rows in time order as at inference
            if grad_all_frames:
                all_feats = self.encode_images(frames.flatten(0, 1)).view(b, n, -1)
            else:
                all_feats = self.candidate_features(frames, selection)  # (B, N, D)
            feats = selection.to(all_feats.dtype) @ all_feats  # (B, K, D)
            kept = selection.detach().argmax(-1)  # (B, K)
        video = None if self.aggregator is None else self.aggregator(feats)[0]
        return TrainOutput(text=text, video=video, frames=feats, logits=logits, indices=kept)

    def candidate_features(self, frames: Tensor, selection: Tensor) -> Tensor:
        """CLIP features (B, N, D) of all candidates; only the selected ones carry a graph.

        ``selection`` (B, K, N) is one-hot in the forward pass, so ``A @ F`` passes no
        gradient to an unselected row of ``F``: its value only feeds the soft part of the
        straight-through gradient of ``A``. Those N-K frames run under ``no_grad`` and
        keep no activations; the K selected ones run in the graph. Loss and gradients
        equal encoding all N in the graph, at K instead of N frames of backward memory.
        """
        b, n = frames.shape[:2]
        picked = selection.detach().argmax(-1)  # (B, K) distinct indices per row
        chosen = torch.zeros(b, n, dtype=torch.bool, device=frames.device)
        chosen[torch.arange(b, device=frames.device).unsqueeze(1), picked] = True
        sel_feats = self.encode_images(frames[chosen])  # (B*K, D), row-major order
        all_feats = sel_feats.new_empty(b, n, sel_feats.shape[-1])  # (B, N, D)
        if picked.shape[1] < n:
            with torch.no_grad():
                rest_feats = self.encode_images(frames[~chosen])  # (B*(N-K), D)
            all_feats = all_feats.masked_scatter(~chosen.unsqueeze(-1), rest_feats)
        return all_feats.masked_scatter(chosen.unsqueeze(-1), sel_feats)

    def similarity(self, text: Tensor, out_video: Tensor | None, frames: Tensor) -> Tensor:
        """Cosine similarity (Q, V) between texts and videos under this model's aggregator."""
        if self.aggregator is None:
            return qscore_similarity(text, frames, self.config.agg_temperature)[0]
        assert out_video is not None
        return F.normalize(text, dim=-1) @ F.normalize(out_video, dim=-1).T

    # ------------------------------------------------------------- optimiser
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into ``new`` (policy, aggregation) and ``clip``."""
        clip_params = [p for p in self.clip.parameters() if p.requires_grad]
        clip_ids = {id(p) for p in self.clip.parameters()}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in clip_ids]
        return {"new": new, "clip": clip_params}

    def describe(self) -> dict[str, Any]:
        return {
            "arch": self.config.clip.arch,
            "embed_dim": self.embed_dim,
            "num_candidates": self.config.num_candidates,
            "top_k": self.config.top_k,
            "frame_agg": self.config.aggregation,
            "policy": self.policy is not None,
            "frame_selection": self.config.frame_selection,
        }
