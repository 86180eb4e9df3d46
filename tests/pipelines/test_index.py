"""The ingestion job end to end: a real Ray Data run into a real embedded Qdrant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adaclip.checkpoint import load_checkpoint, save_checkpoint
from adaclip.config import tiny_config
from adaclip.decode import decode_candidates
from adaclip.model import AdaCLIP
from adaclip.synth import generate_dataset
from pipelines.index import IndexSummary, main, run_index
from pipelines.store import ModelMismatchError, open_store
from tests.pipelines.conftest import index_settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    generate_dataset(root, num_videos=6, seed=3, frames_per_video=24)
    (root / "broken.mp4").write_bytes(os.urandom(3000))  # fails alone
    return root


def test_index_local_folder_then_rerun_skips(
    ray_cluster: Any, videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    summary = run_index(index_settings(videos, tmp_path, checkpoint))
    assert (summary.listed, summary.indexed, summary.failed, summary.skipped) == (7, 6, 1, 0)
    assert summary.failed_by_reason == {"NotAMediaFileError": 1}
    failures = [
        json.loads(x) for x in (tmp_path / "job" / "failures.jsonl").read_text().splitlines()
    ]
    assert len(failures) == 1 and failures[0]["uri"].endswith("broken.mp4")
    assert failures[0]["stage"] == "decode"
    on_disk = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert on_disk["indexed"] == 6 and on_disk["model_id"] == summary.model_id

    store = open_store(qdrant_path=str(tmp_path / "qdrant"))
    store.open_collection("videos")
    try:
        assert store.count() == 6
        # the stored vector is exactly what the model computes for that video
        model = load_checkpoint(checkpoint)
        uri = str(videos / "video00002.mp4")
        decoded = decode_candidates(uri, model.config.num_candidates, 64)
        enc = model.encode_video(torch.from_numpy(decoded.frames).unsqueeze(0))
        hits = store.search(enc.video[0].numpy(), top_k=1)
        assert hits[0].uri == uri and hits[0].score == pytest.approx(1.0, abs=1e-4)
        kept = enc.indices[0].numpy()
        assert hits[0].frame_ts == pytest.approx(decoded.timestamps[kept].tolist(), abs=1e-6)
    finally:
        store.close()

    # the rerun fetches nothing: the good ones are indexed, broken.mp4 failed for good
    again = run_index(index_settings(videos, tmp_path, checkpoint))
    assert (again.listed, again.skipped, again.indexed, again.failed) == (7, 6, 0, 0)
    assert (again.skipped_failed, again.to_index, again.finished) == (1, 0, True)
    assert (tmp_path / "job" / "failures.jsonl").read_text() == ""
    retried = run_index(index_settings(videos, tmp_path, checkpoint, retry_failed=True))
    assert (retried.skipped, retried.to_index, retried.failed) == (6, 1, 1)


def test_index_refuses_another_models_collection(
    ray_cluster: Any, videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    run_index(index_settings(videos, tmp_path, checkpoint, limit=2))
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_checkpoint(AdaCLIP(tiny_config()), other)
    with pytest.raises(ModelMismatchError, match="use another --collection"):
        run_index(index_settings(videos, tmp_path, other, limit=2))


def test_index_s3_bucket(
    ray_cluster: Any, s3_endpoint: str, videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from tests.pipelines.conftest import make_bucket

    client = make_bucket(s3_endpoint, "media")
    for path in sorted(videos.glob("video*.mp4"))[:3]:
        client.upload_file(str(path), "media", f"clips/{path.name}")
    client.put_object(Bucket="media", Key="clips/readme.txt", Body=b"not a video")
    summary = run_index(
        index_settings("s3://media/clips/", tmp_path, checkpoint, s3_endpoint_url=s3_endpoint)
    )
    assert (summary.listed, summary.indexed) == (3, 3)
    store = open_store(qdrant_path=str(tmp_path / "qdrant"))
    store.open_collection("videos")
    try:
        assert set(store.indexed_etags()) == {
            f"s3://media/clips/{p.name}" for p in sorted(videos.glob("video*.mp4"))[:3]
        }
    finally:
        store.close()


def test_killed_job_resumes_without_duplicates(
    ray_cluster: Any, videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    address = ray_cluster.get_runtime_context().gcs_address
    settings = index_settings(videos, tmp_path, checkpoint, upsert_batch_size=1, model_batch_size=1)
    args = [
        sys.executable, "-m", "pipelines.index", str(videos),
        "--checkpoint", str(checkpoint), "--qdrant-path", settings.qdrant_path or "",
        "--collection", "videos", "--output", settings.output, "--frame-size", "64",
        "--decode-actors", "1", "--decode-batch-size", "1", "--model-batch-size", "1",
        "--upsert-batch-size", "1", "--ray-address", address,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("indexed 2/"):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "the job never reported progress"
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    summary: IndexSummary = run_index(settings)
    assert summary.skipped >= 2 and summary.skipped + summary.indexed == 6
    store = open_store(qdrant_path=settings.qdrant_path)
    store.open_collection("videos")
    try:
        etags = store.indexed_etags()
        assert len(etags) == store.count() == 6
    finally:
        store.close()


def test_cli_entry_point_reads_env_and_flags(
    ray_cluster: Any,
    videos: Path,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ADACLIP_FRAME_SIZE", "64")
    monkeypatch.setenv("ADACLIP_COLLECTION", "from_env")
    rc = main([
        str(videos), "--checkpoint", str(checkpoint), "--qdrant-path", str(tmp_path / "q"),
        "--output", str(tmp_path / "out"), "--limit", "2", "--collection", "from_flag",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # --limit bounds the new work, not the listing
    assert summary["collection"] == "from_flag" and summary["listed"] == 7
    assert (summary["to_index"], summary["deferred"]) == (2, 5)
    assert summary["indexed"] + summary["failed"] == 2
    assert np.isfinite(summary["videos_per_s"])


def test_index_frames_folders_match_video_path(
    ray_cluster: Any, videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from adaclip.frames_dir import decode_candidates_from_frames, extract_frames

    frames_root = tmp_path / "frames"
    for name in ("video00000", "video00001"):
        extract_frames(videos / f"{name}.mp4", frames_root / name)
    summary = run_index(
        index_settings(frames_root, tmp_path, checkpoint, frames_dir=True, frames_fps=8)
    )
    assert (summary.listed, summary.indexed, summary.failed) == (2, 2, 0)
    assert summary.gflops_per_video > 0 and summary.gflops_per_video_no_policy > 0
    store = open_store(qdrant_path=str(tmp_path / "qdrant"))
    store.open_collection("videos")
    try:
        model = load_checkpoint(checkpoint)
        decoded = decode_candidates(videos / "video00001.mp4", model.config.num_candidates, 64)
        enc = model.encode_video(torch.from_numpy(decoded.frames).unsqueeze(0))
        hit = store.search(enc.video[0].numpy(), top_k=1)[0]
        assert hit.video_id == "video00001"
        assert hit.score > 0.99  # JPEG round trip: nearly the same embedding
        # Same candidate times; the kept ones are the policy's choice on the stored JPEGs
        # (an untrained policy's near-ties may flip under JPEG noise, so not the video's).
        from_frames = decode_candidates_from_frames(
            frames_root / "video00001", model.config.num_candidates, 64, fps=8
        )
        assert from_frames.timestamps.tolist() == pytest.approx(decoded.timestamps.tolist())
        kept = model.encode_video(torch.from_numpy(from_frames.frames).unsqueeze(0)).indices[0]
        assert hit.frame_ts == pytest.approx(from_frames.timestamps[kept.numpy()].tolist())
    finally:
        store.close()
