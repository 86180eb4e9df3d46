"""Differentiable Hard-Top-k frame selection (METHOD.md section 3).

Training uses a Gumbel-perturbed, iteratively re-weighted softmax whose rows are made
one-hot in the forward pass with a straight-through estimator; inference keeps the K
largest logits. All arithmetic of the training path runs in float32 (or wider), whatever
the dtype of the logits, and the result is cast back to the logits' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "hard_topk",
    "sample_gumbel",
    "temperature_schedule",
    "time_ordered",
    "topk_indices",
]

_LOG_PROB_FLOOR = math.log(1e-8)  # l = log softmax(s) is clamped here
# log(max(1 - p, 1e-40)): 1e-40 is a float32 subnormal (> 0, so the log is finite, about
# -92.1). The loop runs in float32 or wider (compute_dtype below), never in half precision,
# where this floor would flush to zero.
_ONE_MINUS_P_FLOOR = 1e-40
# U ~ torch.rand lies in [0, 1): its largest float32 value, 1 - 2**-24, gives a finite
# Gumbel draw (about -16.6), so only the lower end needs a floor. (A floor of 1 - 1e-10 at
# the top would round to 1.0 in float32 and guard nothing.)
_UNIFORM_EPS = 1e-10  # U >= eps so that -log(-log U) >= about -3.1 stays finite


def sample_gumbel(
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw i.i.d. Gumbel(0, 1) noise in float32 as ``-log(-log(U))``.

    Args:
        shape: shape of the noise tensor.
        device: device of the returned tensor (default: the generator's, else CPU).
        generator: optional random generator; the draw happens on its device and is then
            moved, so a CPU generator can seed noise for CUDA logits.

    Returns:
        Float32 tensor of ``shape`` with Gumbel(0, 1) samples.
    """
    draw_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float32)
    u = u.clamp(min=_UNIFORM_EPS)
    g = -torch.log(-torch.log(u))
    return g if device is None else g.to(device)


def _check_logits_and_k(logits: Tensor, k: int) -> int:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    n = logits.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int with 1 <= k <= N={n}, got {k!r}")
    return n


def hard_topk(
    logits: Tensor,
    k: int,
    tau: float,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Select ``k`` of ``N`` frames per row as one-hot selection rows.

    Training (METHOD.md section 3): ``l = log_softmax(s)`` clamped at ``log 1e-8``;
    ``y = l + g`` with one Gumbel draw per call; ``p_0 = 0`` and for ``j = 1..k``:
    ``y += log(max(1 - p_{j-1}, 1e-40))``, ``p_j = softmax(y / tau)``, ``idx_j`` = argmax of
    ``p_j`` over frames not chosen yet. The result is ``H + (P - stopgrad(P))``, which equals
    the straight-through ``H - stopgrad(P) + P`` but is exactly one-hot in the forward
    pass (``P - P`` is exactly zero in floating point, ``(1 - p) + p`` need not be 1).

    Inference (``training=False``): no noise and no softmax; rows are the one-hot vectors
    of the ``k`` largest logits, ordered by descending logit. No gradient flows.

    Args:
        logits: frame scores ``s``, shape (B, N), any floating dtype.
        k: number of frames to keep, ``1 <= k <= N``.
        tau: softmax temperature (> 0); used only when ``training``.
        training: relaxed, noisy selection with straight-through gradients if True.
        generator: optional random generator for the Gumbel noise (reproducibility).

    Returns:
        Selection tensor A, shape (B, K, N), dtype of ``logits``. Each row is one-hot and
        the K indices of a batch element are distinct. ``A @ F`` with ``F`` (B, N, D)
        gives the kept frame features (B, K, D).

    Raises:
        ValueError: if ``logits`` is not 2-D, ``k`` is out of range, or ``tau <= 0``.
    """
    n = _check_logits_and_k(logits, k)
    if not training:
        idx = torch.topk(logits.detach(), k, dim=-1, sorted=True).indices  # (B, K)
        return F.one_hot(idx, n).to(logits.dtype)  # (B, K, N)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")

    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p = F.log_softmax(logits.to(compute_dtype), dim=-1).clamp(min=_LOG_PROB_FLOOR)  # (B, N)
    noise = sample_gumbel(tuple(logits.shape), device=logits.device, generator=generator)
    y = log_p + noise.to(compute_dtype)  # (B, N)

    chosen = torch.zeros_like(logits, dtype=torch.bool)  # (B, N)
    p = torch.zeros_like(y)  # (B, N), p_0 = 0
    soft_rows: list[Tensor] = []
    hard_idx: list[Tensor] = []
    for _ in range(k):
        y = y + torch.log((1.0 - p).clamp(min=_ONE_MINUS_P_FLOOR))
        p = torch.softmax(y / tau, dim=-1)  # (B, N)
        idx = p.detach().masked_fill(chosen, -1.0).argmax(dim=-1)  # (B,)
        chosen = chosen.scatter(1, idx.unsqueeze(1), True)
        soft_rows.append(p)
        hard_idx.append(idx)

    soft = torch.stack(soft_rows, dim=1)  # (B, K, N)
    hard = F.one_hot(torch.stack(hard_idx, dim=1), n).to(compute_dtype)  # (B, K, N)
    return (hard + (soft - soft.detach())).to(logits.dtype)


def time_ordered(selection: Tensor) -> Tensor:
    """Reorder the K one-hot rows of a selection (B, K, N) by frame index (time order).

    ``hard_topk`` returns rows in the order they were picked; inference keeps frames in
    time order (``topk_indices``). Sorting the rows in training too means no part of the
    model ever sees frames in another order at training than at inference. The reorder is
    a gather, so the straight-through gradient of every row is kept.
    """
    idx = selection.detach().argmax(dim=-1)  # (B, K)
    order = idx.argsort(dim=-1)  # (B, K)
    return selection.gather(1, order.unsqueeze(-1).expand_as(selection))


def topk_indices(logits: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest logits per row, in time (ascending index) order.

    Args:
        logits: frame scores, shape (B, N).
        k: number of frames to keep, ``1 <= k <= N``.

    Returns:
        LongTensor (B, K), each row sorted ascending, so the kept frames stay in
        timestamp order.

    Raises:
        ValueError: if ``logits`` is not 2-D or ``k`` is out of range.
    """
    _check_logits_and_k(logits, k)
    idx = torch.topk(logits.detach(), k, dim=-1, sorted=False).indices  # (B, K)
    return idx.sort(dim=-1).values


def temperature_schedule(
    epoch: int, tau0: float = 5.0, decay: float = 0.045, tau_min: float = 0.5
) -> float:
    """Hard-Top-k temperature for an epoch: ``max(tau0 * exp(-decay * epoch), tau_min)``.

    Args:
        epoch: zero-based epoch index.
        tau0: temperature at epoch 0.
        decay: exponential decay rate per epoch.
        tau_min: lower bound.

    Returns:
        The temperature as a float.
    """
    return max(tau0 * math.exp(-decay * epoch), tau_min)
