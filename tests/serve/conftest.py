"""Fixtures of the serving tests (helpers in serve_fixtures.py)."""

from __future__ import annotations

import json

import pytest
from serve_fixtures import IndexedVideos, index_videos, write_tiny_checkpoint


@pytest.fixture(scope="session")
def indexed_videos(tmp_path_factory: pytest.TempPathFactory) -> IndexedVideos:
    from adaclip.synth import generate_dataset
    from pipelines.settings import default_collection

    root = tmp_path_factory.mktemp("serve_data")
    media_root = root / "media"
    generate_dataset(media_root / "synth", num_videos=6, seed=3, frames_per_video=24)
    videos = sorted((media_root / "synth").glob("*.mp4"))
    meta = json.loads((media_root / "synth" / "synth_meta.json").read_text())
    checkpoint = root / "checkpoint"
    model_id = write_tiny_checkpoint(checkpoint)
    collection = default_collection(model_id)
    indexed_id = index_videos(checkpoint, root / "qdrant", collection, videos)
    assert indexed_id == model_id
    (root / "secret.mp4").write_bytes(b"root:x:0:0 outside the media root")
    (media_root / "synth" / "escape.mp4").symlink_to(root / "secret.mp4")
    return IndexedVideos(
        checkpoint=checkpoint,
        qdrant_path=root / "qdrant",
        collection=collection,
        model_id=model_id,
        media_root=media_root,
        videos={p.stem: p for p in videos},
        captions={vid: v["sentences"] for vid, v in meta["videos"].items()},
    )
