"""What the policy chose: kept-position histogram and selection entropy per epoch.

Training accumulates both over an epoch's hard Hard-Top-k picks (all ranks summed);
evaluation over the inference picks (top-k of the logits). The entropy is that of the
policy's softmax over the N candidates, in nats, averaged over videos: ``ln N`` is a flat
(undecided) policy, 0 a policy that puts all its mass on one frame.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SelectionStats:
    """Accumulates kept candidate positions and policy entropies over batches."""

    def __init__(self, num_candidates: int) -> None:
        self.histogram = torch.zeros(num_candidates, dtype=torch.float64)  # (N,)
        self.entropy_sum = torch.zeros((), dtype=torch.float64)
        self.videos = torch.zeros((), dtype=torch.float64)  # videos with policy logits

    def update(self, indices: Tensor | None, logits: Tensor | None) -> None:
        """Add one batch: kept ``indices`` (B, K) and policy ``logits`` (B, N) or None."""
        if indices is not None:
            counts = torch.bincount(indices.detach().flatten().cpu(), minlength=len(self.histogram))
            self.histogram += counts.to(torch.float64)
        if logits is not None:
            logp = torch.log_softmax(logits.detach().float(), dim=-1)  # (B, N)
            self.entropy_sum += float(-(logp.exp() * logp).sum(-1).sum())
            self.videos += logits.shape[0]

    def all_reduce(self) -> None:
        """Sum over the data-parallel ranks (collective: every rank calls it)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        packed = torch.cat([self.histogram, self.entropy_sum[None], self.videos[None]])
        torch.distributed.all_reduce(packed)
        n = len(self.histogram)
        self.histogram, self.entropy_sum, self.videos = packed[:n], packed[n], packed[n + 1]

    def summary(self) -> dict[str, Any]:
        """``kept_position_histogram`` (N counts) and ``selection_entropy`` (None: no policy)."""
        entropy = float(self.entropy_sum / self.videos) if self.videos > 0 else None
        return {
            "kept_position_histogram": [int(c) for c in self.histogram.round().tolist()],
            "selection_entropy": entropy,
        }
