"""Helpers of benchmarks/compute.py: FLOP counting and forward counting on tiny models."""

from __future__ import annotations

import copy

import torch
from torch import nn

from adaclip.config import TINY_CLIP_CFG, PolicyConfig
from benchmarks.compute import (
    ForwardCounter,
    Path,
    build_models,
    count_flops,
    no_policy_path,
    paper_code_path,
    time_paths,
)


def test_count_flops_linear() -> None:
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert count_flops(lambda: layer(x)) == 2 * 2 * 4 * 3


def test_forward_counts_per_path() -> None:
    policy = PolicyConfig(resolution=32, hidden_dim=32, num_heads=4, scorer_hidden=32)
    models = build_models(8, 3, copy.deepcopy(TINY_CLIP_CFG), policy, (32, 16), "cpu")
    assert models[32].clip is models[16].clip  # one shared CLIP
    clip = ForwardCounter(models[32].clip.visual)
    pol = {r: ForwardCounter(m.policy.backbone) for r, m in models.items() if m.policy}
    frames = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8)
    paths = [
        Path("ada32", "32", models[32].encode_video, clip, pol[32]),
        Path("ada16", "16", models[16].encode_video, clip, pol[16]),
        Path("paper", "32", paper_code_path(models[32]), clip, pol[32]),
        Path("none", "-", no_policy_path(models[32]), clip, None),
    ]
    with torch.no_grad():
        time_paths(paths, frames, reps=1, sync=lambda: None, videos=2)
    got = {p.name: (p.clip_per_video, p.policy_per_video) for p in paths}
    assert got == {"ada32": (3, 8), "ada16": (3, 8), "paper": (8, 8), "none": (8, 0)}
    assert all(len(p.times) == 1 for p in paths)
    video_ada = models[32].encode_video(frames).video
    video_paper = paper_code_path(models[32])(frames)
    assert torch.allclose(video_ada, video_paper, atol=1e-5)  # same selection, same vector
