"""Exact Q-Score re-ranking (METHOD.md section 5) over frames fetched from the index.

Both backends normalise vectors stored under cosine distance, so the index hands back unit
frame vectors u_k; the store keeps the raw norms n_k in the payload (`frame_norms`), and
f_k = n_k * u_k recovers the raw CLIP frame embeddings exactly (up to float32 rounding).
It also keeps each video's K x K Gram matrix G_kl = f_k . f_l (`frame_gram`), computed
once at index time, so that no pooled D-dimensional vector is built per query.

For a query q (normalised here, as the text tower's output is):
    c_k   = cos(q, f_k) = q . u_k
    w     = softmax_k(c_k / T)
    v_q   = normalize(sum_k w_k f_k)
    score = q . v_q = (sum_k w_k n_k c_k) / sqrt(w^T G w)        (|sum_k w_k f_k|^2 = w^T G w)

This is the fast exact form (c) of `benchmarks/search_speed.py`. Videos with fewer frames
than the batch are padded with norm 0: a zero-norm frame is treated as absent (left out of
the softmax and of the best moment).
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
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    u = np.asarray(frames, dtype=np.float32)
    if u.ndim != 3 or u.shape[-1] != q.shape[0]:
        raise ValueError(f"frames must be (C, K, {q.shape[0]}), got {u.shape}")
    q = q / max(float(np.linalg.norm(q)), _EPS)
    # einsum, not `@`: a matrix-vector product this small goes to OpenBLAS's threads,
    # which on a busy CPU made it 50-100x slower (18 ms instead of 0.2-0.4 ms here).
    return np.einsum("ckd,d->ck", u, q).astype(np.float64)


def gram_matrices(frames: npt.ArrayLike, norms: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """G_kl = f_k . f_l of raw frames f_k = n_k u_k: (C, K, D), (C, K) -> (C, K, K)."""
    u = np.asarray(frames, dtype=np.float64)
    n = np.asarray(norms, dtype=np.float64)
    return np.einsum("ckd,cld->ckl", u, u) * n[:, :, None] * n[:, None, :]


def qscore_from_cosines(
    cos: npt.ArrayLike,
    norms: npt.ArrayLike,
    gram: npt.ArrayLike,
    temperature: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact Q-Score of C candidates from their frame cosines, norms and Gram matrices.

    Args:
        cos: (C, K) cos(q, f_k).
        norms: (C, K) raw frame norms n_k (0 marks a padded, absent frame).
        gram: (C, K, K) G_kl = f_k . f_l of the raw frames (anything on padded rows).
        temperature: T_agg > 0 of the softmax over cos(q, f_k).

    Returns:
        scores: (C,) q . normalize(sum_k w_k f_k).
        best_frame: (C,) index k of the frame with the highest cos(q, f_k).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = np.asarray(cos, dtype=np.float64)
    n = np.asarray(norms, dtype=np.float64)
    g = np.asarray(gram, dtype=np.float64)
    if n.shape != c.shape or g.shape != (*c.shape, c.shape[1]):
        raise ValueError(f"cos {c.shape}, norms {n.shape} and gram {g.shape} do not match")
    present = n > 0
    if not present.any(axis=1).all():
        raise ValueError("every candidate needs at least one frame with a non-zero norm")
    logits = np.where(present, c / temperature, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)  # exp(-inf) = 0 for padding
    w /= w.sum(axis=1, keepdims=True)  # (C, K)
    numer = (w * n * c).sum(axis=1)  # sum_k w_k (q . f_k)
    norm_sq = np.einsum("ck,ckl,cl->c", w, g, w)  # |sum_k w_k f_k|^2
    scores = numer / np.sqrt(np.maximum(norm_sq, _EPS**2))
    best = np.where(present, c, -np.inf).argmax(axis=1).astype(np.int64)
    return scores, best


def qscore_rerank(
    query: npt.ArrayLike,
    frames: npt.ArrayLike,
    norms: npt.ArrayLike,
    temperature: float = 1.0,
    gram: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact Q-Score of C candidate videos for one query.

    Args:
        query: (D,) query embedding (normalised here).
        frames: (C, K, D) unit-norm frame vectors u_k as stored by the index.
        norms: (C, K) raw frame norms n_k (0 marks a padded, absent frame).
        temperature: T_agg > 0 of the softmax over cos(q, f_k).
        gram: (C, K, K) stored Gram matrices of the raw frames; computed here when None.

    Returns:
        scores: (C,) q . normalize(sum_k w_k f_k).
        best_frame: (C,) index k of the frame with the highest cos(q, f_k).
    """
    n = np.asarray(norms, dtype=np.float64)
    u = np.asarray(frames, dtype=np.float32)
    if n.shape != u.shape[:2]:
        raise ValueError(f"norms {n.shape} do not match frames {u.shape[:2]}")
    g = gram_matrices(u, n) if gram is None else gram
    return qscore_from_cosines(frame_cosines(query, u), n, g, temperature)
