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


@torch.no_grad()
def embed_batches(model: AdaCLIP, batches: Iterable[dict[str, Any]]) -> Embeddings:
    """Encode every video (K kept frames only) and every caption of a split.

    Args:
        model: the model, put in eval mode here.
        batches: dicts with ``video_id`` (V_b,), ``frames`` (V_b, N, S, S, 3) uint8 and
            ``captions`` (V_b,) JSON lists.
    """
    model.eval()
    video_ids: list[str] = []
    videos, frames, queries, q2v = [], [], [], []
    for batch in batches:
        enc = model.encode_video(batch_frames(batch))
        videos.append(enc.video.float().cpu())  # (V_b, D)
        frames.append(enc.frames.float().cpu())  # (V_b, K, D)
        for video_id, captions in zip(batch["video_id"], batch_captions(batch), strict=True):
            queries += captions
            q2v += [len(video_ids)] * len(captions)
            video_ids.append(str(video_id))
    if not video_ids:
        raise ValueError("nothing to evaluate: the split is empty")
    texts = model.encode_text(queries).float().cpu()  # (Q, D)
    return Embeddings(
        video_ids=video_ids,
        videos=torch.cat(videos),
        frames=torch.cat(frames),
        texts=texts,
        query_to_video=np.asarray(q2v, dtype=np.int64),
    )


@torch.no_grad()
def score(model: AdaCLIP, emb: Embeddings) -> dict[str, float]:
    """R@1/5/10/50, MdR, MnR text-to-video and video-to-text (``t2v_*``, ``v2t_*``)."""
    sim = model.similarity(emb.texts, emb.videos, emb.frames)  # (Q, V)
    return t2v_v2t_metrics(sim.float(), emb.query_to_video)


def evaluate_batches(model: AdaCLIP, batches: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Embed a split and score it; returns the metrics plus ``num_videos``/``num_queries``."""
    start = time.perf_counter()
    emb = embed_batches(model, batches)
    metrics: dict[str, Any] = dict(score(model, emb))
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
