"""``adaclip watch SOURCE``: keep a collection in sync with a bucket prefix or a folder.

    adaclip watch s3://bucket/videos/ --queue-url https://sqs.../adaclip-uploads \\
        --checkpoint s3://bucket/models/adaclip --ray-address auto
    adaclip watch /data/videos --poll-interval 30

Two ways to learn what changed:

- **S3 event notifications in SQS** (``--queue-url``): the bucket sends ``ObjectCreated``
  and ``ObjectRemoved`` events (keys URL-encoded) to a queue; the watcher receives them.
- **Polling** (``--poll-interval``): every interval the prefix (or folder) is listed and
  looked up batch by batch, as the index job's plan stage does, and what the listing no
  longer holds is swept (mark and sweep with a poll id, only after a complete listing).

Work goes in micro-batches, bounded in size (``--batch-size``) and in wait
(``--batch-wait-s``), through warm actors that live as long as the watcher: decode actors
(:class:`~pipelines.embed.DecodeVideos`) and a model actor
(:class:`~pipelines.embed.EmbedVideos`, the model loaded once). Writes go through the
store's owner (:class:`~pipelines.store_sink.StoreWriter`; with an embedded store on Ray,
the folder's store actor, so ``adaclip serve`` answers from the same index meanwhile).

Each event is reconciled with the object as it is now: an S3 HEAD tells whether it exists
and its etag. A created or changed object is indexed unless the store holds it at that
etag already (a redelivered message costs a HEAD and a lookup); a removed object is
deleted unless it exists again. An event whose etag is not the object's, or a removal of an
object that exists, is stale and counted as such. Point ids are UUID5 of the URI, so a
video is stored once however often its events arrive.

A message is deleted from the queue only after its upsert or delete is durable (written
and flushed): a watcher killed at any point leaves its messages in the queue, which
redelivers them after their visibility timeout. At most ``--max-in-flight`` events are
received and not yet done (backpressure: the queue is the buffer). A video that cannot be
fetched or decoded becomes one row of ``failures.jsonl`` and a failure record (not fetched
again at the same etag), as in the batch job.

Progress and lag (age of the oldest event received and not yet done, events/s) are logged
every ``--status-every-s``, written to ``summary.json``, and exported as Ray metrics
(``adaclip_watch_lag_s``, ``adaclip_watch_events_per_s``, ``adaclip_watch_in_flight``,
``adaclip_watch_events_total``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

import numpy as np
from pydantic import Field
from pydantic_settings import CliPositionalArg

from pipelines.checkpoints import CheckpointInfo, describe_checkpoint, write_zero_shot_checkpoint
from pipelines.embed import DecodeSpec, DecodeVideos, EmbedVideos, failure_row
from pipelines.listing import resolve_source
from pipelines.object_fetch import (
    FetchError,
    ObjectFetcher,
    ObjectNotFoundError,
    TransientStorageError,
    is_s3_uri,
    split_s3_uri,
)
from pipelines.plan import plan_rows
from pipelines.report import FailureReporter, JobReport
from pipelines.settings import (
    DEFAULT_QDRANT_PATH,
    StoreSettings,
    default_collection,
    parse_settings,
)
from pipelines.sources import VIDEO_EXTENSIONS, SourceError, list_videos
from pipelines.store_sink import StoreTarget, StoreWriter, to_records

log = logging.getLogger("adaclip.watch")

EXIT_SOURCE_ERROR = 2
SQS_MAX_MESSAGES = 10  # ReceiveMessage's limit
RATE_WINDOW_S = 60.0  # events/s is measured over this window


class WatchSettings(StoreSettings):
    """``adaclip watch SOURCE``: keep a collection in sync with a bucket prefix or folder."""

    source: CliPositionalArg[str] = Field(
        description="s3://bucket/prefix (events from --queue-url, or polled) or a local folder "
        "(polled)"
    )
    queue_url: str | None = Field(
        None, description="SQS queue that receives the bucket's S3 event notifications"
    )
    sqs_endpoint_url: str | None = Field(
        None, description="SQS-compatible endpoint (moto, ElasticMQ ...; default: AWS)"
    )
    poll_interval: float | None = Field(
        None,
        description="seconds between two listings of SOURCE, for stores without "
        "notifications (default 30 without --queue-url)",
    )
    checkpoint: str | None = Field(
        None, description="checkpoint folder (local or s3://); none: zero-shot CLIP (--arch)"
    )
    arch: str = Field("tiny", description="CLIP architecture for zero-shot indexing")
    clip_weights: str | None = Field(None, description="CLIP weights file for zero-shot indexing")
    output: str = Field(
        "./.adaclip/jobs/watch", description="folder for summary.json and failures.jsonl"
    )
    ray_address: str | None = Field(None, description="Ray cluster address (default: local/auto)")
    frame_size: int = Field(224, description="decoded frame size (square, pixels)")
    num_candidates: int | None = Field(
        None, description="N candidate frames (default: checkpoint's)"
    )
    decode_actors: int = Field(1, description="warm decode actors")
    decode_cpus: float = Field(0.5, description="CPUs per decode actor")
    decode_threads: int = Field(1, description="FFmpeg threads per decode actor (0: FFmpeg picks)")
    model_cpus: float = Field(0.5, description="CPUs of the model actor on a CPU-only cluster")
    use_gpu: bool | None = Field(None, description="force the model actor onto a GPU")
    spool_threshold_mb: int = Field(64, description="objects larger than this are spooled to disk")
    max_retries: int = Field(5, description="retries of an S3 request after a transient error")
    batch_size: int = Field(8, ge=1, description="most videos per micro-batch")
    batch_wait_s: float = Field(
        2.0, ge=0, description="longest wait for a micro-batch to fill before it runs"
    )
    max_in_flight: int = Field(
        32, ge=1, description="most events received and not yet done (backpressure)"
    )
    visibility_timeout_s: int = Field(
        300,
        ge=1,
        description="SQS visibility timeout of a received message: redelivered after this "
        "when not done (a killed watcher's messages)",
    )
    retry_failed: bool = Field(
        False, description="fetch again videos that failed to decode before at the same etag"
    )
    status_every_s: float = Field(10.0, description="seconds between two progress log lines")
    once: bool = Field(
        False,
        description="do what is pending and exit: until the queue is empty, or one listing",
    )


# ---- events -------------------------------------------------------------------------------


@dataclass
class Change:
    """One object event: created (``put``) or removed (``remove``)."""

    uri: str
    kind: str  # "put" | "remove"
    etag: str = ""
    size_bytes: int = 0
    sequencer: str = ""
    seen_at: float = field(default_factory=time.time)  # when it happened (or was found)


@dataclass
class Message:
    """A received queue message and its changes; done when all of them are durable."""

    receipt: str
    changes: list[Change]
    sent_at: float


def _sequencer_key(seq: str) -> tuple[int, str]:
    """S3 sequencers of one key compare as hex strings of equal length."""
    return (len(seq.lstrip("0")), seq.lstrip("0"))


def parse_s3_event(body: str, bucket: str, prefix: str) -> list[Change]:
    """The changes under ``s3://bucket/prefix`` of one S3 event notification (also wrapped
    in an SNS envelope); ``[]`` for a test event or events elsewhere.

    Raises:
        ValueError: not an S3 event notification.
    """
    doc = json.loads(body)
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        doc = json.loads(doc["Message"])  # S3 -> SNS -> SQS
    if not isinstance(doc, dict):
        raise ValueError("not an S3 event notification")
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in doc:
        raise ValueError("not an S3 event notification (no Records)")
    changes = []
    for record in doc["Records"]:
        name = str(record.get("eventName", ""))
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        if (s3.get("bucket") or {}).get("name") != bucket or "key" not in obj:
            continue
        key = unquote_plus(str(obj["key"]))
        if not key.startswith(prefix) or PurePosixPath(key).suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        if name.startswith("ObjectCreated"):
            kind = "put"
        elif name.startswith("ObjectRemoved"):
            kind = "remove"
        else:
            continue
        changes.append(
            Change(
                uri=f"s3://{bucket}/{key}",
                kind=kind,
                etag=str(obj.get("eTag") or "").strip('"'),
                size_bytes=int(obj.get("size") or 0),
                sequencer=str(obj.get("sequencer") or ""),
            )
        )
    return changes


def latest_per_uri(changes: Iterable[Change]) -> list[Change]:
    """One change per URI: the highest sequencer, else the last received."""
    latest: dict[str, Change] = {}
    for change in changes:
        held = latest.get(change.uri)
        if (
            held is None
            or not (held.sequencer and change.sequencer)
            or _sequencer_key(change.sequencer) >= _sequencer_key(held.sequencer)
        ):
            latest[change.uri] = change
    return list(latest.values())


# ---- progress -----------------------------------------------------------------------------


class WatchStats:
    """Counters, rate, lag and in-flight figures; logged, in summary.json, and as metrics."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.oldest_pending_at: float | None = None
        self.queue_depth: int | None = None
        self._done_at: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()
        self._metrics = _metrics()

    def pending(self, in_flight: int, oldest_at: float | None) -> None:
        self.in_flight = in_flight
        self.peak_in_flight = max(self.peak_in_flight, in_flight)
        self.oldest_pending_at = oldest_at

    def done(self, **counts: int) -> None:
        self.counts.update(counts)
        now = time.monotonic()
        self._done_at.append((now, int(counts.get("events", 0))))
        if self._metrics is not None:
            for action, n in counts.items():
                if n:
                    self._metrics["total"].inc(n, tags={"action": action})

    def rate(self) -> float:
        now = time.monotonic()
        while self._done_at and now - self._done_at[0][0] > RATE_WINDOW_S:
            self._done_at.popleft()
        window = min(RATE_WINDOW_S, now - self._started)
        return sum(n for _, n in self._done_at) / window if window > 0 else 0.0

    def lag_s(self) -> float:
        return 0.0 if self.oldest_pending_at is None else time.time() - self.oldest_pending_at

    def snapshot(self) -> dict[str, Any]:
        return {
            **{k: int(v) for k, v in self.counts.items()},
            "events_per_s": round(self.rate(), 3),
            "lag_s": round(self.lag_s(), 3),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "queue_depth": self.queue_depth,
        }

    def line(self) -> str:
        c = self.counts
        depth = "" if self.queue_depth is None else f", queue ~{self.queue_depth}"
        return (
            f"watch: {c['events']} events ({c['indexed']} indexed, {c['deleted']} deleted, "
            f"{c['skipped']} unchanged, {c['stale']} stale, {c['failed']} failed), "
            f"{self.rate():.2f} events/s, lag {self.lag_s():.1f}s, in flight {self.in_flight} "
            f"(peak {self.peak_in_flight}){depth}"
        )

    def export(self) -> None:
        if self._metrics is not None:
            self._metrics["lag"].set(self.lag_s())
            self._metrics["rate"].set(self.rate())
            self._metrics["in_flight"].set(self.in_flight)


def _metrics() -> dict[str, Any] | None:
    try:
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Gauge

        return {
            "lag": Gauge("adaclip_watch_lag_s", "age of the oldest event not yet done (s)"),
            "rate": Gauge("adaclip_watch_events_per_s", "events done per second (last minute)"),
            "in_flight": Gauge("adaclip_watch_in_flight", "events received, not yet done"),
            "total": RayCounter(
                "adaclip_watch_events_total", "events done, by outcome", tag_keys=("action",)
            ),
        }
    except Exception as err:  # metrics are optional: the log and summary.json carry them too
        log.debug("no Ray metrics: %s", err)
        return None


# ---- the warm stages ----------------------------------------------------------------------


class WarmDecoder:
    """A decode actor that lives as long as the watcher (:class:`DecodeVideos` inside)."""

    def __init__(self, fetcher: ObjectFetcher, spec: DecodeSpec, failures: Any) -> None:
        self.stage = DecodeVideos(fetcher, spec, failures)

    def decode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.stage(batch)


class WarmEmbedder:
    """The model actor: loads the checkpoint once (:class:`EmbedVideos` inside)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stage = EmbedVideos(*args, **kwargs)

    def embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.stage(batch)


def listing_batch(rows: Sequence[tuple[str, str, str, int]]) -> dict[str, np.ndarray]:
    """(uri, video_id, etag, size) rows as the decode stage's input columns."""
    return {
        "uri": np.array([r[0] for r in rows], dtype=object),
        "video_id": np.array([r[1] for r in rows], dtype=object),
        "etag": np.array([r[2] for r in rows], dtype=object),
        "size_bytes": np.array([r[3] for r in rows], dtype=np.int64),
    }


# ---- the watcher --------------------------------------------------------------------------


class Watcher:
    """The long-running job: warm actors, the store's owner, the report, the counters.

    Args:
        settings: the watch settings.
    """

    def __init__(self, settings: WatchSettings) -> None:
        import ray

        self.settings = settings
        self.stop_event = threading.Event()
        self.stats = WatchStats()
        self.fetcher = ObjectFetcher(
            s3_endpoint_url=settings.s3_endpoint_url,
            max_retries=settings.max_retries,
            spool_threshold_bytes=settings.spool_threshold_mb << 20,
        )
        if not ray.is_initialized():
            ray.init(address=settings.ray_address, log_to_driver=False)
        self.model = self._model()
        self.collection = settings.collection or default_collection(self.model.model_id)
        self.run_id = uuid.uuid4().hex
        header = {
            "source": settings.source,
            "collection": self.collection,
            "model_id": self.model.model_id,
            "run_id": self.run_id,
            "mode": "sqs" if settings.queue_url else "poll",
        }
        self.report: Any = (
            ray.remote(JobReport)
            .options(num_cpus=0)
            .remote(settings.output, header, None, True, settings.s3_endpoint_url)
        )
        target = StoreTarget(
            qdrant_path=None
            if settings.qdrant_url
            else str(Path(settings.qdrant_path or DEFAULT_QDRANT_PATH).expanduser().resolve()),
            qdrant_url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            collection=self.collection,
            dim=self.model.embed_dim,
            num_frames=self.model.top_k,
            model_id=self.model.model_id,
            shared=True,
        )
        writer_cls: Any = ray.remote(StoreWriter)
        self.writer: Any = writer_cls.options(num_cpus=0).remote(target)
        ray.get(self.writer.progress.remote())  # the store's open error, before any work
        self.failures = FailureReporter(self.report, self.writer, self.model.model_id)
        use_gpu = settings.use_gpu
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        spec = DecodeSpec(
            self.model.num_candidates, settings.frame_size, threads=settings.decode_threads
        )
        decoder_cls: Any = ray.remote(WarmDecoder)
        self.decoders = [
            decoder_cls.options(num_cpus=settings.decode_cpus).remote(
                self.fetcher, spec, self.failures
            )
            for _ in range(max(settings.decode_actors, 1))
        ]
        embedder_cls: Any = ray.remote(WarmEmbedder)
        self.embedder: Any = embedder_cls.options(
            num_cpus=1 if use_gpu else settings.model_cpus, num_gpus=1 if use_gpu else 0
        ).remote(
            self.model.uri,
            settings.s3_endpoint_url,
            use_gpu,
            settings.frame_size,
            self.report,
            failures=self.failures,
        )
        self._status_at = time.monotonic()

    def _model(self) -> CheckpointInfo:
        import ray

        s = self.settings
        uri = s.checkpoint
        if uri is None:  # zero-shot, written once by a Ray task (the driver loads no model)
            dest = str((Path(s.output) / "zero-shot-checkpoint").resolve())
            task: Any = ray.remote(write_zero_shot_checkpoint).options(num_cpus=0.1)
            uri = str(ray.get(task.remote(dest, s.arch, s.clip_weights, s.s3_endpoint_url)))
        info = describe_checkpoint(uri, s.s3_endpoint_url)
        if s.num_candidates:
            info = CheckpointInfo(
                info.uri, info.model_id, s.num_candidates, info.top_k, info.embed_dim
            )
        return info

    # ---- one micro-batch ----------------------------------------------------------------

    def index_rows(
        self, rows: list[tuple[str, str, str, int]], mark_run: str = ""
    ) -> dict[str, int]:
        """Index the new or changed ones of ``rows`` (uri, video_id, etag, size); durable
        (written and flushed) on return. Counts: indexed, skipped, failed."""
        import ray

        if not rows:
            return {}
        uris = [r[0] for r in rows]
        known = ray.get(self.writer.lookup.remote(uris, mark_run or None))
        todo, _ = plan_rows(
            uris, [r[2] for r in rows], [r[3] for r in rows], known, self.settings.retry_failed
        )
        work = [rows[i] for i in todo]
        indexed = 0
        if work:
            per = math.ceil(len(work) / len(self.decoders))
            refs = [
                self.embedder.embed.remote(
                    decoder.decode.remote(listing_batch(work[i * per : (i + 1) * per]))
                )
                for i, decoder in enumerate(self.decoders)
                if work[i * per : (i + 1) * per]
            ]
            records = []
            for out in ray.get(refs):
                if len(out["uri"]):
                    records += to_records(out, self.model.model_id, mark_run)
            if records:
                indexed = int(ray.get(self.writer.upsert.remote(records)))
            if mark_run:  # failure records written meanwhile: seen by this poll too
                ray.get(self.writer.lookup.remote([r[0] for r in work], mark_run))
        ray.get(self.writer.flush.remote())
        return {
            "indexed": indexed,
            "skipped": len(rows) - len(work),
            "failed": len(work) - indexed,
        }

    def apply(self, changes: list[Change]) -> tuple[dict[str, int], set[str]]:
        """Reconcile changes with the objects as they are now; durable on return.

        Returns the counts and the URIs whose state could not be read for a transient
        reason (their messages are left for redelivery).
        """
        import ray

        latest = latest_per_uri(changes)
        with ThreadPoolExecutor(max_workers=min(8, max(len(latest), 1))) as pool:
            stats = list(pool.map(self._stat, latest))
        rows, gone, retry, failed_rows = [], [], set(), []
        stale = 0
        for change, state in zip(latest, stats, strict=True):
            if isinstance(state, TransientStorageError):
                retry.add(change.uri)
            elif isinstance(state, ObjectNotFoundError):
                gone.append(change.uri)
                stale += change.kind == "put"
            elif isinstance(state, FetchError):
                failed_rows.append(failure_row(change.uri, "fetch", state, change.etag))
            else:
                etag, size = state
                stale += change.kind == "remove" or bool(change.etag and change.etag != etag)
                rows.append((change.uri, PurePosixPath(change.uri).stem, etag, size))
        if failed_rows:
            self.failures.record(failed_rows)
        deleted = int(ray.get(self.writer.delete.remote(gone))) if gone else 0
        counts = self.index_rows(rows)
        counts["failed"] = counts.get("failed", 0) + len(failed_rows)
        if gone:
            ray.get(self.writer.flush.remote())
        counts.update(deleted=deleted, stale=stale, events=len(changes) - len(retry))
        return counts, retry

    def _stat(self, change: Change) -> tuple[str, int] | FetchError:
        try:
            st = self.fetcher.stat(change.uri)
        except FetchError as err:
            return err
        return st.etag, st.size_bytes

    # ---- the loops ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Watch until stopped (SIGTERM, ``stop()``) or, with ``--once``, idle; the summary."""
        try:
            if self.settings.queue_url:
                self._run_sqs()
            else:
                self._run_poll()
        finally:
            summary = self.flush_summary(finished=True)
            log.info("%s", self.stats.line())
        return summary

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        import ray

        try:
            ray.get(self.writer.close.remote(optimize=False))
        except Exception as err:
            log.debug("closing the writer failed: %s", err)
        for actor in (*self.decoders, self.embedder, self.writer, self.report):
            ray.kill(actor)

    def flush_summary(self, finished: bool = False) -> dict[str, Any]:
        import ray

        extra = {**self.stats.snapshot(), "finished": finished}
        try:
            return dict(ray.get(self.report.flush.remote(extra)))
        except Exception as err:
            log.warning("could not write summary.json: %s", err)
            return extra

    def _status(self, force: bool = False) -> None:
        self.stats.export()
        now = time.monotonic()
        if force or now - self._status_at >= self.settings.status_every_s:
            self._status_at = now
            log.info("%s", self.stats.line())
            self.flush_summary()

    def _run_sqs(self) -> None:
        import boto3

        s = self.settings
        assert s.queue_url is not None
        if not is_s3_uri(s.source):
            raise SourceError(f"--queue-url needs an s3://bucket/prefix source, not {s.source}")
        bucket, prefix = split_s3_uri(s.source)
        sqs = boto3.client("sqs", endpoint_url=s.sqs_endpoint_url)
        buffer: deque[Message] = deque()
        depth_at = 0.0
        while not self.stop_event.is_set():
            room = s.max_in_flight - sum(max(len(m.changes), 1) for m in buffer)
            first = buffer[0].sent_at if buffer else None
            due = bool(buffer) and (
                sum(len(m.changes) for m in buffer) >= s.batch_size
                or time.time() - (first or 0) >= s.batch_wait_s
                or room <= 0
            )
            got = 0
            if room > 0 and not due:
                wait = s.batch_wait_s if not buffer else 0
                got = self._receive(sqs, bucket, prefix, buffer, min(room, SQS_MAX_MESSAGES), wait)
            pending = sum(len(m.changes) for m in buffer)
            self.stats.pending(pending, min((m.sent_at for m in buffer), default=None))
            if time.monotonic() - depth_at >= s.status_every_s:
                depth_at = time.monotonic()
                self.stats.queue_depth = _queue_depth(sqs, s.queue_url)
            if buffer and (due or got == 0):
                self._sqs_batch(sqs, buffer)
            elif not buffer and got == 0 and s.once and _queue_drained(sqs, s.queue_url):
                return
            self._status()

    def _receive(
        self, sqs: Any, bucket: str, prefix: str, buffer: deque[Message], n: int, wait_s: float
    ) -> int:
        s = self.settings
        resp = sqs.receive_message(
            QueueUrl=s.queue_url,
            MaxNumberOfMessages=max(1, min(n, SQS_MAX_MESSAGES)),
            WaitTimeSeconds=int(min(20, math.ceil(wait_s))),
            VisibilityTimeout=s.visibility_timeout_s,
            AttributeNames=["SentTimestamp"],
        )
        messages = resp.get("Messages", [])
        ignored = []
        for msg in messages:
            sent = float(msg.get("Attributes", {}).get("SentTimestamp", time.time() * 1000)) / 1000
            try:
                changes = parse_s3_event(msg["Body"], bucket, prefix)
            except (ValueError, KeyError, TypeError) as err:
                log.warning("dropping a message that is no S3 event: %s", err)
                self.stats.done(bad_messages=1)
                changes = []
            for change in changes:
                change.seen_at = sent
            if changes:
                buffer.append(Message(msg["ReceiptHandle"], changes, sent))
            else:
                ignored.append(msg["ReceiptHandle"])
        _delete_messages(sqs, str(s.queue_url), ignored)
        return len(messages)

    def _sqs_batch(self, sqs: Any, buffer: deque[Message]) -> None:
        s = self.settings
        batch: list[Message] = []
        while buffer and (not batch or sum(len(m.changes) for m in batch) < s.batch_size):
            batch.append(buffer.popleft())
        changes = [c for m in batch for c in m.changes]
        print(f"micro-batch: {len(changes)} events", flush=True)
        try:
            counts, retry = self.apply(changes)
        except Exception as err:  # the store or a stage failed: the messages come back later
            log.error("micro-batch failed, left in the queue: %s: %s", type(err).__name__, err)
            self.stats.done(batch_errors=1)
            time.sleep(min(5.0, s.batch_wait_s + 1))
            return
        done = [m for m in batch if not any(c.uri in retry for c in m.changes)]
        _delete_messages(sqs, str(s.queue_url), [m.receipt for m in done])
        self.stats.done(**counts)
        print(
            f"micro-batch done: indexed {counts.get('indexed', 0)}, deleted "
            f"{counts.get('deleted', 0)}, unchanged {counts.get('skipped', 0)}, "
            f"failed {counts.get('failed', 0)}",
            flush=True,
        )

    def _run_poll(self) -> None:
        s = self.settings
        interval = 30.0 if s.poll_interval is None else s.poll_interval
        spec = resolve_source(s.source, s3_endpoint_url=s.s3_endpoint_url)
        if spec.kind not in ("s3", "folder") or spec.prune_prefix is None:
            raise SourceError(f"watch polls a bucket prefix or a folder, not {s.source}")
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.poll_once(spec.prune_prefix)
            if s.once:
                return
            self.stop_event.wait(max(0.0, interval - (time.monotonic() - started)))

    def poll_once(self, prefix: str) -> dict[str, int]:
        """One listing: index what is new or changed, then delete what is gone."""
        import ray

        s = self.settings
        poll_id = uuid.uuid4().hex
        totals: Counter[str] = Counter()
        listing = list_videos(
            s.source, s3_endpoint_url=s.s3_endpoint_url, page_size=max(s.batch_size, 100)
        )
        for chunk in _chunks(listing, s.batch_size):
            found_at = time.time()
            rows = [(v.uri, v.video_id, v.etag, v.size_bytes) for v in chunk]
            self.stats.pending(len(rows), found_at)
            counts = self.index_rows(rows, mark_run=poll_id)
            work = counts.get("indexed", 0) + counts.get("failed", 0)
            counts["events"] = work
            self.stats.done(**counts)
            self.stats.pending(0, None)
            totals.update(counts)
            if work:
                print(f"micro-batch done: indexed {counts['indexed']}", flush=True)
            self._status()
            if self.stop_event.is_set():
                return dict(totals)  # an incomplete listing sweeps nothing
        deleted, _ = ray.get(self.writer.sweep.remote(prefix, poll_id))
        if deleted:
            ray.get(self.writer.flush.remote())
            self.stats.done(deleted=deleted, events=deleted)
            print(f"deleted {deleted} videos gone from {prefix}", flush=True)
        totals["deleted"] += deleted
        self._status(force=bool(deleted or totals["indexed"]))
        return dict(totals)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _delete_messages(sqs: Any, queue_url: str, receipts: list[str]) -> None:
    for i in range(0, len(receipts), SQS_MAX_MESSAGES):
        entries = [
            {"Id": str(j), "ReceiptHandle": r}
            for j, r in enumerate(receipts[i : i + SQS_MAX_MESSAGES])
        ]
        resp = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        for failed in resp.get("Failed", []):  # redelivered later: harmless
            log.warning("could not delete a message: %s", failed.get("Message"))


def _queue_drained(sqs: Any, queue_url: str) -> bool:
    """No message left, received by anyone or not (a killed watcher's come back later)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attrs.get(n, 0)) for n in names) == 0


def _queue_depth(sqs: Any, queue_url: str) -> int | None:
    try:
        attrs = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])
    except Exception as err:
        log.debug("queue depth unknown: %s", err)
        return None


def run_watch(
    settings: WatchSettings, on_start: Callable[[Watcher], None] | None = None
) -> dict[str, Any]:
    """Build the watcher, run it until stopped (or idle with ``--once``); the summary."""
    watcher = Watcher(settings)
    try:
        if on_start is not None:
            on_start(watcher)
        return watcher.run()
    finally:
        watcher.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip watch`` and ``python -m pipelines.watch``.

    Exit codes: 0 stopped (SIGTERM/SIGINT) or done (``--once``), 2 the source, queue,
    checkpoint or store cannot be used.
    """
    from adaclip.checkpoint import CheckpointError
    from pipelines.index import root_error
    from pipelines.store import ModelMismatchError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = parse_settings(WatchSettings, argv, "adaclip watch")

    def on_start(watcher: Watcher) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: watcher.stop())
        print(f"watching {settings.source} into {watcher.collection}", flush=True)

    try:
        summary = run_watch(settings, on_start)
    except (SourceError, ModelMismatchError, CheckpointError, ValueError) as err:
        print(f"adaclip watch: {root_error(err)}", file=sys.stderr)
        return EXIT_SOURCE_ERROR
    except Exception as err:
        cause = root_error(err)
        print(f"adaclip watch: failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return EXIT_SOURCE_ERROR if isinstance(cause, SourceError) else 1
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
