"""Ray Data: decode each video's N candidate frames once and keep them for every epoch.

``decode_split`` resolves a split's videos (missing files are reported, not fatal), runs
:func:`adaclip.decode.decode_candidates` (the ingestion job's decoder) in Ray Data actors,
and materialises the result in the object store (spilling to disk when it is large): the
cache that lets epochs after the first skip decoding. With a frame store
(:mod:`train.frame_store`, ``adaclip train``'s default) decoded candidates also persist on
disk or s3:// across runs: a later run or resubmission decodes only new or changed videos.
Videos that fail to decode are reported once and dropped. Rows are ``video_id`` (str), ``frames`` (N, S, S, 3) uint8 and
``captions`` (JSON list of strings); the training loop draws a caption per epoch.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from train.datasets import VideoRecord, load_split, resolve_videos
from train.frame_store import FrameStore
from train.settings import DataSettings

if TYPE_CHECKING:
    import ray.data
    import torch

logger = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]
T = TypeVar("T")


@dataclass(frozen=True)
class DecodeOptions:
    """How candidate frames are decoded in the Ray Data stage."""

    num_candidates: int  # N
    frame_size: int  # square output size in pixels
    s3_endpoint_url: str | None = None
    num_cpus: float = 0.25  # per decode task
    batch_size: int = 4  # videos per decode task
    concurrency: int = 2  # max decode actors (the pool grows from 1)
    remote: bool = False  # videos come from s3:// (each actor holds an ObjectFetcher)
    frames_dir: bool = False  # each URI is a folder of pre-extracted frames
    frames_fps: float | None = None


@dataclass
class DecodedSplit:
    """A split's decoded, materialised dataset and what was left out of it."""

    name: str
    dataset: ray.data.Dataset
    num_videos: int
    num_captions: int
    failures: list[dict[str, str]] = field(default_factory=list)  # video_id, reason, message
    decode_seconds: float = 0.0  # decoding (or reading the frame store) and materialising
    decoded_videos: int | None = None  # videos decoded now (None: no frame store)


class DecodeCandidates:
    """Ray Data UDF: rows (video_id, uri, captions) -> the same rows with ``frames``.

    A video that cannot be fetched or decoded keeps its row with an ``error`` message and
    zero frames, so the driver can report it; it never raises.
    """

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options
        self.fetcher: Any = None
        if options.s3_endpoint_url is not None or options.remote:
            from pipelines.sources import ObjectFetcher

            self.fetcher = ObjectFetcher(s3_endpoint_url=options.s3_endpoint_url)

    def __call__(self, batch: Batch) -> Batch:
        n, s = self.options.num_candidates, self.options.frame_size
        expected = _expected_errors(self.fetcher is not None)
        frames, errors = [], []
        for uri in batch["uri"]:
            try:
                frames.append(self._decode(str(uri)))
                errors.append("")
            except expected as err:
                frames.append(np.zeros((n, s, s, 3), dtype=np.uint8))
                errors.append(f"{type(err).__name__}: {str(err)[:300]}")
        return {
            "video_id": np.asarray(batch["video_id"], dtype=object),
            "captions": np.asarray(batch["captions"], dtype=object),
            "frames": np.stack(frames) if frames else np.zeros((0, n, s, s, 3), np.uint8),
            "error": np.asarray(errors, dtype=object),
        }

    def _decode(self, uri: str) -> np.ndarray:
        from adaclip.decode import decode_candidates

        n, size = self.options.num_candidates, self.options.frame_size
        if self.options.frames_dir:
            from adaclip.frames_dir import decode_candidates_from_frames

            return decode_candidates_from_frames(uri, n, size, fps=self.options.frames_fps).frames
        if uri.startswith("s3://"):
            if self.fetcher is None:
                raise ValueError(f"{uri}: s3:// URI without an object fetcher")
            with self.fetcher.fetch(uri) as fh:
                return decode_candidates(fh, n, size).frames  # (N, S, S, 3)
        return decode_candidates(uri, n, size).frames  # (N, S, S, 3)


def _expected_errors(remote: bool) -> tuple[type[BaseException], ...]:
    from adaclip.decode import DecodeError

    errors: tuple[type[BaseException], ...] = (DecodeError, OSError, ValueError)
    if remote:
        from pipelines.sources import FetchError

        errors += (FetchError,)
    return errors


def decode_records(
    name: str,
    records: list[VideoRecord],
    uris: list[str],
    options: DecodeOptions,
    missing: list[str] | None = None,
    *,
    etags: list[str] | None = None,
    store: FrameStore | None = None,
) -> DecodedSplit:
    """Decode and materialise ``records`` (with their URIs) as a Ray dataset.

    With a ``store`` (and the videos' ``etags``) only videos it does not hold yet are
    decoded, written to it, and the split is read back from it (:mod:`train.frame_store`).
    """
    import ray.data

    failures = [
        {"video_id": vid, "reason": "missing", "message": "no such video file"}
        for vid in missing or []
    ]
    if not records:
        raise ValueError(f"split {name!r}: none of its videos were found")
    if store is not None and etags is not None:
        return _decode_through_store(name, records, uris, etags, options, failures, store)
    rows = [
        {"video_id": r.video_id, "uri": uri, "captions": json.dumps(list(r.captions))}
        for r, uri in zip(records, uris, strict=True)
    ]
    start = time.perf_counter()
    num_blocks = max(1, min(len(rows) // max(1, options.batch_size), 200))
    options = replace(options, remote=any(u.startswith("s3://") for u in uris))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks).map_batches(
        DecodeCandidates,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=options.num_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=options.concurrency),
    )
    ds = ds.materialize()
    errors = [row for row in ds.select_columns(["video_id", "error"]).take_all() if row["error"]]
    for row in errors:
        failures.append(
            {"video_id": str(row["video_id"]), "reason": "decode", "message": row["error"]}
        )
    if errors:
        ds = ds.filter(expr="error == ''")
    # Materialised with no lazy step left: iterating it in later epochs runs no task, so
    # training workers may take every CPU without starving the data stream.
    ds = ds.drop_columns(["error"]).materialize()
    for failure in failures:
        logger.warning("split %s: left out %s (%s)", name, failure["video_id"], failure["message"])
    kept = len(records) - len(errors)
    if kept == 0:
        raise ValueError(f"split {name!r}: no video could be decoded")
    bad = {str(row["video_id"]) for row in errors}
    return DecodedSplit(
        name=name,
        dataset=ds,
        num_videos=kept,
        num_captions=sum(len(r.captions) for r in records if r.video_id not in bad),
        failures=failures,
        decode_seconds=time.perf_counter() - start,
    )


def _decode_through_store(
    name: str,
    records: list[VideoRecord],
    uris: list[str],
    etags: list[str],
    options: DecodeOptions,
    failures: list[dict[str, str]],
    store: FrameStore,
) -> DecodedSplit:
    """Decode what the store lacks, append it, read the whole split back from the store."""
    from train.frame_store import (
        read_split,
        rows_per_shard,
        store_key,
        stored_rows,
        to_store_rows,
        write_target,
    )

    start = time.perf_counter()
    folder = store.folder(options.num_candidates, options.frame_size, options.frames_dir)
    frame_shape = (options.num_candidates, options.frame_size, options.frame_size, 3)
    keys = [store_key(u, e) for u, e in zip(uris, etags, strict=True)]
    stored = stored_rows(store, folder)
    todo = [i for i, key in enumerate(keys) if key not in stored]
    if todo:
        rows = [{"video_id": records[i].video_id, "uri": uris[i], "captions": "[]"} for i in todo]
        options = replace(options, remote=any(uris[i].startswith("s3://") for i in todo))
        decoded = _decode_dataset(rows, options).map_batches(
            functools.partial(to_store_rows, keys={records[i].video_id: keys[i] for i in todo}),
            batch_format="numpy",
            num_cpus=options.num_cpus,
        )
        decoded.write_parquet(
            **write_target(store, folder, options.num_cpus),
            min_rows_per_file=rows_per_shard(frame_shape),
        )
        stored = stored_rows(store, folder)
    wanted, bad = {}, set()
    for record, key in zip(records, keys, strict=True):
        if key not in stored:  # its shard was written, then lost or cut short
            raise RuntimeError(f"frame store {folder}: {record.video_id} was not stored")
        shard, error = stored[key]
        if error:
            bad.add(record.video_id)
            failures.append({"video_id": record.video_id, "reason": "decode", "message": error})
        else:
            wanted[key] = (shard, record.video_id, json.dumps(list(record.captions)))
    for failure in failures:
        logger.warning("split %s: left out %s (%s)", name, failure["video_id"], failure["message"])
    if not wanted:
        raise ValueError(f"split {name!r}: no video could be decoded")
    ds = read_split(store, folder, wanted, frame_shape, options.num_cpus)
    logger.info(
        "split %s: %d videos decoded now, %d read from the frame store %s",
        name, len(todo), len(records) - len(todo), folder,
    )  # fmt: skip
    return DecodedSplit(
        name=name,
        dataset=ds,
        num_videos=len(wanted),
        num_captions=sum(len(r.captions) for r in records if r.video_id not in bad),
        failures=failures,
        decode_seconds=time.perf_counter() - start,
        decoded_videos=len(todo),
    )


def _decode_dataset(rows: list[dict[str, str]], options: DecodeOptions) -> ray.data.Dataset:
    """A lazy dataset of decoded rows (``DecodeCandidates`` in an actor pool)."""
    import ray.data

    num_blocks = max(1, min(len(rows) // max(1, options.batch_size), 200))
    return ray.data.from_items(rows, override_num_blocks=num_blocks).map_batches(
        DecodeCandidates,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=options.num_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=options.concurrency),
    )


def decode_split(
    annotations_dir: str,
    split: str,
    dataset: str,
    videos_root: str,
    options: DecodeOptions,
    store: FrameStore | None = None,
) -> DecodedSplit:
    """Load ``<annotations_dir>/<split>.json``, match videos, decode and materialise them."""
    records = load_split(annotations_dir, split, dataset)
    resolved = resolve_videos(
        records,
        videos_root,
        s3_endpoint_url=options.s3_endpoint_url,
        frames_dir=options.frames_dir,
    )
    return decode_records(
        split,
        resolved.records,
        resolved.uris,
        options,
        resolved.missing,
        etags=resolved.etags,
        store=store,
    )


def batch_frames(batch: dict[str, Any]) -> torch.Tensor:
    """The ``frames`` column as a uint8 tensor (B, N, S, S, 3), copied only if read-only."""
    import torch

    if isinstance(batch["frames"], torch.Tensor):
        return batch["frames"]
    return torch.from_numpy(np.require(batch["frames"], dtype=np.uint8, requirements="W"))


def collate_training_batch(batch: dict[str, Any], pin_memory: bool) -> dict[str, Any]:
    """A decoded batch with ``frames`` as a torch uint8 tensor (pinned for a fast copy to
    the GPU when asked); ``video_id`` and ``captions`` stay numpy object arrays."""
    frames = batch_frames(batch)  # (B, N, S, S, 3)
    if pin_memory:
        frames = frames.pin_memory()
    return {"frames": frames, "video_id": batch["video_id"], "captions": batch["captions"]}


def torch_batches(
    shard: Any, batch_size: int, *, pin_memory: bool, prefetch: int, shuffle_seed: int
) -> Any:
    """A Ray Train dataset shard as training batches: torch frames, prefetched.

    Ray Data formats ``prefetch`` batches ahead in background threads (the local shuffle,
    the tensor conversion and the pinning included), so the training step finds the next
    batch ready; a partial last batch is dropped.
    """
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> Any:
            return collate_training_batch(batch, pin_memory)

    return shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=Collate(),
        prefetch_batches=prefetch,
        drop_last=True,
        local_shuffle_buffer_size=max(2 * batch_size, 64),
        local_shuffle_seed=shuffle_seed,
    )


def started(batches: Iterable[T]) -> Iterator[T]:
    """``batches`` with its first item already being fetched in a background thread.

    A data stream's start-up (Ray Data's executor, the first blocks reaching this process)
    then overlaps whatever the caller does before it iterates, such as building the model
    and loading a checkpoint. An error of the fetch is raised at the first ``next``.
    """
    iterator = iter(batches)
    first: Future[Any] = Future()

    def fetch() -> None:
        try:
            first.set_result(next(iterator, _END))
        except BaseException as err:  # handed to the consumer
            first.set_exception(err)

    threading.Thread(target=fetch, name="first-batch", daemon=True).start()

    def chain() -> Iterator[T]:
        item = first.result()
        if item is _END:
            return
        yield item
        yield from iterator

    return chain()


_END = object()


def batch_captions(batch: dict[str, Any]) -> list[list[str]]:
    """The ``captions`` column of a batch as lists of strings."""
    return [list(json.loads(str(c))) for c in batch["captions"]]


def decode_options(settings: DataSettings, num_candidates: int) -> DecodeOptions:
    """How the Ray Data stage decodes candidates (training and evaluation alike)."""
    return DecodeOptions(
        num_candidates=num_candidates,
        frame_size=settings.frame_size,
        s3_endpoint_url=settings.s3_endpoint_url,
        num_cpus=settings.decode_cpus,
        batch_size=settings.decode_batch_size,
        concurrency=settings.decode_concurrency,
        frames_dir=settings.frames_dir,
        frames_fps=settings.frames_fps,
    )
