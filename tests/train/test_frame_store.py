"""The frame store's read-back, on a local folder and on ``s3://`` (a moto server on
127.0.0.1): small blocks read by tasks pinned to the driver's node for a local store, a
shard cut short by a killed writer skipped and its videos decoded again, and a store in a
bucket that a later run reads without decoding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaclip.synth import generate_dataset
from train.data import DecodedSplit, DecodeOptions, decode_split
from train.frame_store import BLOCK_ROWS, FrameStore, io_task_options, stored_rows

OPTIONS = DecodeOptions(num_candidates=4, frame_size=32, num_cpus=0.2)
BUCKET = "frame-store"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 short clips in one ``train`` split (more than one block of ``BLOCK_ROWS``)."""
    root = tmp_path_factory.mktemp("videos")
    generate_dataset(root, 40, seed=3, frames_per_video=8, size=32, splits=(1.0, 0.0, 0.0))
    return root


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from pipelines.sources import s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _decode(videos: Path, store: FrameStore) -> DecodedSplit:
    return decode_split(str(videos), "train", "synthetic", str(videos), OPTIONS, store)


def _rows(split: DecodedSplit) -> dict[str, tuple[np.ndarray, list[str]]]:
    return {
        str(r["video_id"]): (np.asarray(r["frames"]), json.loads(str(r["captions"])))
        for r in split.dataset.take_all()
    }


def test_local_store_reads_small_blocks_on_the_driver_node(
    ray_cluster: Any, videos: Path, tmp_path: Path
) -> None:
    import ray

    store = FrameStore(str(tmp_path / "store"))
    first = _decode(videos, store)
    assert first.decoded_videos == 40 and first.num_videos == 40
    shards = list((tmp_path / "store").rglob("*.parquet"))
    assert len(shards) == 1  # 40 small rows: one shard, not one per decode batch
    again = _decode(videos, store)
    assert again.decoded_videos == 0 and again.num_videos == 40
    assert again.dataset.num_blocks() == -(-40 // BLOCK_ROWS)  # shuffled by block each epoch
    before, after = _rows(first), _rows(again)
    assert before.keys() == after.keys() and len(after) == 40
    annotations = json.loads((videos / "train.json").read_text())
    for vid, (frames, captions) in after.items():
        assert frames.shape == (4, 32, 32, 3) and np.array_equal(frames, before[vid][0])
        assert captions == annotations[vid]["sentences"]

    options = io_task_options(store, 0.2)  # pinned to this node, no CPU asked
    assert options["num_cpus"] == 0
    assert options["scheduling_strategy"].node_id == ray.get_runtime_context().get_node_id()
    assert options["scheduling_strategy"].soft is False


def test_shard_cut_short_by_a_killed_writer_is_decoded_again(
    ray_cluster: Any, videos: Path, tmp_path: Path
) -> None:
    store = FrameStore(str(tmp_path / "store"))
    _decode(videos, store)
    (shard,) = (tmp_path / "store").rglob("*.parquet")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # what a writer killed mid-file leaves

    folder = store.folder(OPTIONS.num_candidates, OPTIONS.frame_size, False)
    assert stored_rows(store, folder) == {}  # unreadable: skipped, not fatal
    again = _decode(videos, store)
    assert again.decoded_videos == 40 and again.num_videos == 40
    assert len(_rows(again)) == 40


def test_store_in_a_bucket_is_read_by_a_later_run(
    ray_cluster: Any, videos: Path, s3_endpoint: str
) -> None:
    from pipelines.sources import s3_client

    store = FrameStore(f"s3://{BUCKET}/frames", s3_endpoint_url=s3_endpoint)
    assert not store.local and "scheduling_strategy" not in io_task_options(store, 0.2)
    first = _decode(videos, store)
    assert first.decoded_videos == 40
    listing = s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="frames/")
    shards = [o["Key"] for o in listing["Contents"] if o["Key"].endswith(".parquet")]
    assert len(shards) == 1 and shards[0].startswith("frames/n4-s32/")
    again = _decode(videos, store)
    assert again.decoded_videos == 0 and again.num_videos == 40
    before, after = _rows(first), _rows(again)
    assert before.keys() == after.keys()
    for vid, (frames, captions) in after.items():
        assert np.array_equal(frames, before[vid][0]) and captions == before[vid][1]
