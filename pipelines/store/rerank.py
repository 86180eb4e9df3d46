"""Exact Q-Score re-ranking (METHOD.md section 5) over frames fetched from the index.

Both backends normalise vectors stored under cosine distance, so the index hands back unit
frame vectors u_k; the store keeps the raw norms n_k in the payload (`frame_norms`), and
f_k = n_k * u_k recovers the raw CLIP frame embeddings exactly (up to float32 rounding).

For a query q (normalised here, as the text tower's output is):
    c_k   = cos(q, f_k) = q . u_k
    w     = softmax_k(c_k / T)
    v_q   = normalize(sum_k w_k f_k)
    score = q . v_q = (sum_k w_k n_k c_k) / |sum_k w_k n_k u_k|

Videos with fewer frames than the batch are padded with norm 0: a zero-norm frame is
treated as absent (left out of the softmax and of the best moment).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_EPS = 1e-12


def frame_cosines(query: npt.ArrayLike, frames: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """cos(q, f_k) for every candidate frame.

    Args:
        query: (D,) query embedding, any norm.
        frames: (C, K, D) unit-norm frame vectors (zero rows for padding).

    Returns:
        (C, K) cosines; padded frames get 0.
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    u = np.asarray(frames, dtype=np.float64)
    if u.ndim != 3 or u.shape[-1] != q.shape[0]:
        raise ValueError(f"frames must be (C, K, {q.shape[0]}), got {u.shape}")
    q = q / max(float(np.linalg.norm(q)), _EPS)
    return np.einsum("ckd,d->ck", u, q)  # (C, K)


def qscore_rerank(
    query: npt.ArrayLike,
    frames: npt.ArrayLike,
    norms: npt.ArrayLike,
    temperature: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact Q-Score of C candidate videos for one query.

    Args:
        query: (D,) query embedding (normalised here).
        frames: (C, K, D) unit-norm frame vectors u_k as stored by the index.
        norms: (C, K) raw frame norms n_k (0 marks a padded, absent frame).
        temperature: T_agg > 0 of the softmax over cos(q, f_k).

    Returns:
        scores: (C,) q . normalize(sum_k w_k f_k).
        best_frame: (C,) index k of the frame with the highest cos(q, f_k).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = np.asarray(frames, dtype=np.float64)  # (C, K, D)
    n = np.asarray(norms, dtype=np.float64)  # (C, K)
    if n.shape != u.shape[:2]:
        raise ValueError(f"norms {n.shape} do not match frames {u.shape[:2]}")
    cos = frame_cosines(query, u)  # (C, K)
    present = n > 0
    if not present.any(axis=1).all():
        raise ValueError("every candidate needs at least one frame with a non-zero norm")

    logits = np.where(present, cos / temperature, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)  # exp(-inf) = 0 for padding
    w /= w.sum(axis=1, keepdims=True)  # (C, K)

    wn = w * n  # weights on the unit vectors: sum_k w_k f_k = sum_k (w_k n_k) u_k
    v = np.einsum("ck,ckd->cd", wn, u)  # (C, D), un-normalised v_q
    numer = (wn * cos).sum(axis=1)  # q . v  (q unit norm)
    scores = numer / np.maximum(np.linalg.norm(v, axis=1), _EPS)
    best = np.where(present, cos, -np.inf).argmax(axis=1).astype(np.int64)
    return scores, best
