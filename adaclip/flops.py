"""Compute accounting: GFLOPs per video, counted on the real model.

Counts come from ``torch.utils.flop_counter.FlopCounterMode`` running the model's own
forward passes (matrix products, convolutions, attention; element-wise work such as
activations, normalisation and resizing is not counted, as in the usual tables).

Convention: FlopCounterMode counts a multiply-add as 2 FLOPs. CLIP ViT-B/32 at 224 px
is 4.4 G multiply-adds, i.e. 8.8 GFLOPs in this convention, the figure the issue and
the usual ViT tables quote; so the numbers here are directly comparable to 8.8. (The
paper's own script, ``utils/flops_table.py``, prints ptflops' multiply-add count under
the label "GFLOPS": divide our numbers by 2 to compare with its output.)

Per video (METHOD.md section 4, inference): the policy on all N candidates, the CLIP
image tower on the K kept frames only, then aggregation; next to it the no-policy
figure of the same configuration, the CLIP image tower on all N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from adaclip.model import AdaCLIP

__all__ = ["count_flops", "image_tower_gflops", "video_gflops"]

_GIGA = 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of running ``fn()`` once, without gradients.

    ``nn.MultiheadAttention``'s inference fast path (one fused kernel, taken in eval
    mode without gradients) is invisible to FlopCounterMode, so it is switched off while
    counting: the math path does the same work and every product in it is counted.
    """
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def _random_frames(count: int, frame_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (count, frame_size, frame_size, 3), generator=generator)
    return frames.to(torch.uint8).to(device)


def image_tower_gflops(model: AdaCLIP) -> float:
    """GFLOPs of one CLIP image-tower forward on one image at CLIP's input size."""
    size = model.image_size
    pixels = torch.zeros(1, 3, size, size, device=model.device)
    return count_flops(lambda: model.clip.encode_image(pixels)) / _GIGA


def video_gflops(model: AdaCLIP, frame_size: int = 224) -> dict[str, Any]:
    """GFLOPs one video costs at inference, by stage, for ``model``'s configuration.

    Args:
        model: the model as configured (N = ``num_candidates``, K = ``top_k``, the
            policy's resolution, the aggregator).
        frame_size: side of the decoded square candidate frames; the policy and CLIP
            resize from it (resizing is not counted).

    Returns:
        ``policy`` (N frames; 0 without a policy), ``clip_k`` (image tower on K frames),
        ``aggregation``, ``total`` (their sum), ``no_policy_clip_n`` (image tower on all
        N: the paper's uniform-sampling baseline figure), ``clip_per_frame``,
        ``saving`` (``no_policy_clip_n / total``), ``num_candidates``, ``top_k`` and
        ``convention``.
    """
    cfg = model.config
    n, k = cfg.num_candidates, cfg.top_k
    device = model.device
    frames = _random_frames(n, frame_size, device)  # (N, S, S, 3)
    was_training = model.training
    model.eval()
    try:
        policy = 0
        if model.policy is not None:
            policy_net = model.policy
            policy = count_flops(lambda: policy_net(frames.unsqueeze(0)))
        clip_k = count_flops(lambda: model.encode_images(frames[:k]))
        # Image-tower FLOPs are linear in the batch: N frames cost N single forwards.
        clip_one = count_flops(lambda: model.encode_images(frames[:1]))
        clip_n = clip_one * n
        feats = torch.randn(1, k, model.embed_dim, device=device)  # values do not matter
        aggregation = count_flops(lambda: model.aggregate(feats))
    finally:
        model.train(was_training)
    total = policy + clip_k + aggregation
    return {
        "policy": policy / _GIGA,
        "clip_k": clip_k / _GIGA,
        "aggregation": aggregation / _GIGA,
        "total": total / _GIGA,
        "no_policy_clip_n": clip_n / _GIGA,
        "clip_per_frame": clip_one / _GIGA,
        "saving": clip_n / total if total else float("nan"),
        "num_candidates": n,
        "top_k": k,
        "frame_size": frame_size,
        "policy_resolution": cfg.policy.resolution if model.policy is not None else None,
        "convention": "GFLOPs, 2 FLOPs per multiply-add (torch FlopCounterMode)",
    }
