"""Frame aggregation into one video embedding (METHOD section 5).

Every query-independent aggregator maps K frame embeddings (B, K, D) to a unit video
vector (B, D) and the K aggregation weights (B, K). Q-Score is query dependent and is
exposed as a similarity function instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MeanAggregator(nn.Module):
    """v = normalize(mean_k normalize(f_k))."""

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        b, k, _ = frames.shape
        video = F.normalize(F.normalize(frames, dim=-1).mean(dim=1), dim=-1)  # (B, D)
        weights = frames.new_full((b, k), 1.0 / k)
        return video, weights


class ScoreAggregator(nn.Module):
    """Softmax-weighted sum of the ORIGINAL frame embeddings; `scorer` maps (B,K,D) -> (B,K,1)."""

    def __init__(self, scorer: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.scorer = scorer
        self.temperature = temperature

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.scorer(frames).squeeze(-1)  # (B, K)
        weights = torch.softmax(scores / self.temperature, dim=-1)
        video = torch.einsum("bk,bkd->bd", weights, frames)  # (B, D)
        return F.normalize(video, dim=-1), weights


def mlp_score_aggregator(dim: int, temperature: float = 1.0) -> ScoreAggregator:
    """MLP-Score: a_k = MLP(f_k), Linear(D->2D)-QuickGELU-Linear(2D->D)-QuickGELU-Linear(D->1)."""
    mlp = nn.Sequential(
        nn.Linear(dim, 2 * dim),
        QuickGELU(),
        nn.Linear(2 * dim, dim),
        QuickGELU(),
        nn.Linear(dim, 1),
    )
    return ScoreAggregator(mlp, temperature)


def transformer_score_aggregator(
    dim: int, heads: int = 8, temperature: float = 1.0
) -> ScoreAggregator:
    """One self-attention block over the K frames, then Linear(D->1) scores.

    Raises:
        ValueError: ``heads`` does not divide ``dim`` (no silent change of head count: the
            weights' shapes would not tell a rebuilt model the difference).
    """
    if heads < 1 or dim % heads:
        raise ValueError(
            f"the transformer aggregator needs a head count that divides the embedding "
            f"width {dim}; got agg_heads={heads}"
        )
    block = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
    )
    return ScoreAggregator(nn.Sequential(block, nn.Linear(dim, 1)), temperature)


def qscore_similarity(
    text: Tensor, frames: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Query-dependent Q-Score similarity (the paper's comparison baseline).

    For each query q (unit) and video j: w_k = softmax_k(cos(q, f_jk) / T),
    v_qj = normalize(sum_k w_k f_jk), score = q . v_qj.

    Args:
        text: (Q, D) text embeddings (normalised inside).
        frames: (V, K, D) raw frame embeddings.
        temperature: T_agg.

    Returns:
        scores (Q, V) and weights (Q, V, K).
    """
    q = F.normalize(text, dim=-1)  # (Q, D)
    cos = torch.einsum("qd,vkd->qvk", q, F.normalize(frames, dim=-1))  # (Q, V, K)
    weights = torch.softmax(cos / temperature, dim=-1)
    dots = torch.einsum("qd,vkd->qvk", q, frames)  # s_k = q . f_k (raw)
    gram = torch.einsum("vkd,vld->vkl", frames, frames)  # (V, K, K)
    numerator = (weights * dots).sum(-1)  # (Q, V)
    norm_sq = torch.einsum("qvk,vkl,qvl->qv", weights, gram, weights).clamp_min(1e-12)
    return numerator / norm_sq.sqrt(), weights


def build_aggregator(
    kind: str, dim: int, temperature: float = 1.0, heads: int = 8
) -> nn.Module | None:
    """The aggregator module for ``kind``; None for the query-dependent ``qscore``."""
    if kind == "mean":
        return MeanAggregator()
    if kind == "mlp":
        return mlp_score_aggregator(dim, temperature)
    if kind == "transformer":
        return transformer_score_aggregator(dim, heads=heads, temperature=temperature)
    if kind == "qscore":
        return None
    raise ValueError(f"unknown frame aggregation {kind!r}")
