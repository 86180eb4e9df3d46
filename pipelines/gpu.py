"""Where the index job's model actors run: GPU decisions that hold on autoscaling clusters.

``--use-gpu`` unset (auto) asks whether the cluster has GPUs *or can launch them*: a
cluster whose GPU worker group scales from zero shows no GPU in ``cluster_resources()``
when the job is submitted, but its autoscaler config (which Ray Data itself reads to plan
autoscaling) lists the GPU node type. ``--use-gpu true`` on a node without CUDA is an
error, never a silent run on the CPU.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("adaclip.index")


class NoCudaError(RuntimeError):
    """A model actor was asked to use a GPU and sees no CUDA device."""


def cluster_can_have_gpus() -> bool:
    """GPUs in the cluster now, or a GPU node type its autoscaler can launch."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    try:  # Ray's own view of the autoscaler config (what Ray Data autoscaling reads)
        from ray._private.state import state

        limits: dict[str, Any] | None = state.get_max_resources_from_cluster_config()
    except Exception as err:  # no autoscaler (a local cluster) or another Ray version
        log.debug("no autoscaler config: %s", err)
        return False
    return bool(limits and limits.get("GPU", 0))


def model_device(use_gpu: bool) -> str:
    """``"cuda"`` for a GPU actor (raises :class:`NoCudaError` without CUDA), else ``"cpu"``."""
    import torch

    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise NoCudaError(
            "--use-gpu is set but this model actor sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); check the node's "
            "driver and CUDA_VISIBLE_DEVICES, or run with --use-gpu false"
        )
    return "cuda"
