"""Symmetric InfoNCE over the global (all-gathered) batch (METHOD.md section 7).

Gradient semantics under data parallelism (world size W, every rank holding B local pairs):
every rank gathers all W*B embeddings and computes the SAME global loss L. The backward of
:func:`all_gather_with_grad` sums the incoming gradient over ranks and keeps the local
slice, so rank r's local embeddings receive ``sum_r' dL_r'/dx_r = W * dL/dx_r``. DDP then
AVERAGES parameter gradients over the W ranks, which cancels the factor W exactly: the
averaged gradient of any parameter upstream of the embeddings is ``dL/dtheta``, the
gradient of the single-process loss on the concatenated batch. Parameters used directly in
the loss on every rank (``logit_scale``) get ``dL/dscale`` on each rank, and the DDP
average leaves that unchanged. So plain DDP with this loss reproduces single-process
training on the global batch; do not rescale the loss by W.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_LOGIT_SCALE", "all_gather_with_grad", "symmetric_infonce"]

MAX_LOGIT_SCALE = math.log(100.0)  # logit_scale is clamped to <= ln 100 (scale <= 100)


def _distributed_world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather in forward; sum-all-reduce of the gradient and local slice in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        if any(int(s.item()) != x.shape[0] for s in sizes):
            raise ValueError(
                f"all_gather_with_grad needs equal batch sizes on every rank, got "
                f"{[int(s.item()) for s in sizes]}"
            )
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank = dist.get_rank()
        ctx.local_batch = x.shape[0]
        return torch.cat(parts, dim=0)  # (W*B, D)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # (W*B, D)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_batch
        return grad[start : start + ctx.local_batch]  # (B, D)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Differentiable all-gather along dim 0, in rank order.

    Without an initialised process group (or with world size 1) ``x`` is returned
    unchanged. The backward pass sums the gradient over ranks and returns the local slice
    (see the module docstring for how this combines with DDP's averaging). Every rank must
    call it with the same batch size (checked with one small extra collective).

    Args:
        x: local tensor, shape (B, D) (any trailing shape works).

    Returns:
        Tensor (W*B, D): rank r's rows at ``[r*B, (r+1)*B)``.

    Raises:
        ValueError: if the ranks hold different batch sizes.
    """
    if _distributed_world_size() == 1:
        return x
    out: Tensor = _AllGatherWithGrad.apply(x)
    return out


def symmetric_infonce(
    text_emb: Tensor, video_emb: Tensor, logit_scale: Tensor, gather: bool = True
) -> Tensor:
    """CLIP's symmetric contrastive loss over the global batch.

    ``S = exp(min(logit_scale, ln 100)) * normalize(q) @ normalize(v).T`` over the gathered
    batch and ``loss = (CE(S, arange) + CE(S.T, arange)) / 2``. Every rank computes the same
    global loss; gradients reach the local embeddings through :func:`all_gather_with_grad`.
    Half-precision inputs are computed in float32.

    Args:
        text_emb: text embeddings, shape (B, D), not necessarily normalised.
        video_emb: matching video embeddings, shape (B, D); row i pairs with text row i.
        logit_scale: scalar tensor, the LOG of the inverse temperature (CLIP's parameter).
        gather: gather embeddings across data-parallel ranks when a process group exists.

    Returns:
        Scalar loss tensor.

    Raises:
        ValueError: if the embedding shapes differ or are not 2-D.
    """
    if text_emb.dim() != 2 or text_emb.shape != video_emb.shape:
        raise ValueError(
            f"text_emb and video_emb must both be (B, D), got {tuple(text_emb.shape)} and "
            f"{tuple(video_emb.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(text_emb.dtype, video_emb.dtype), torch.float32)
    q = F.normalize(text_emb.to(dtype), dim=-1)  # (B, D)
    v = F.normalize(video_emb.to(dtype), dim=-1)  # (B, D)
    if gather:
        q = all_gather_with_grad(q)  # (W*B, D)
        v = all_gather_with_grad(v)  # (W*B, D)
    scale = logit_scale.to(dtype).clamp(max=MAX_LOGIT_SCALE).exp()
    sim = scale * q @ v.T  # (W*B, W*B)
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2
