"""The ingestion job's write stage: a Ray Data ``Datasink`` feeding one store-writer actor.

``VideoStoreDatasink.write`` runs in Ray Data's write tasks: it turns embedding rows into
:class:`~pipelines.store.VideoRecord` s and sends them, ``upsert_batch_size`` per call, to the
one :class:`StoreWriter` actor, which owns the store for the whole write. Each write task
returns how many records the writer upserted for it, so ``on_write_complete`` (on the
driver) sums what was really written.

An embedded store (qdrant-edge) belongs to one process at a time, so its writes funnel into
that single owner. For a Qdrant server the sink is given the ``StoreTarget`` instead
(``direct``): each of several write tasks opens its own client (gRPC where the port
answers), checks the collection's model and upserts its batches itself, with retries and
backoff on connection errors, timeouts, 5xx and UNAVAILABLE (:mod:`pipelines.store.retry`;
upserts are idempotent by point id, so a Qdrant restart of a few seconds costs a delay, not
a point). Those tasks only tell the owner how many they wrote, for the progress count. The
owner reserves no CPU and is pinned to the driver's node, where an embedded store's folder
lives.

A row whose vectors cannot be stored (NaN, inf, zero: the model stage drops those already)
becomes a ``failures.jsonl`` row with stage ``write``, reason ``bad_vector``; the rest of its
batch is written.

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

from pipelines.store import (
    FailedVideo,
    IndexedState,
    ModelMismatchError,
    VideoRecord,
    VideoStore,
    open_store,
)

log = logging.getLogger("adaclip.index")

WRITE_TASK_CPUS = 0.1  # record conversion only; the writer actor does the upserts
WRITE_TASKS = 1  # embedded store: the one owner serialises upserts anyway


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
    create: bool = True  # False (dry run): bind an existing collection only, write nothing
    shared: bool = False  # an embedded folder on Ray: through its store actor (made if none)
    prefer_grpc: bool = True  # server backend: gRPC when its port answers, else REST
    profile: Any = None  # server backend: a store.profile.CollectionProfile (None: default)

    def _open_store(self) -> VideoStore:
        if self.qdrant_url:
            from pipelines.store.server import ServerVideoStore

            return ServerVideoStore(
                url=self.qdrant_url,
                api_key=self.api_key,
                prefer_grpc=self.prefer_grpc,
                profile=self.profile,
            )
        return open_store(self.qdrant_path, None, self.api_key, create_owner=self.shared)

    def open_writer(self) -> VideoStore:
        """A write task's own connection to an existing collection (server backend).

        Raises:
            ModelMismatchError: the collection was filled by another model.
            LookupError: the collection does not exist.
        """
        store = self._open_store()
        try:
            info = store.open_collection(self.collection)
            if info.model_id != self.model_id:
                raise ModelMismatchError(self.collection, info.model_id, self.model_id)
        except BaseException:
            store.close()
            raise
        return store

    def open(self) -> VideoStore:
        """Open the store and bind the collection (created if missing and ``create``).

        Raises:
            ModelMismatchError: the collection was filled by another model.
            LookupError: ``create`` is False and the collection does not exist.
        """
        store = self._open_store()
        try:
            if self.create:
                store.ensure_collection(self.collection, self.dim, self.num_frames, self.model_id)
            else:
                info = store.open_collection(self.collection)
                if info.model_id != self.model_id:
                    raise ModelMismatchError(self.collection, info.model_id, self.model_id)
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


def to_records(batch: dict[str, np.ndarray], model_id: str, run_id: str = "") -> list[VideoRecord]:
    """Rows of the embedding stage -> store records (marked as seen by run ``run_id``).

    Raises:
        ValueError: a row cannot be stored (see :func:`to_records_checked`).
    """
    return [_record(batch, i, model_id, run_id) for i in range(len(batch["uri"]))]


def to_records_checked(
    batch: dict[str, np.ndarray], model_id: str, run_id: str = ""
) -> tuple[list[VideoRecord], list[dict[str, Any]]]:
    """Like :func:`to_records`, but a row that cannot be stored (NaN, inf or zero vector,
    frame times out of order) becomes a failure row (stage ``write``) instead of an error."""
    records, failed = [], []
    for i in range(len(batch["uri"])):
        try:
            records.append(_record(batch, i, model_id, run_id))
        except ValueError as err:
            failed.append(
                {
                    "uri": str(batch["uri"][i]),
                    "stage": "write",
                    "reason": "bad_vector" if "vector" in str(err) else "bad_row",
                    "error_type": type(err).__name__,
                    "message": str(err)[:500],
                    "etag": str(batch["etag"][i]),
                    "size_bytes": int(batch["size_bytes"][i]),
                }
            )
    return records, failed


def _record(batch: dict[str, np.ndarray], i: int, model_id: str, run_id: str) -> VideoRecord:
    return VideoRecord(
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
        seen_run=run_id,
    )


class StoreWriter:
    """The store's single owner during a job (a Ray actor; calls run one at a time).

    Everything the job asks of the store goes through it: the plan stage's lookups (and
    marks), the sink's upserts, the decode stage's failure records, the final sweep. With
    ``target.create`` False (a dry run) it only reads, and a missing collection reads as
    empty.

    Args:
        target: the store and collection to open.
    """

    def __init__(self, target: StoreTarget) -> None:
        self.store: VideoStore | None = None
        self.error: BaseException | None = None
        try:
            self.store = open_when_free(target.open)
        except LookupError:
            if target.create:
                raise
        except Exception as err:  # raised to the caller by progress(): a readable error
            self.error = err
        self.upserted = 0
        self._totals: list[int] = []  # running totals after each upsert, not yet polled

    def _require(self) -> VideoStore:
        if self.error is not None:
            raise self.error
        if self.store is None:
            raise RuntimeError("the store writer is closed")
        return self.store

    def upsert(self, records: list[VideoRecord]) -> int:
        """Write one batch (durable on return); the number of records written."""
        self._require().upsert(records)
        self.upserted += len(records)
        self._totals.append(self.upserted)
        return len(records)

    def add_upserted(self, n: int) -> int:
        """Count ``n`` records a write task upserted itself (server backend)."""
        self.upserted += n
        self._totals.append(self.upserted)
        return n

    def lookup(self, uris: list[str], mark_run: str | None = None) -> dict[str, IndexedState]:
        """What the collection holds for ``uris``; with ``mark_run``, mark those it holds as
        seen by that run (``--prune``'s mark)."""
        if self.store is None and self.error is None:  # dry run on a missing collection
            return {}
        store = self._require()
        known = store.lookup(uris)
        if mark_run and known:
            store.mark_seen(list(known), mark_run)
        return known

    def delete(self, uris: list[str]) -> int:
        """Delete these URIs' points (durable on return); how many the store held."""
        return self._require().delete(uris)

    def flush(self) -> None:
        """Make every write so far durable on disk."""
        self._require().flush()

    def record_failures(self, failures: list[FailedVideo]) -> int:
        """Store permanent failures (not downloaded again at the same etag)."""
        self._require().record_failures(failures)
        return len(failures)

    def sweep(self, uri_prefix: str, run_id: str) -> tuple[int, int]:
        """Delete what run ``run_id`` did not see under ``uri_prefix``: (points, bytes)."""
        return self._require().sweep(uri_prefix, run_id)

    def prefix_totals(self, uri_prefix: str) -> tuple[int, int]:
        """(points, bytes) stored under ``uri_prefix`` (0, 0 for a missing collection)."""
        if self.store is None and self.error is None:
            return 0, 0
        return self._require().prefix_totals(uri_prefix)

    def progress(self) -> list[int]:
        """The running totals after each upsert since the last call (raises the open error)."""
        if self.error is not None:
            raise self.error
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
    """Ray Data sink: embedding rows -> upserts of ``upsert_batch_size`` records.

    Args:
        writer: handle of the :class:`StoreWriter` actor.
        model_id: the model whose vectors the rows hold.
        upsert_batch_size: records per upsert; also the rows Ray Data bundles per write task.
        run_id: the run's mark (``--prune``), or "".
        failures: a ``FailureReporter`` for rows that cannot be stored (None: they raise).
        direct: the server store's target: each write task upserts through its own client
            and only counts its writes on ``writer``. None: ``writer`` upserts (embedded).
    """

    def __init__(
        self,
        writer: Any,
        model_id: str,
        upsert_batch_size: int,
        run_id: str = "",
        failures: Any = None,
        direct: StoreTarget | None = None,
    ) -> None:
        if upsert_batch_size < 1:
            raise ValueError("upsert_batch_size must be >= 1")
        self.writer = writer
        self.model_id = model_id
        self.run_id = run_id
        self.upsert_batch_size = upsert_batch_size
        self.failures = failures
        self.direct = direct
        self.written = 0  # records upserted by all write tasks; set by on_write_complete

    @property
    def min_rows_per_write(self) -> int:
        return self.upsert_batch_size

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        store = self.direct.open_writer() if self.direct is not None else None
        try:
            return self._write(blocks, store)
        finally:
            if store is not None:
                store.close()

    def _write(self, blocks: Iterable[Block], store: VideoStore | None) -> int:
        import ray

        def send(chunk: list[VideoRecord]) -> int:
            if store is None:
                return int(ray.get(self.writer.upsert.remote(chunk)))
            store.upsert(chunk)  # retried inside on transient errors
            return int(ray.get(self.writer.add_upserted.remote(len(chunk))))

        written = 0
        pending: list[VideoRecord] = []
        for block in blocks:
            rows = BlockAccessor.for_block(block)
            if rows.num_rows() == 0:  # every video of a batch failed: may lack columns
                continue
            batch = rows.to_batch_format("numpy")
            if self.failures is None:
                pending += to_records(batch, self.model_id, self.run_id)
            else:
                records, failed = to_records_checked(batch, self.model_id, self.run_id)
                if failed:
                    self.failures.record(failed)
                pending += records
            while len(pending) >= self.upsert_batch_size:
                chunk, pending = (
                    pending[: self.upsert_batch_size],
                    pending[self.upsert_batch_size :],
                )
                written += send(chunk)
        if pending:
            written += send(pending)
        return written

    def on_write_complete(self, write_result: Any) -> None:
        self.written = sum(int(n) for n in write_result.write_returns if n is not None)


def progress_line(
    indexed: int, total: int, skipped: int, failed: int, elapsed_s: float, listed: int = -1
) -> str:
    """The periodic log line: rate, counts and the time left at that rate (``total``: the
    videos planned so far; it grows while the listing goes on)."""
    rate = indexed / elapsed_s if elapsed_s > 0 else 0.0
    left = max(total - indexed - failed, 0)
    eta = f"{left / rate:.0f}s" if rate > 0 else "?"
    seen = f"listed {listed}, " if listed >= 0 else ""
    return (
        f"{rate:.2f} videos/s, {seen}indexed {indexed}/{total}, skipped {skipped}, "
        f"failed {failed}, ETA {eta}"
    )


class ProgressReporter:
    """Driver thread polling the writer and the report actor: one ``indexed N/M videos``
    line per upsert (M: videos planned so far), a :func:`progress_line` log every
    ``log_every_s`` seconds, and ``flush()`` (summary.json) every ``flush_every_s``.

    Args:
        writer: the :class:`StoreWriter` actor handle.
        report: the ``JobReport`` actor handle (counts of the plan stage and failures).
        log_every_s: seconds between two log lines.
        poll_s: seconds between two polls of the writer.
        flush: called every ``flush_every_s`` seconds (None: never).
        flush_every_s: seconds between two calls of ``flush``.
    """

    def __init__(
        self,
        writer: Any,
        report: Any,
        log_every_s: float = 10.0,
        poll_s: float = 0.25,
        flush: Callable[[], Any] | None = None,
        flush_every_s: float = 30.0,
    ) -> None:
        self.writer, self.report = writer, report
        self.log_every_s, self.poll_s = log_every_s, poll_s
        self.flush, self.flush_every_s = flush, flush_every_s
        self.indexed = 0
        self.lines: list[str] = []  # the log lines so far
        self._started = self._logged = self._flushed = time.monotonic()
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

        totals = ray.get(self.writer.progress.remote())
        now = time.monotonic()
        due = force_log or now - self._logged >= self.log_every_s
        counts = ray.get(self.report.snapshot.remote()) if totals or due else {}
        for n in totals:
            self.indexed = n
            print(f"indexed {n}/{counts['to_index']} videos", flush=True)
        if due:
            self._logged = now
            line = progress_line(
                self.indexed,
                int(counts["to_index"]),
                int(counts["skipped"]) + int(counts["skipped_failed"]),
                int(counts["failed"]),
                now - self._started,
                listed=int(counts["listed"]),
            )
            self.lines.append(line)
            log.info("%s", line)
        if self.flush is not None and now - self._flushed >= self.flush_every_s:
            self._flushed = now
            self.flush()
