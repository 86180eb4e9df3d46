"""Compute accounting on the real model (random weights, CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from adaclip.config import AdaClipConfig, ClipConfig, tiny_config
from adaclip.flops import count_flops, image_tower_gflops, video_gflops
from adaclip.model import AdaCLIP


@pytest.fixture(scope="module")
def vit_b32() -> Iterator[AdaCLIP]:
    torch.manual_seed(0)
    yield AdaCLIP(AdaClipConfig(clip=ClipConfig(arch="ViT-B-32"), num_candidates=16, top_k=12))


def test_vit_b32_image_tower_is_8_8_gflops(vit_b32: AdaCLIP) -> None:
    # 4.4 G multiply-adds = 8.8 GFLOPs at 2 FLOPs per multiply-add (FlopCounterMode's).
    assert image_tower_gflops(vit_b32) == pytest.approx(8.8, rel=0.10)


def test_vit_b32_video_budget_adds_up(vit_b32: AdaCLIP) -> None:
    vit_b32.train()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    g = video_gflops(vit_b32, frame_size=224)
    assert vit_b32.training  # mode restored
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    per_forward = image_tower_gflops(vit_b32)
    assert (g["num_candidates"], g["top_k"]) == (16, 12)
    assert g["total"] == pytest.approx(g["policy"] + g["clip_k"] + g["aggregation"], rel=1e-9)
    assert g["clip_k"] == pytest.approx(12 * per_forward, rel=1e-6)
    assert g["no_policy_clip_n"] == pytest.approx(16 * per_forward, rel=1e-6)
    assert g["clip_per_frame"] == pytest.approx(per_forward, rel=1e-9)
    # MobileNetV3-Large at 224 px is ~0.22 G multiply-adds: about 1/20 of a CLIP forward.
    assert 0.40 < g["policy"] / 16 < 0.50
    assert 0 < g["aggregation"] < 0.1  # MLP-Score on K=12 vectors of 512
    assert g["saving"] == pytest.approx(g["no_policy_clip_n"] / g["total"])
    assert g["total"] < g["no_policy_clip_n"]


def test_eval_mode_counts_attention(vit_b32: AdaCLIP) -> None:
    """The fused inference path of nn.MultiheadAttention must not hide its FLOPs."""
    vit_b32.eval()
    try:
        assert image_tower_gflops(vit_b32) == pytest.approx(8.8, rel=0.10)
    finally:
        vit_b32.train()


def test_no_policy_mean_pooling_costs_only_clip() -> None:
    model = AdaCLIP(tiny_config(zero_shot=True))
    g = video_gflops(model, frame_size=64)
    assert g["policy"] == 0 and g["policy_resolution"] is None
    assert g["aggregation"] == 0
    assert g["total"] == pytest.approx(g["clip_k"])
    assert g["clip_k"] == pytest.approx(g["top_k"] * image_tower_gflops(model), rel=1e-6)


def test_count_flops_of_a_matmul() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
