"""The store actor: one named, detached owner of an embedded store folder on a Ray cluster."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.store import EdgeVideoStore, ModelMismatchError, VideoRecord, open_store
from pipelines.store.actor import (
    ActorVideoStore,
    actor_name,
    find_store_actor,
    stop_store_actor,
)

REPO = Path(__file__).resolve().parents[2]
DIM, K = 16, 4


def record(i: int, etag: str = "e1") -> VideoRecord:
    rng = np.random.default_rng(i)
    return VideoRecord(
        uri=f"s3://bucket/clips/v{i:03d}.mp4",
        video_id=f"v{i:03d}",
        etag=etag,
        size_bytes=100 + i,
        duration_s=2.0,
        video_vector=rng.standard_normal(DIM).astype(np.float32),
        frame_vectors=rng.standard_normal((K, DIM)).astype(np.float32),
        frame_ts=[0.0, 0.5, 1.0, 1.5],
        frame_weights=[0.25] * K,
        model_id="m1",
    )


def test_one_owner_by_name_concurrent_reads_see_whole_points(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = str(tmp_path / "qdrant")
    writer = open_store(folder, create_owner=True)
    assert isinstance(writer, ActorVideoStore)
    writer.ensure_collection("videos", DIM, K, "m1")
    reader = open_store(folder)  # found by name, not opened a second time
    assert isinstance(reader, ActorVideoStore)
    reader.open_collection("videos")

    # the folder itself is refused while the actor holds it, without damage to the holder
    with pytest.raises(RuntimeError, match="already open"):
        EdgeVideoStore(folder).open_collection("videos")
    with pytest.raises(ModelMismatchError):  # the actor's error, raised as itself
        open_store(folder).ensure_collection("videos", DIM, K, "another-model")

    n = 40
    seen: list[str] = []
    bad: list[str] = []

    def write() -> None:
        for i in range(n):
            writer.upsert([record(i)])

    thread = threading.Thread(target=write)
    thread.start()
    query = np.ones(DIM, dtype=np.float32)
    while thread.is_alive() or len(seen) < n:
        hits = reader.search(query, top_k=n, rerank=True, rerank_candidates=n)
        for hit in hits:  # a point is absent or complete: vectors, times, weights together
            if len(hit.frame_ts) != K or hit.frame_scores is None or len(hit.frame_scores) != K:
                bad.append(hit.uri)
        seen = [h.uri for h in hits]
        if not thread.is_alive() and len(seen) < n:
            break
    thread.join()
    hits = reader.search(query, top_k=n, rerank=True, rerank_candidates=n)  # after the writes
    seen = [h.uri for h in hits]
    assert not bad
    assert len(seen) == n == reader.count()
    similar = reader.similar(hits[0].id, top_k=3)  # stored video vectors, through the actor
    assert similar is not None
    video, neighbours = similar
    assert video.uri == hits[0].uri and neighbours
    assert video.uri not in [h.uri for h in neighbours]

    from pipelines.ls import main as ls_main

    assert ls_main(["--qdrant-path", folder, "--collection", "videos", "--json"]) == 0
    assert f"{n} videos in videos" in capsys.readouterr().err

    handle = find_store_actor(folder)
    assert handle is not None
    assert stop_store_actor(handle) == ["videos"]
    assert find_store_actor(folder) is None
    with EdgeVideoStore(folder) as direct:  # flushed and let go: the folder opens again
        direct.open_collection("videos")
        assert direct.count() == n


def test_store_command_status_and_stop(ray_cluster: Any, tmp_path: Path) -> None:
    folder = str(tmp_path / "qdrant")
    store = open_store(folder, create_owner=True)
    store.ensure_collection("videos", DIM, K, "m1")
    store.upsert([record(1)])
    address = ray_cluster.get_runtime_context().gcs_address

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "adaclip.cli", "store", *args, "--ray-address", address]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    # a process off the cluster finds the folder held and reads through the actor
    ls = subprocess.run(
        [sys.executable, "-m", "adaclip.cli", "ls", "--qdrant-path", folder,
         "--collection", "videos", "--ray-address", address],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert "s3://bucket/clips/v001.mp4" in ls.stdout and "1 videos in videos" in ls.stdout
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert actor_name(folder) in status.stdout and '"videos"' in status.stdout
    stopped = run("stop", "--qdrant-path", folder)
    assert stopped.returncode == 0, stopped.stderr
    assert "flushed and closed videos" in stopped.stdout
    assert find_store_actor(folder) is None
    again = run("stop", "--qdrant-path", folder)
    assert again.returncode == 1 and "no store actor owns" in again.stderr
    with EdgeVideoStore(folder) as direct:
        direct.open_collection("videos")
        assert direct.count() == 1
