"""One bad row never ends a job: a model error on one video, a NaN or zero vector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adaclip.model import VideoEncoding
from pipelines.embed import embed_batch, embed_or_split
from pipelines.report import FailureReporter, JobReport
from pipelines.store import open_store
from pipelines.store_sink import StoreTarget, StoreWriter, VideoStoreDatasink, to_records_checked

N, K, D, S = 4, 2, 8, 4
OOM, NAN, ZERO = 2, 3, 5  # markers of the videos that go wrong


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError (same name, so the same reason)."""


class MarkerModel:
    """encode_video of a fake model: video i's frames hold its marker in pixel [0, 0, 0];
    marker OOM raises for the whole batch, NAN gives a NaN vector, ZERO a zero one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode_video(self, frames: torch.Tensor) -> VideoEncoding:
        markers = frames[:, 0, 0, 0, 0].tolist()
        self.calls.append(len(markers))
        if OOM in markers:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        b = len(markers)
        feats = torch.ones(b, K, D) * torch.tensor(markers, dtype=torch.float32).view(b, 1, 1)
        video = torch.nn.functional.normalize(feats.mean(1), dim=-1)
        for i, m in enumerate(markers):
            if m == NAN:
                video[i, 0] = float("nan")
            if m == ZERO:
                video[i] = 0.0
        idx = torch.arange(K).expand(b, K)
        return VideoEncoding(video, feats, idx, torch.full((b, K), 1 / K))


def decoded_batch(markers: list[int]) -> dict[str, np.ndarray]:
    frames = np.zeros((len(markers), N, S, S, 3), dtype=np.uint8)
    frames[:, :, 0, 0, 0] = np.array(markers)[:, None]
    return {
        "uri": np.array([f"s3://b/v{m}.mp4" for m in markers], dtype=object),
        "video_id": np.array([f"v{m}" for m in markers], dtype=object),
        "etag": np.array([f"e{m}" for m in markers], dtype=object),
        "size_bytes": np.array([100 * m for m in markers], dtype=np.int64),
        "duration_s": np.full(len(markers), 4.0),
        "frames": frames,
        "timestamps": np.tile(np.arange(N, dtype=np.float64), (len(markers), 1)),
    }


def test_a_model_error_on_one_video_splits_the_batch() -> None:
    model = MarkerModel()
    batch = decoded_batch([1, OOM, 4, 6])
    freed: list[BaseException] = []
    out, failed = embed_or_split(lambda b: embed_batch(model, b), batch, on_error=freed.append)
    assert out is not None
    assert sorted(out["uri"]) == ["s3://b/v1.mp4", "s3://b/v4.mp4", "s3://b/v6.mp4"]
    assert model.calls == [4, 1, 1, 1, 1]  # the batch, then each video alone
    assert len(freed) == 1 and isinstance(freed[0], OutOfMemoryError)
    (row,) = failed
    assert row["uri"] == "s3://b/v2.mp4" and row["stage"] == "embed"
    assert row["reason"] == "OutOfMemoryError" and "out of memory" in row["message"]
    assert row["etag"] == "e2" and row["size_bytes"] == 200
    assert batch["frames"].shape[0] == 4  # the input batch is not changed


def test_nan_and_zero_vectors_are_dropped_with_a_reason() -> None:
    out, failed = embed_or_split(
        lambda b: embed_batch(MarkerModel(), b), decoded_batch([1, NAN, ZERO, 4])
    )
    assert out is not None and sorted(out["uri"]) == ["s3://b/v1.mp4", "s3://b/v4.mp4"]
    assert np.isfinite(out["video_vector"]).all() and out["frame_vectors"].shape == (2, K, D)
    reasons = {r["uri"]: (r["stage"], r["reason"], r["message"]) for r in failed}
    assert reasons["s3://b/v3.mp4"][:2] == ("embed", "bad_vector")
    assert "NaN" in reasons["s3://b/v3.mp4"][2]
    assert reasons["s3://b/v5.mp4"][:2] == ("embed", "bad_vector")
    assert "zero" in reasons["s3://b/v5.mp4"][2]


def test_a_batch_where_every_video_fails_gives_no_rows() -> None:
    out, failed = embed_or_split(lambda b: embed_batch(MarkerModel(), b), decoded_batch([OOM]))
    assert out is None and [r["reason"] for r in failed] == ["OutOfMemoryError"]


def embedding_rows(markers: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for m in markers:
        video = rng.normal(size=D).astype(np.float32)
        if m == NAN:
            video[0] = np.nan
        rows.append(
            {
                "uri": f"s3://b/v{m}.mp4",
                "video_id": f"v{m}",
                "etag": f"e{m}",
                "size_bytes": 100 * m,
                "duration_s": 4.0,
                "video_vector": video,
                "frame_vectors": rng.normal(size=(K, D)).astype(np.float32),
                "frame_ts": np.array([0.0, 1.0]),
                "frame_weights": np.full(K, 1 / K, dtype=np.float32),
            }
        )
    return rows


def test_to_records_checked_keeps_the_good_rows() -> None:
    rows = embedding_rows([1, NAN, 4])
    batch = {key: np.stack([np.asarray(r[key]) for r in rows]) for key in rows[0]}
    records, failed = to_records_checked(batch, "m1")
    assert [r.uri for r in records] == ["s3://b/v1.mp4", "s3://b/v4.mp4"]
    assert [(f["uri"], f["stage"], f["reason"]) for f in failed] == [
        ("s3://b/v3.mp4", "write", "bad_vector")
    ]


@pytest.mark.integration
def test_a_nan_row_in_the_sink_is_reported_and_the_rest_written(
    ray_cluster: Any, tmp_path: Path
) -> None:
    ray = ray_cluster
    target = StoreTarget(str(tmp_path / "qdrant"), None, None, "videos", D, K, "m1")
    writer: Any = ray.remote(StoreWriter).options(num_cpus=0).remote(target)
    report: Any = ray.remote(JobReport).options(num_cpus=0).remote(str(tmp_path / "out"), {})
    sink = VideoStoreDatasink(writer, "m1", 2, failures=FailureReporter(report))
    ds = ray.data.from_items(embedding_rows([1, NAN, 4, 6, 7]), override_num_blocks=2)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.1})
    assert sink.written == 4
    ray.get(writer.close.remote())
    rows = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(r["uri"], r["stage"], r["reason"]) for r in rows] == [
        ("s3://b/v3.mp4", "write", "bad_vector")
    ]
    with open_store(str(tmp_path / "qdrant")) as store:
        store.open_collection("videos")
        assert sorted(store.lookup([f"s3://b/v{m}.mp4" for m in (1, 3, 4, 6, 7)])) == [
            "s3://b/v1.mp4", "s3://b/v4.mp4", "s3://b/v6.mp4", "s3://b/v7.mp4"
        ]  # fmt: skip
    ray.kill(report)


def test_the_model_actor_reports_its_culprits(checkpoint: Path) -> None:
    """EmbedVideos with a real tiny model: an out-of-memory on the batch and a NaN vector
    for one video; the others come out, the culprits go to the failure reporter."""
    from pipelines.embed import EmbedVideos

    class Rows:
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def record(self, rows: list[dict[str, Any]]) -> None:
            self.rows += rows

    reported = Rows()
    stage = EmbedVideos(str(checkpoint), None, False, 64, None, reported)
    real = stage.model.encode_video
    n = stage.model.config.num_candidates

    def encode_video(frames: torch.Tensor) -> VideoEncoding:
        markers = frames[:, 0, 0, 0, 0].tolist()
        if OOM in markers and len(markers) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        enc = real(frames)
        for i, m in enumerate(markers):
            if m == NAN:
                enc.video[i, 0] = float("nan")
        return enc

    stage.model.encode_video = encode_video  # type: ignore[method-assign]
    batch = decoded_batch([1, OOM, NAN, 4])
    rng = np.random.default_rng(0)
    frames = rng.integers(10, 250, size=(4, n, 64, 64, 3), dtype=np.uint8)
    frames[:, 0, 0, 0, 0] = [1, OOM, NAN, 4]
    batch["frames"] = frames
    batch["timestamps"] = np.tile(np.arange(n, dtype=np.float64), (4, 1))
    out = stage(batch)
    assert sorted(out["uri"]) == ["s3://b/v1.mp4", "s3://b/v2.mp4", "s3://b/v4.mp4"]
    assert np.isfinite(out["video_vector"]).all()
    assert [(r["uri"], r["stage"], r["reason"]) for r in reported.rows] == [
        ("s3://b/v3.mp4", "embed", "bad_vector")
    ]
