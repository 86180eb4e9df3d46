"""Model actors and GPUs: no silent CPU fallback, GPU decision that sees autoscaling, bf16."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipelines.gpu import NoCudaError, cluster_can_have_gpus, model_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_use_gpu_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(NoCudaError, match="--use-gpu is set but this model actor sees no CUDA"):
        model_device(True)
    assert model_device(False) == "cpu"


@pytest.mark.integration
def test_gpu_nodes_that_scale_from_zero_count(ray_cluster: Any, monkeypatch: Any) -> None:
    from ray._private.state import state

    assert ray_cluster.cluster_resources().get("GPU", 0) == 0
    assert cluster_can_have_gpus() is False  # a local cluster: no autoscaler config
    # an autoscaling cluster whose GPU group is at zero nodes now, up to 4 x 8 GPUs
    monkeypatch.setattr(
        state, "get_max_resources_from_cluster_config", lambda: {"CPU": 512, "GPU": 32}
    )
    assert cluster_can_have_gpus() is True
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64})
    assert cluster_can_have_gpus() is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_model_stage_matches_fp32() -> None:
    from benchmarks.gpu_check import bf16_check

    figures = bf16_check("cuda", smoke=True)
    assert figures["min_cosine"] > 0.99 and figures["kept_frames_agree"] >= 0.75
    assert np.isfinite(figures["max_abs_diff"])
