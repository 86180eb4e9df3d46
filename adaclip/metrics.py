"""Retrieval metrics: R@k, median and mean rank (METHOD.md section 9).

A similarity matrix ``sim`` is (queries x videos); caption ``q`` describes video
``query_to_video[q]`` (the identity when several captions per video are not in play).
Ranks are zero-based (0 = the ground truth comes first).

Ties: ``ties="optimistic"`` (the default) ranks the ground truth above every item with an
equal score, so its rank is the number of items scoring STRICTLY higher (a constant
similarity matrix then looks perfect). ``ties="pessimistic"`` ranks it below every other
item with an equal score (rank = number of OTHER items scoring ``>=``; a constant matrix
then gets the worst rank). Argsort-based codes (e.g. CLIP4Clip's) break ties by position,
which lands between the two. With continuous embeddings ties are rare and both agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Ties",
    "metrics_from_ranks",
    "retrieval_metrics",
    "t2v_v2t_metrics",
    "text_to_video_ranks",
    "video_to_text_metrics",
    "video_to_text_ranks",
]

Ties = Literal["optimistic", "pessimistic"]
RECALL_AT = (1, 5, 10, 50)


def _as_matrix(sim: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(sim, Tensor):
        sim = sim.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(sim, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"sim must be a non-empty (Q, V) matrix, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("sim contains NaN")
    return arr


def _as_mapping(
    query_to_video: Sequence[int] | np.ndarray | None, n_queries: int, n_videos: int
) -> np.ndarray:
    if query_to_video is None:
        if n_queries != n_videos:
            raise ValueError(
                f"sim is {n_queries}x{n_videos}: pass query_to_video when it is not square"
            )
        return np.arange(n_queries)
    mapping = np.asarray(query_to_video)
    if mapping.shape != (n_queries,) or not np.issubdtype(mapping.dtype, np.integer):
        raise ValueError(f"query_to_video must be {n_queries} integers, got {mapping!r}")
    if mapping.min() < 0 or mapping.max() >= n_videos:
        raise ValueError(f"query_to_video values must lie in [0, {n_videos})")
    return mapping.astype(np.int64)


def _check_ties(ties: str) -> None:
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Summarise zero-based ranks.

    Args:
        ranks: integer ranks, shape (M,), 0 = first.

    Returns:
        ``{"R1", "R5", "R10", "R50"}`` = 100 * mean(rank < k); ``"MdR"`` = median(rank) + 1;
        ``"MnR"`` = mean(rank) + 1. All values are Python floats.

    MdR follows the published tables' code (CLIP4Clip's ``compute_metrics``, reused by
    X-Pool and the AdaCLIP code): ``np.median`` of the 1-based ranks, so with an even
    number of queries it is the mean of the two middle ranks and can end in .5.
    """
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"R{k}": float(100.0 * np.mean(r < k)) for k in RECALL_AT}
    out["MdR"] = float(np.median(r) + 1.0)
    out["MnR"] = float(np.mean(r) + 1.0)
    return out


def text_to_video_ranks(
    sim: np.ndarray | Tensor,
    query_to_video: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "optimistic",
) -> np.ndarray:
    """Rank of each query's ground-truth video among all videos.

    Args:
        sim: similarities, shape (Q, V).
        query_to_video: video index of each query, shape (Q,); None means ``Q == V`` and
            query i belongs to video i.
        ties: tie policy, see the module docstring.

    Returns:
        Int64 array (Q,) of zero-based ranks.
    """
    _check_ties(ties)
    s = _as_matrix(sim)  # (Q, V)
    mapping = _as_mapping(query_to_video, *s.shape)  # (Q,)
    gt = s[np.arange(s.shape[0]), mapping][:, None]  # (Q, 1)
    if ties == "optimistic":
        return (s > gt).sum(axis=1).astype(np.int64)
    return ((s >= gt).sum(axis=1) - 1).astype(np.int64)


def video_to_text_ranks(
    sim: np.ndarray | Tensor,
    query_to_video: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "optimistic",
) -> np.ndarray:
    """Rank of each video's best-ranked caption among all Q captions.

    A caption's rank in video v's column counts the other captions scoring higher
    (optimistic) or at least as high (pessimistic); a video's rank is the minimum over its
    captions, i.e. the rank of its highest-scoring caption.

    Args:
        sim: similarities, shape (Q, V).
        query_to_video: video index of each caption, shape (Q,); None means square and
            caption i belongs to video i.
        ties: tie policy, see the module docstring.

    Returns:
        Int64 array (V,) of zero-based ranks.

    Raises:
        ValueError: if some video has no caption.
    """
    _check_ties(ties)
    s = _as_matrix(sim)  # (Q, V)
    n_queries, n_videos = s.shape
    mapping = _as_mapping(query_to_video, n_queries, n_videos)  # (Q,)
    if np.bincount(mapping, minlength=n_videos).min() == 0:
        raise ValueError("every video needs at least one caption for video-to-text metrics")
    best = np.full(n_videos, -np.inf)
    np.maximum.at(best, mapping, s[np.arange(n_queries), mapping])  # (V,)
    if ties == "optimistic":
        return (s > best[None, :]).sum(axis=0).astype(np.int64)
    return ((s >= best[None, :]).sum(axis=0) - 1).astype(np.int64)


def retrieval_metrics(
    sim: np.ndarray | Tensor,
    query_to_video: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "optimistic",
) -> dict[str, float]:
    """Text-to-video retrieval metrics.

    Args:
        sim: similarities, shape (Q, V), queries x videos.
        query_to_video: video index of each query, shape (Q,); None means square and
            query i belongs to video i. Several queries may share a video.
        ties: ``"optimistic"`` (rank = count of strictly higher scores) or
            ``"pessimistic"`` (rank = count of other scores ``>=``).

    Returns:
        Dict with keys ``R1 R5 R10 R50 MdR MnR``.
    """
    return metrics_from_ranks(text_to_video_ranks(sim, query_to_video, ties))


def video_to_text_metrics(
    sim: np.ndarray | Tensor,
    query_to_video: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "optimistic",
) -> dict[str, float]:
    """Video-to-text retrieval metrics; in the square case equal to ``retrieval_metrics(sim.T)``.

    Args:
        sim: similarities, shape (Q, V), captions x videos (NOT transposed).
        query_to_video: video index of each caption, shape (Q,); None means square.
        ties: tie policy, as in :func:`retrieval_metrics`.

    Returns:
        Dict with keys ``R1 R5 R10 R50 MdR MnR`` over the V videos, each ranked by its
        best-ranked caption.
    """
    return metrics_from_ranks(video_to_text_ranks(sim, query_to_video, ties))


def t2v_v2t_metrics(
    sim: np.ndarray | Tensor,
    query_to_video: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "optimistic",
) -> dict[str, float]:
    """Both directions at once.

    Args:
        sim: similarities, shape (Q, V), captions x videos.
        query_to_video: video index of each caption, shape (Q,); None means square.
        ties: tie policy, as in :func:`retrieval_metrics`.

    Returns:
        Dict with keys ``t2v_R1 ... t2v_MnR`` and ``v2t_R1 ... v2t_MnR``.
    """
    t2v = retrieval_metrics(sim, query_to_video, ties)
    v2t = video_to_text_metrics(sim, query_to_video, ties)
    return {**{f"t2v_{k}": v for k, v in t2v.items()}, **{f"v2t_{k}": v for k, v in v2t.items()}}
