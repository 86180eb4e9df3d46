"""A persistent store of decoded candidate frames, shared by runs and machines.

Decoding every video's N candidates is the most expensive part of a first epoch. The store
keeps each decode as one Parquet row, ``key`` = sha1(video URI, etag), under a folder per
(N, frame size, source kind): ``<store>/n<N>-s<S>[-frames]/*.parquet``, on local disk or
``s3://``. A run decodes only the videos whose key is not stored yet (a changed video has
a new etag, hence a new key: decoded again; its old row is ignored) and appends them as new
shards with Ray Data (``write_parquet``, shards of about ``SHARD_BYTES``). The split is
then read back by a few Ray tasks straight into Ray's object store (:func:`read_split`,
blocks of at most ``BLOCK_ROWS`` rows): a materialised Ray dataset with no Ray Data job to
start, so a later run's first epoch does not wait on one. A video that cannot be decoded is stored as a row
with its ``error`` and no frames: reported again by later runs, never re-decoded. When two
runs stored the same key, the row of the first shard in path order wins, so no video is
read twice.

A local store lives on the driver's node: shards are written and read there (tasks pinned
to that node), so decode actors and training workers on other
nodes never write to or look for a folder on their own disks. A shard left unreadable by a
killed writer (a local file is not written atomically) is skipped with a warning: its
videos are decoded again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
STORE_COLUMNS = ["key", "error"]  # what the driver reads to know what is stored
SHARD_BYTES = 128 * 2**20  # frames per written shard
BLOCK_ROWS, BLOCK_BYTES = 32, 32 * 2**20  # at most, per block read back


@dataclass(frozen=True)
class FrameStore:
    """Where decoded candidates persist: a local folder or ``s3://bucket/prefix``."""

    root: str
    s3_endpoint_url: str | None = None

    def folder(self, num_candidates: int, frame_size: int, frames_dir: bool) -> str:
        """The folder of one decode setting (N, frame size, video files or frame folders)."""
        kind = "-frames" if frames_dir else ""
        return f"{self.root.rstrip('/')}/n{num_candidates}-s{frame_size}{kind}"

    @property
    def local(self) -> bool:
        """A folder on the driver's disk (a path or ``file://``, not ``s3://``)."""
        return "://" not in self.root or self.root.startswith("file://")

    def filesystem(self, folder: str) -> tuple[Any, str]:
        """(pyarrow filesystem, path inside it) of ``folder``."""
        return filesystem_of(folder, self.s3_endpoint_url)


def filesystem_of(uri: str, s3_endpoint_url: str | None = None) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI.

    ``s3://`` goes through ``s3_endpoint_url`` when given (MinIO, Ceph, a test server);
    other URIs (``gs://``, ``hdfs://``) resolve as pyarrow resolves them.
    """
    import pyarrow.fs

    if uri.startswith("s3://"):
        fs = pyarrow.fs.S3FileSystem(endpoint_override=s3_endpoint_url)
        return fs, uri[len("s3://") :].rstrip("/")
    if "://" in uri:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), uri


def store_key(uri: str, etag: str) -> str:
    """The store key of one version of one video."""
    return hashlib.sha1(f"{uri}\n{etag}".encode()).hexdigest()


def stored_rows(store: FrameStore, folder: str) -> dict[str, tuple[str, str]]:
    """``key -> (shard path, error)`` of every stored row (first shard in path order wins).

    Reads only the two small columns, not the frames, several shards at a time. A shard
    that cannot be read (cut short by a killed writer) is left out with a warning.
    """
    import pyarrow.fs

    fs, path = store.filesystem(folder)
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.NotFound:
        return {}
    selector = pyarrow.fs.FileSelector(path, recursive=True)
    shards = sorted(f.path for f in fs.get_file_info(selector) if f.path.endswith(".parquet"))
    rows: dict[str, tuple[str, str]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for shard, keys in zip(shards, pool.map(lambda s: _shard_keys(fs, s), shards), strict=True):
            for key, error in keys:
                rows.setdefault(key, (shard, error))
    return rows


def _shard_keys(fs: Any, shard: str) -> list[tuple[str, str]]:
    """(key, error) of every row of one shard; none when the shard cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(shard, columns=STORE_COLUMNS, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as err:
        logger.warning("frame store: skipping unreadable shard %s (%s)", shard, err)
        return []
    keys, errors = table["key"].to_pylist(), table["error"].to_pylist()
    return [(str(k), str(e or "")) for k, e in zip(keys, errors, strict=True)]


def rows_per_shard(frame_shape: tuple[int, ...]) -> int:
    """Rows per written shard: about ``SHARD_BYTES`` of frames (at least one row)."""
    return max(1, SHARD_BYTES // int(np.prod(frame_shape)))


def rows_per_block(frame_shape: tuple[int, ...]) -> int:
    """Rows per block read back: small blocks, so that shuffling the block order each
    epoch (with the workers' local shuffle buffer) mixes the split well."""
    return max(1, min(BLOCK_ROWS, BLOCK_BYTES // int(np.prod(frame_shape))))


def write_target(store: FrameStore, folder: str, num_cpus: float) -> dict[str, Any]:
    """``Dataset.write_parquet`` arguments that append shards to ``folder``.

    A local store is written on the driver's node, whichever node decoded.
    """
    fs, path = store.filesystem(folder)
    return {"path": path, "filesystem": fs, "ray_remote_args": io_task_options(store, num_cpus)}


def io_task_options(store: FrameStore, num_cpus: float) -> dict[str, Any]:
    """Ray options of a task that reads or writes shards: for a local store, pinned to the
    driver's node and asking for no CPU (a head node started with zero CPUs still holds
    the folder)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not store.local:
        return {"num_cpus": num_cpus}
    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def read_split(
    store: FrameStore,
    folder: str,
    wanted: dict[str, tuple[str, str, str]],
    shape: tuple[int, int, int, int],
    num_cpus: float,
) -> Any:
    """One split's training rows (``video_id``, ``frames``, ``captions``) as a materialised
    Ray dataset, read from the store by a few Ray tasks (about one per CPU).

    ``wanted`` maps a key to (its chosen shard, video id, captions JSON); other rows of
    those shards are dropped. ``shape`` is (N, S, S, 3). The blocks go straight into Ray's
    object store (spilled to disk when it is full), so the driver holds references only.
    Tasks of a local store run on the driver's node, which holds the folder.
    """
    import os

    import ray
    import ray.data

    by_shard: dict[str, dict[str, tuple[str, str]]] = {}
    for key, (shard, video_id, captions) in wanted.items():
        by_shard.setdefault(shard, {})[key] = (video_id, captions)
    shards = sorted(by_shard)
    fs, _ = store.filesystem(folder)
    options = {"num_returns": "streaming", **io_task_options(store, num_cpus)}
    parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if store.local:  # tasks on the driver's node only
        parallel = min(parallel, os.cpu_count() or 1)
    groups = [shards[i :: min(parallel, len(shards))] for i in range(min(parallel, len(shards)))]
    task = _read_shards_task().options(**options)
    readers = [task.remote(fs, {s: by_shard[s] for s in group}, shape) for group in groups]
    return ray.data.from_arrow_refs([ref for reader in readers for ref in reader])


@functools.cache
def _read_shards_task() -> Any:
    import ray

    return ray.remote(_read_shards)


def _read_shards(
    fs: Any, rows: dict[str, dict[str, tuple[str, str]]], shape: tuple[int, int, int, int]
) -> Any:
    """Yield the blocks of the wanted rows of each shard of ``rows`` (shard -> key ->
    (video id, captions)), ``rows_per_block`` rows each."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers the tensor column type the shards were written with)
    from ray.data.block import BlockAccessor

    step = rows_per_block(shape)
    for shard, keep in rows.items():
        table = pq.read_table(shard, columns=["key", "frames"], filesystem=fs)
        keys = [str(k) for k in table["key"].to_pylist()]
        picked = [i for i, key in enumerate(keys) if key in keep]
        for first in range(0, len(picked), step):
            part = picked[first : first + step]
            batch = {
                "video_id": np.asarray([keep[keys[i]][0] for i in part], dtype=object),
                "frames": stored_frames(table.take(part), shape),
                "captions": np.asarray([keep[keys[i]][1] for i in part], dtype=object),
            }
            yield BlockAccessor.batch_to_block(batch)


def stored_frames(table: Any, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The ``frames`` column of stored rows as uint8 (B, N, S, S, 3): Ray Data's tensor
    column, or its flat list storage when the reader did not know the tensor type."""
    import pyarrow as pa

    if isinstance(table["frames"].type, pa.ExtensionType):
        from ray.data.block import BlockAccessor

        values = BlockAccessor.for_block(table.select(["frames"])).to_numpy("frames")
        return np.asarray(values, dtype=np.uint8).reshape(len(table), *shape)
    out = np.zeros((len(table), *shape), dtype=np.uint8)
    for row, value in enumerate(table["frames"].to_pylist()):
        out[row] = np.asarray(value, dtype=np.uint8).reshape(shape)
    return out


def to_store_rows(batch: dict[str, np.ndarray], keys: dict[str, str]) -> dict[str, np.ndarray]:
    """Decoded rows (``video_id``, ``frames``, ``error``) -> store rows: ``key`` (from the
    ``keys`` of this split's video ids) added, captions dropped (they belong to the
    annotations, not to the video)."""
    return {
        "key": np.asarray([keys[str(v)] for v in batch["video_id"]], dtype=object),
        "video_id": np.asarray(batch["video_id"], dtype=object),
        "frames": batch["frames"],
        "error": np.asarray(batch["error"], dtype=object),
    }
