"""A persistent store of decoded candidate frames, shared by runs and machines.

Decoding every video's N candidates is the most expensive part of a first epoch. The store
keeps each decode as one Parquet row, ``key`` = sha1(video URI, etag), under a folder per
(N, frame size, source kind): ``<store>/n<N>-s<S>[-frames]/*.parquet``, on local disk or
``s3://``. A run decodes only the videos whose key is not stored yet (a changed video has
a new etag, hence a new key: decoded again; its old row is ignored), appends them as new
shards with Ray Data (``write_parquet``), then reads the split back with Ray Data
(``read_parquet``). A video that cannot be decoded is stored as a row with its ``error``
and no frames: reported again by later runs, never re-decoded. When two runs stored the
same key, the row of the first shard in path order wins, so no video is read twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
STORE_COLUMNS = ["key", "error"]  # what the driver reads to know what is stored


@dataclass(frozen=True)
class FrameStore:
    """Where decoded candidates persist: a local folder or ``s3://bucket/prefix``."""

    root: str
    s3_endpoint_url: str | None = None

    def folder(self, num_candidates: int, frame_size: int, frames_dir: bool) -> str:
        """The folder of one decode setting (N, frame size, video files or frame folders)."""
        kind = "-frames" if frames_dir else ""
        return f"{self.root.rstrip('/')}/n{num_candidates}-s{frame_size}{kind}"

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

    Reads only the two small columns, not the frames.
    """
    import pyarrow.fs
    import pyarrow.parquet as pq

    fs, path = store.filesystem(folder)
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.NotFound:
        return {}
    selector = pyarrow.fs.FileSelector(path, recursive=True)
    shards = sorted(f.path for f in fs.get_file_info(selector) if f.path.endswith(".parquet"))
    rows: dict[str, tuple[str, str]] = {}
    for shard in shards:
        table = pq.read_table(shard, columns=STORE_COLUMNS, filesystem=fs)
        for key, error in zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True):
            rows.setdefault(str(key), (shard, str(error or "")))
    return rows


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


def join_captions(
    batch: dict[str, np.ndarray],
    wanted: dict[str, tuple[str, str, str]],
    shape: tuple[int, int, int, int],
) -> dict[str, np.ndarray]:
    """Stored rows -> one split's training rows (``video_id``, ``frames``, ``captions``).

    ``wanted`` maps a key to (its chosen shard, video id, captions JSON); rows of other
    keys, or of the same key in another shard, are dropped. ``shape`` is (N, S, S, 3).
    """
    keep, ids, captions = [], [], []
    for i, (key, path) in enumerate(zip(batch["key"], batch["path"], strict=True)):
        entry = wanted.get(str(key))
        if entry is not None and (str(path).endswith(entry[0]) or entry[0].endswith(str(path))):
            keep.append(i)
            ids.append(entry[1])
            captions.append(entry[2])
    frames = np.zeros((len(keep), *shape), dtype=np.uint8)  # (B, N, S, S, 3)
    for row, i in enumerate(keep):  # a tensor column, or its flat list storage
        frames[row] = np.asarray(batch["frames"][i], dtype=np.uint8).reshape(shape)
    return {
        "video_id": np.asarray(ids, dtype=object),
        "frames": frames,
        "captions": np.asarray(captions, dtype=object),
    }
