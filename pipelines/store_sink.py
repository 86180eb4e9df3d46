"""The ingestion job's write stage: a Ray Data ``Datasink`` feeding one store-writer actor.

``VideoStoreDatasink.write`` runs in Ray Data's write tasks: it turns embedding rows into
:class:`~pipelines.store.VideoRecord` s and sends them, ``upsert_batch_size`` per call, to the
one :class:`StoreWriter` actor, which owns the store for the whole write. Each write task
returns how many records the writer upserted for it, so ``on_write_complete`` (on the
driver) sums what was really written.

Why one writer for both backends: an embedded store (qdrant-edge) belongs to one process at
a time, so its writes must funnel into a single owner anyway. For a Qdrant server, write
tasks could upsert in parallel, but the model stage, not the upsert, bounds the job (a
server takes thousands of points/s from one client; a GPU embeds far fewer videos/s), and
one writer keeps the model-id check, the progress count and one client connection in one
place. The writer reserves no CPU and is pinned to the driver's node, where an embedded
store's folder lives.

``ProgressReporter`` is a driver thread that polls the writer: it prints
``indexed N/M videos`` after every upsert and logs the rate, counts and ETA periodically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from pipelines.store import VideoRecord, VideoStore, open_store

log = logging.getLogger("adaclip.index")

WRITE_TASK_CPUS = 0.1  # record conversion only; the writer actor does the upserts
WRITE_TASKS = 1  # the one writer serialises upserts anyway; conversion is cheap beside them


@dataclass(frozen=True)
class StoreTarget:
    """Which store and collection the writer opens: plain, picklable settings."""

    qdrant_path: str | None  # absolute: the actor's working folder is not the driver's
    qdrant_url: str | None
    api_key: str | None
    collection: str
    dim: int
    num_frames: int
    model_id: str

    def open(self) -> VideoStore:
        """Open the store and bind the collection (created if missing).

        Raises:
            ModelMismatchError: the collection was filled by another model.
        """
        store = open_store(self.qdrant_path, self.qdrant_url, self.api_key)
        try:
            store.ensure_collection(self.collection, self.dim, self.num_frames, self.model_id)
        except BaseException:
            store.close()
            raise
        return store


def open_when_free(open_fn: Callable[[], VideoStore], wait_s: float = 15.0) -> VideoStore:
    """``open_fn()``, waiting up to ``wait_s`` while an embedded store is still held.

    The writer actor of a job killed a moment ago may take a few seconds to be reaped, and
    its process holds the embedded store's lock until then.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_fn()
        except RuntimeError as err:
            if "already open" not in str(err) or time.monotonic() > deadline:
                raise
            log.info("embedded store still held by another process; waiting")
            time.sleep(0.5)


def to_records(batch: dict[str, np.ndarray], model_id: str) -> list[VideoRecord]:
    """Rows of the embedding stage -> store records."""
    return [
        VideoRecord(
            uri=str(batch["uri"][i]),
            video_id=str(batch["video_id"][i]),
            etag=str(batch["etag"][i]),
            size_bytes=int(batch["size_bytes"][i]),
            duration_s=float(batch["duration_s"][i]),
            video_vector=batch["video_vector"][i],
            frame_vectors=batch["frame_vectors"][i],
            frame_ts=list(batch["frame_ts"][i]),
            frame_weights=list(batch["frame_weights"][i]),
            model_id=model_id,
        )
        for i in range(len(batch["uri"]))
    ]


class StoreWriter:
    """The store's single owner while the job writes (a Ray actor; calls run one at a time).

    Args:
        target: the store and collection to open.
    """

    def __init__(self, target: StoreTarget) -> None:
        self.store: VideoStore | None = open_when_free(target.open)
        self.upserted = 0
        self._totals: list[int] = []  # running totals after each upsert, not yet polled

    def upsert(self, records: list[VideoRecord]) -> int:
        """Write one batch (durable on return); the number of records written."""
        if self.store is None:
            raise RuntimeError("the store writer is closed")
        self.store.upsert(records)
        self.upserted += len(records)
        self._totals.append(self.upserted)
        return len(records)

    def progress(self) -> list[int]:
        """The running totals after each upsert since the last call."""
        totals, self._totals = self._totals, []
        return totals

    def close(self, optimize: bool = False) -> int:
        """Build the indexes (``optimize``), close the store; the number of records written."""
        store, self.store = self.store, None
        if store is not None:
            try:
                if optimize:
                    store.optimize()
            finally:
                store.close()
        return self.upserted


class VideoStoreDatasink(Datasink[int]):
    """Ray Data sink: embedding rows -> upserts of ``upsert_batch_size`` by the writer actor.

    Args:
        writer: handle of the :class:`StoreWriter` actor.
        model_id: the model whose vectors the rows hold.
        upsert_batch_size: records per upsert; also the rows Ray Data bundles per write task.
    """

    def __init__(self, writer: Any, model_id: str, upsert_batch_size: int) -> None:
        if upsert_batch_size < 1:
            raise ValueError("upsert_batch_size must be >= 1")
        self.writer = writer
        self.model_id = model_id
        self.upsert_batch_size = upsert_batch_size
        self.written = 0  # records upserted by all write tasks; set by on_write_complete

    @property
    def min_rows_per_write(self) -> int:
        return self.upsert_batch_size

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        import ray

        written = 0
        pending: list[VideoRecord] = []
        for block in blocks:
            rows = BlockAccessor.for_block(block)
            if rows.num_rows() == 0:  # every video of a batch failed: may lack columns
                continue
            pending += to_records(rows.to_batch_format("numpy"), self.model_id)
            while len(pending) >= self.upsert_batch_size:
                chunk, pending = (
                    pending[: self.upsert_batch_size],
                    pending[self.upsert_batch_size :],
                )
                written += ray.get(self.writer.upsert.remote(chunk))
        if pending:
            written += ray.get(self.writer.upsert.remote(pending))
        return written

    def on_write_complete(self, write_result: Any) -> None:
        self.written = sum(int(n) for n in write_result.write_returns if n is not None)


def progress_line(indexed: int, total: int, skipped: int, failed: int, elapsed_s: float) -> str:
    """The periodic log line: rate, counts and the time left at that rate."""
    rate = indexed / elapsed_s if elapsed_s > 0 else 0.0
    left = max(total - indexed - failed, 0)
    eta = f"{left / rate:.0f}s" if rate > 0 else "?"
    return (
        f"{rate:.2f} videos/s, indexed {indexed}/{total}, skipped {skipped}, "
        f"failed {failed}, ETA {eta}"
    )


class ProgressReporter:
    """Driver thread polling the writer: one ``indexed N/M videos`` line per upsert, and a
    :func:`progress_line` log every ``log_every_s`` seconds.

    Args:
        writer: the :class:`StoreWriter` actor handle.
        failure_log: the ``FailureLog`` actor handle (for the failed count).
        total: videos to index in this run.
        skipped: videos skipped as already indexed.
        log_every_s: seconds between two log lines.
        poll_s: seconds between two polls of the writer.
    """

    def __init__(
        self,
        writer: Any,
        failure_log: Any,
        total: int,
        skipped: int,
        log_every_s: float = 10.0,
        poll_s: float = 0.25,
    ) -> None:
        self.writer, self.failure_log = writer, failure_log
        self.total, self.skipped = total, skipped
        self.log_every_s, self.poll_s = log_every_s, poll_s
        self.indexed = 0
        self.lines: list[str] = []  # the log lines so far
        self._started = self._logged = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, after a last poll and a last log line."""
        self._stop.set()
        self._thread.join()
        try:
            self.poll(force_log=True)
        except Exception as err:  # the writer died with the write; that error is raised
            log.debug("last progress poll failed: %s", err)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as err:  # a dead writer: the write itself will report it
                log.debug("progress poll failed: %s", err)

    def poll(self, force_log: bool = False) -> None:
        import ray

        for n in ray.get(self.writer.progress.remote()):
            self.indexed = n
            print(f"indexed {n}/{self.total} videos", flush=True)
        now = time.monotonic()
        if force_log or now - self._logged >= self.log_every_s:
            self._logged = now
            failed = int(ray.get(self.failure_log.count.remote()))
            line = progress_line(
                self.indexed, self.total, self.skipped, failed, now - self._started
            )
            self.lines.append(line)
            log.info("%s", line)
