"""The write stage alone: a Ray Data Datasink feeding one StoreWriter actor (no model)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.report import JobReport
from pipelines.store import ModelMismatchError, open_store
from pipelines.store_sink import (
    ProgressReporter,
    StoreTarget,
    StoreWriter,
    VideoStoreDatasink,
    open_when_free,
    progress_line,
    to_records,
)

pytestmark = pytest.mark.integration
DIM, K = 8, 3


def embedding_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows as the embedding stage emits them: n videos of K frames, D dims."""
    rng = np.random.default_rng(seed)
    return [
        {
            "uri": f"/videos/v{i:03d}.mp4",
            "video_id": f"v{i:03d}",
            "etag": f"etag-{i}",
            "size_bytes": 1000 + i,
            "duration_s": 2.0,
            "video_vector": rng.normal(size=DIM).astype(np.float32),
            "frame_vectors": rng.normal(size=(K, DIM)).astype(np.float32),
            "frame_ts": np.array([0.0, 0.5, 1.0]),
            "frame_weights": np.full(K, 1 / K, dtype=np.float32),
        }
        for i in range(n)
    ]


def target_in(tmp_path: Path, model_id: str = "m1") -> StoreTarget:
    return StoreTarget(
        qdrant_path=str(tmp_path / "qdrant"),
        qdrant_url=None,
        api_key=None,
        collection="videos",
        dim=DIM,
        num_frames=K,
        model_id=model_id,
    )


def test_to_records_reads_an_embedding_batch() -> None:
    rows = embedding_rows(2)
    batch = {key: np.stack([np.asarray(r[key]) for r in rows]) for key in rows[0]}
    records = to_records(batch, "m1")
    assert [r.uri for r in records] == ["/videos/v000.mp4", "/videos/v001.mp4"]
    assert records[1].frame_vectors.shape == (K, DIM) and records[1].size_bytes == 1001
    assert records[0].frame_ts == [0.0, 0.5, 1.0] and records[0].model_id == "m1"


def test_progress_line() -> None:
    line = progress_line(indexed=20, total=100, skipped=5, failed=10, elapsed_s=10.0)
    assert line == "2.00 videos/s, indexed 20/100, skipped 5, failed 10, ETA 35s"
    assert progress_line(0, 10, 0, 0, 0.0).endswith("ETA ?")
    assert "listed 300, indexed" in progress_line(0, 10, 0, 0, 1.0, listed=300)


def new_report(ray: Any, tmp_path: Path, to_index: int, skipped: int) -> Any:
    report: Any = ray.remote(JobReport).options(num_cpus=0).remote(str(tmp_path / "out"), {})
    ray.get(report.add.remote({"listed": to_index + skipped, "to_index": to_index}))
    ray.get(report.add.remote({"skipped": skipped}))
    return report


def test_datasink_writes_through_the_one_writer(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ray = ray_cluster
    target = target_in(tmp_path)
    writer: Any = ray.remote(StoreWriter).options(num_cpus=0).remote(target)
    report = new_report(ray, tmp_path, to_index=10, skipped=4)
    ray.get(report.record.remote([{"uri": "x", "stage": "fetch", "reason": "not_found"}]))

    # the writer owns the embedded store: nobody else may open it meanwhile
    assert ray.get(writer.progress.remote()) == []  # constructed: it holds the store
    with pytest.raises(RuntimeError, match="already open"):
        open_when_free(target.open, wait_s=0)

    sink = VideoStoreDatasink(writer, "m1", upsert_batch_size=3)
    flushed: list[dict[str, Any]] = []
    progress = ProgressReporter(
        writer,
        report,
        log_every_s=0,
        flush=lambda: flushed.append(ray.get(report.flush.remote({}))),
        flush_every_s=0,
    )
    progress.start()
    ds = ray.data.from_items(embedding_rows(10), override_num_blocks=4)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.1})
    progress.stop()
    assert sink.written == 10  # from the write tasks' results
    assert ray.get(writer.close.remote(optimize=True)) == 10

    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("indexed ")]
    totals = [int(m.group(1)) for x in printed if (m := re.match(r"indexed (\d+)/10 videos", x))]
    assert totals and totals[-1] == 10 and totals == sorted(totals)
    steps = np.diff([0, *totals])
    assert steps.max() <= 3 and steps.sum() == 10  # upsert_batch_size caps every upsert
    assert progress.lines[-1].endswith("listed 14, indexed 10/10, skipped 4, failed 1, ETA 0s")
    assert flushed and flushed[-1]["failed"] == 1  # summary.json was rewritten meanwhile
    assert (tmp_path / "out" / "summary.json").is_file()

    store = open_store(qdrant_path=target.qdrant_path)  # closed by the writer: free again
    store.open_collection("videos")
    try:
        assert store.count() == 10
        assert store.indexed_etags()["/videos/v007.mp4"] == "etag-7"
    finally:
        store.close()


def test_writer_refuses_another_models_records(ray_cluster: Any, tmp_path: Path) -> None:
    ray = ray_cluster
    writer: Any = ray.remote(StoreWriter).options(num_cpus=0).remote(target_in(tmp_path))
    sink = VideoStoreDatasink(writer, "m2", upsert_batch_size=4)
    with pytest.raises(Exception) as info:
        ray.data.from_items(embedding_rows(2)).write_datasink(sink)
    assert "ModelMismatchError" in str(info.value) or isinstance(info.value, ModelMismatchError)
    assert ray.get(writer.close.remote()) == 0


def test_reporter_logs_periodically(
    ray_cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ray = ray_cluster
    writer: Any = ray.remote(StoreWriter).options(num_cpus=0).remote(target_in(tmp_path))
    report = new_report(ray, tmp_path, to_index=5, skipped=0)
    progress = ProgressReporter(writer, report, log_every_s=0.1, poll_s=0.05)
    with caplog.at_level(logging.INFO, logger="adaclip.index"):
        progress.start()
        rows = embedding_rows(5)
        batch = {key: np.stack([np.asarray(r[key]) for r in rows]) for key in rows[0]}
        ray.get(writer.upsert.remote(to_records(batch, "m1")))
        deadline = time.monotonic() + 30
        while progress.indexed < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # one more log line
        progress.stop()
    ray.get(writer.close.remote())
    assert len(progress.lines) >= 2
    assert any("indexed 5/5, skipped 0, failed 0, ETA 0s" in r.message for r in caplog.records)


def test_report_appends_failures_as_they_come_and_admits_up_to_the_limit(
    tmp_path: Path,
) -> None:
    report = JobReport(str(tmp_path / "out"), {"source": "s"}, limit=3)
    failures = tmp_path / "out" / "failures.jsonl"
    assert failures.read_text() == ""  # this run's file, started empty
    report.record([{"uri": "a", "stage": "fetch", "reason": "access_denied"}])
    assert failures.read_text().count("\n") == 1  # on disk before the job ends
    report.record([{"uri": "b", "stage": "decode", "reason": "NotAMediaFileError"}])
    assert [report.admit(2), report.admit(2), report.admit(5)] == [2, 1, 0]
    summary = report.flush({"finished": False})
    assert summary["failed"] == 2 and summary["source"] == "s"
    assert summary["failed_by_stage"] == {"fetch": 1, "decode": 1}
    assert (tmp_path / "out" / "summary.json").read_text().count('"failed": 2') == 1
