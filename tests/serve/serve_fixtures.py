"""Test data of the serving tests: a tiny checkpoint and an embedded index of videos.

The index is built the way the ingestion job builds it (decode N candidates, encode the K
kept frames, upsert one VideoRecord per video), directly in the test process. A uniquely
named module (not conftest) so that test modules can import it unambiguously.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class IndexedVideos:
    """A tiny checkpoint, its collection in an embedded store, and the videos behind it."""

    checkpoint: Path
    qdrant_path: Path
    collection: str
    model_id: str
    media_root: Path
    videos: dict[str, Path]  # video_id -> file
    captions: dict[str, list[str]]  # video_id -> sentences


def write_tiny_checkpoint(out: Path, seed: int = 0) -> str:
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.config import tiny_config
    from adaclip.model import AdaCLIP

    torch.manual_seed(seed)
    return save_checkpoint(AdaCLIP(tiny_config()), out, kind="test")


def index_videos(checkpoint: Path, qdrant_path: Path, collection: str, videos: list[Path]) -> str:
    """Encode `videos` with the checkpoint and upsert them into `collection`; its model_id."""
    import torch

    from adaclip.checkpoint import load_checkpoint
    from adaclip.decode import decode_candidates
    from pipelines.store import VideoRecord, open_store

    model = load_checkpoint(checkpoint)
    cfg = model.config
    records = []
    for path in videos:
        decoded = decode_candidates(path, cfg.num_candidates, size=model.image_size)
        enc = model.encode_video(torch.from_numpy(decoded.frames)[None])  # batch of 1
        kept = enc.indices[0].tolist()
        records.append(
            VideoRecord(
                uri=str(path.resolve()),
                video_id=path.stem,
                etag=f"etag-{path.stem}",
                size_bytes=path.stat().st_size,
                duration_s=decoded.duration,
                video_vector=enc.video[0].numpy(),
                frame_vectors=enc.frames[0].numpy(),
                frame_ts=[float(decoded.timestamps[i]) for i in kept],
                frame_weights=enc.weights[0].numpy().astype(np.float32).tolist(),
                model_id=str(model.model_id),
            )
        )
    store = open_store(qdrant_path=str(qdrant_path))
    try:
        store.ensure_collection(collection, model.embed_dim, cfg.top_k, str(model.model_id))
        store.upsert(records)
    finally:
        store.close()
    return str(model.model_id)


def frame_png(video: Path, size: int = 0) -> bytes:
    """The most detailed of a video's 8 candidate frames as PNG (scaled to `size` px a side
    with per-pixel noise, a large upload, when given)."""
    import io

    from PIL import Image

    from adaclip.decode import decode_candidates

    frames = decode_candidates(video, 8, size=None).frames
    image = Image.fromarray(max(frames, key=lambda f: float(f.std())))
    if size:
        image = image.resize((size, size))
        noise = np.random.default_rng(0).integers(0, 24, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(np.asarray(image) | noise)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
