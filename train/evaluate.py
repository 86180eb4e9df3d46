"""Retrieval evaluation (METHOD.md section 9) and its JSON reports.

:func:`evaluate_batches` is pure torch over batches of decoded rows (``video_id``,
``frames``, ``captions``); the training workers and the ``adaclip eval`` driver both call
it, so validation during training and ``--do-inference`` compute the same numbers.
Every caption of a video is a query (paragraph datasets have one caption per video).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adaclip.metrics import t2v_v2t_metrics
from adaclip.model import AdaCLIP
from train.data import batch_captions, batch_frames

PRIMARY_METRIC = "t2v_R1"


@dataclass
class Embeddings:
    """Everything needed to score a split: videos, kept frames, queries."""

    video_ids: list[str]
    videos: Tensor  # (V, D) unit video embeddings
    frames: Tensor  # (V, K, D) kept frame embeddings
    texts: Tensor  # (Q, D) unit text embeddings
    query_to_video: np.ndarray  # (Q,) video index of each query
    kept: Tensor  # (V, K) kept candidate indices
    entropy: Tensor | None  # (V,) policy selection entropy (nats); None without a policy


@torch.no_grad()
def embed_batch(model: AdaCLIP, batch: dict[str, Any]) -> Embeddings:
    """Encode one batch's videos (K kept frames only) and every caption of them."""
    enc = model.encode_video(batch_frames(batch))
    video_ids = [str(v) for v in batch["video_id"]]
    queries: list[str] = []
    q2v: list[int] = []
    for i, captions in enumerate(batch_captions(batch)):
        queries += captions
        q2v += [i] * len(captions)
    entropy = None
    if enc.logits is not None:
        logp = torch.log_softmax(enc.logits.float(), dim=-1)  # (V_b, N)
        entropy = -(logp.exp() * logp).sum(-1).cpu()
    return Embeddings(
        video_ids=video_ids,
        videos=enc.video.float().cpu(),
        frames=enc.frames.float().cpu(),
        texts=model.encode_text(queries).float().cpu(),
        query_to_video=np.asarray(q2v, dtype=np.int64),
        kept=enc.indices.cpu(),
        entropy=entropy,
    )


def merge_embeddings(parts: list[Embeddings]) -> Embeddings:
    """Concatenate batches (from any number of ranks) in one canonical order: by video id,
    then caption order, so the result does not depend on how the split was sharded."""
    parts = [p for p in parts if p.video_ids]
    if not parts:
        raise ValueError("nothing to evaluate: the split is empty")
    offsets = np.cumsum([0] + [len(p.video_ids) for p in parts])
    video_ids = [v for p in parts for v in p.video_ids]
    order = sorted(range(len(video_ids)), key=lambda i: video_ids[i])
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    q2v = np.concatenate(
        [new_index[p.query_to_video + off] for p, off in zip(parts, offsets[:-1], strict=True)]
    )
    q_order = np.argsort(q2v, kind="stable")  # queries grouped by video, caption order kept
    perm = torch.as_tensor(order)
    entropies = [p.entropy for p in parts if p.entropy is not None]
    return Embeddings(
        video_ids=[video_ids[i] for i in order],
        videos=torch.cat([p.videos for p in parts])[perm],
        frames=torch.cat([p.frames for p in parts])[perm],
        texts=torch.cat([p.texts for p in parts])[torch.as_tensor(q_order)],
        query_to_video=q2v[q_order],
        kept=torch.cat([p.kept for p in parts])[perm],
        entropy=torch.cat(entropies)[perm] if len(entropies) == len(parts) else None,
    )


def embeddings_to_rows(emb: Embeddings) -> dict[str, np.ndarray]:
    """One row per video (its captions' embeddings in an object column): how embeddings
    computed in Ray Data actors travel back to the driver."""
    texts = np.empty(len(emb.video_ids), dtype=object)
    for i in range(len(emb.video_ids)):
        texts[i] = emb.texts[torch.as_tensor(emb.query_to_video == i)].numpy()  # (C_i, D)
    nan = torch.full((len(emb.video_ids),), float("nan"))
    return {
        "video_id": np.asarray(emb.video_ids, dtype=object),
        "video": emb.videos.numpy(),  # (V, D)
        "frames": emb.frames.numpy(),  # (V, K, D)
        "kept": emb.kept.numpy(),  # (V, K)
        "entropy": (emb.entropy if emb.entropy is not None else nan).numpy(),  # (V,)
        "texts": texts,
    }


def rows_to_embeddings(rows: dict[str, Any]) -> Embeddings:
    """Inverse of :func:`embeddings_to_rows` for one batch of rows."""
    texts = [
        np.asarray(t, dtype=np.float32).reshape(-1, rows["video"].shape[-1]) for t in rows["texts"]
    ]
    q2v = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in enumerate(texts)])
    entropy = torch.as_tensor(np.asarray(rows["entropy"], dtype=np.float32))
    return Embeddings(
        video_ids=[str(v) for v in rows["video_id"]],
        videos=torch.as_tensor(np.asarray(rows["video"], dtype=np.float32)),
        frames=torch.as_tensor(np.asarray(rows["frames"], dtype=np.float32)),
        texts=torch.as_tensor(np.concatenate(texts)),
        query_to_video=q2v,
        kept=torch.as_tensor(np.asarray(rows["kept"], dtype=np.int64)),
        entropy=None if bool(torch.isnan(entropy).any()) else entropy,
    )


def embed_batches(model: AdaCLIP, batches: Iterable[dict[str, Any]]) -> Embeddings:
    """Encode every video (K kept frames only) and every caption of a split.

    Args:
        model: the model, put in eval mode here.
        batches: dicts with ``video_id`` (V_b,), ``frames`` (V_b, N, S, S, 3) uint8 and
            ``captions`` (V_b,) JSON lists.
    """
    model.eval()
    return merge_embeddings([embed_batch(model, batch) for batch in batches])


@torch.no_grad()
def score(model: AdaCLIP, emb: Embeddings) -> dict[str, Any]:
    """R@1/5/10/50, MdR, MnR text-to-video and video-to-text (``t2v_*``, ``v2t_*``), and
    what the policy chose (``kept_position_histogram``, ``selection_entropy``)."""
    sim = model.similarity(emb.texts, emb.videos, emb.frames)  # (Q, V)
    metrics: dict[str, Any] = dict(t2v_v2t_metrics(sim.float(), emb.query_to_video))
    hist = torch.bincount(emb.kept.flatten(), minlength=model.config.num_candidates)
    metrics["kept_position_histogram"] = [int(c) for c in hist.tolist()]
    metrics["selection_entropy"] = None if emb.entropy is None else float(emb.entropy.mean())
    return metrics


def evaluate_batches(model: AdaCLIP, batches: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Embed a split and score it; returns the metrics plus ``num_videos``/``num_queries``."""
    start = time.perf_counter()
    emb = embed_batches(model, batches)
    return _finish(model, emb, start)


def evaluate_embeddings(model: AdaCLIP, parts: list[Embeddings]) -> dict[str, Any]:
    """Score embeddings computed elsewhere (e.g. by Ray Data actors), merged canonically."""
    return _finish(model, merge_embeddings(parts), time.perf_counter())


def evaluate_sharded(
    model: AdaCLIP, batches: Iterable[dict[str, Any]], rank: int, world: int
) -> dict[str, Any] | None:
    """Distributed evaluation: every rank embeds its shard, rank 0 scores the whole split.

    Collective (every rank calls it). The embeddings (small next to the frames) are
    gathered to rank 0 and merged in the canonical order of :func:`merge_embeddings`, so
    the metrics equal :func:`evaluate_batches` on the whole split. Returns them on rank 0,
    None elsewhere.
    """
    start = time.perf_counter()
    model.eval()
    parts = [embed_batch(model, batch) for batch in batches]
    if world > 1:
        gathered: list[Any] = [None] * world if rank == 0 else []
        torch.distributed.gather_object(parts, gathered if rank == 0 else None, dst=0)
        if rank != 0:
            return None
        parts = [p for shard in gathered for p in shard]
    return _finish(model, merge_embeddings(parts), start)


def _finish(model: AdaCLIP, emb: Embeddings, start: float) -> dict[str, Any]:
    metrics = score(model, emb)
    metrics["num_videos"] = len(emb.video_ids)
    metrics["num_queries"] = int(emb.query_to_video.shape[0])
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics


def write_report(path: str | os.PathLike[str], metrics: dict[str, Any], **meta: Any) -> Path:
    """Write one evaluation as JSON: ``{"metrics": {...}, ...meta}``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"metrics": metrics, **meta, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line: ``t2v R1 .. MnR | v2t R1 .. MnR``."""
    parts = []
    for d in ("t2v", "v2t"):
        vals = " ".join(
            f"{k}={metrics[f'{d}_{k}']:.1f}"
            for k in ("R1", "R5", "R10", "R50", "MdR", "MnR")
            if f"{d}_{k}" in metrics
        )
        parts.append(f"{d} {vals}")
    return " | ".join(parts)
