"""Embedded store: the real Qdrant engine in process through qdrant-edge-py.

Each collection is one Edge shard in `<path>/<collection>/`. Points are searchable as soon
as `upsert` returns (plain segments, exact scan); `optimize()` builds the HNSW index on
`video` and merges segments, so call it once at the end of an ingestion job. The `frames`
multivector is never ANN-indexed (m=0): it is only fetched for re-ranking, and a MAX_SIM
search on it is a full scan. The shard holds a lock on its write-ahead log, so one process
at a time may open a collection.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from pipelines.store.base import (
    FRAMES_VECTOR,
    INDEXED_FIELDS,
    VIDEO_VECTOR,
    Filter,
    FloatArray,
    Point,
    Row,
    VideoStore,
    row_from_point,
)

DEFAULT_QDRANT_PATH = "./.adaclip/qdrant"
_UPSERT_BATCH = 256
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CONFIG_FILE = "edge_config.json"  # written by EdgeShard.create
# Aliases of the embedded store: {"alias": "collection"} in one file beside the shard
# folders, replaced atomically (write a temp file, fsync, rename), so a reader in another
# process sees the old or the new mapping, never a mix.
ALIASES_FILE = "aliases.json"


def _edge_config(dim: int) -> qe.EdgeConfig:
    frames = qe.EdgeVectorParams(
        size=dim,
        distance=qe.Distance.Cosine,
        multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
    )
    video = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
    return qe.EdgeConfig(vectors={VIDEO_VECTOR: video, FRAMES_VECTOR: frames})


def _edge_filter(flt: Filter, exclude: Filter = ()) -> qe.Filter | None:
    if not flt and not exclude:
        return None
    return qe.Filter(
        must=[qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in flt] or None,
        must_not=[qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in exclude] or None,
    )


def _wal_locked(folder: Path) -> bool:
    """Whether another open shard (this process or another) holds ``folder``'s WAL lock.

    ``EdgeShard.load`` of a held shard fails only after it has opened (and rewritten) the
    segments' files under the holder's feet, so the lock is probed first: the WAL folder is
    flock'ed exclusively while a shard is open.
    """
    try:
        fd = os.open(folder / "wal", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock
    return False


class EdgeVideoStore(VideoStore):
    """Video store on a local folder (default `./.adaclip/qdrant`), one shard per collection."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_QDRANT_PATH) -> None:
        super().__init__()
        self.path = Path(path)
        self._shard: qe.EdgeShard | None = None
        self._shard_name: str | None = None

    def optimize(self) -> bool:
        """Build the HNSW index and merge segments (blocking); True if anything changed."""
        changed = self._require().optimize()
        self._require().flush()
        return changed

    def flush(self) -> None:
        """Write the shard's segments and write-ahead log to disk."""
        if self._shard is not None:
            self._shard.flush()

    def _require(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("no collection bound: call ensure_collection() first")
        return self._shard

    def _open(self, name: str, dim: int, create: bool) -> bool:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad collection name {name!r}: use letters, digits, _ . -")
        if self._shard is not None and self._shard_name == name:
            return True
        self._close()
        folder = self.path / name
        try:
            if (folder / _CONFIG_FILE).exists():
                if _wal_locked(folder):  # loading a held shard would damage the holder's files
                    raise RuntimeError("WouldBlock: the shard's write-ahead log is locked")
                shard = qe.EdgeShard.load(str(folder))
            elif create:
                folder.parent.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(folder), _edge_config(dim))
            else:
                return False
            indexed = set(shard.info().payload_schema)
            for key in INDEXED_FIELDS:  # idempotent; older collections gain the newer fields
                if key not in indexed and create:
                    shard.update(
                        qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword)
                    )
            self._shard = shard
        except Exception as e:
            if "WouldBlock" in str(e):
                raise RuntimeError(
                    f"the embedded index {folder} is already open (another process or store); "
                    "an embedded store has one owner at a time (--qdrant-url allows concurrency)"
                ) from e
            raise
        self._shard_name = name
        return True

    def _upsert_points(self, points: Sequence[Point]) -> None:
        shard = self._require()
        for i in range(0, len(points), _UPSERT_BATCH):
            batch = [
                qe.Point(p.id, {k: v.tolist() for k, v in p.vectors.items()}, p.payload)
                for p in points[i : i + _UPSERT_BATCH]
            ]
            shard.update(qe.UpdateOperation.upsert_points(batch))

    def _retrieve(self, ids: Sequence[str], fields: list[str] | None = None) -> list[Row]:
        payload: bool | list[str] = True if fields is None else list(fields)
        return [row_from_point(p) for p in self._require().retrieve(list(ids), payload, False)]

    def _scroll(
        self,
        flt: Filter,
        fields: list[str] | None,
        offset: str | None,
        limit: int,
        exclude: Filter = (),
    ) -> tuple[list[Row], str | None]:
        payload: bool | qe.PayloadSelector = (
            True if fields is None else qe.PayloadSelector.Include(fields)
        )
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=_edge_filter(flt, exclude), with_payload=payload
        )
        points, next_offset = self._require().scroll(request)
        return [row_from_point(p) for p in points], (
            None if next_offset is None else str(next_offset)
        )

    def _query(
        self, q: FloatArray, limit: int, offset: int, flt: Filter, with_frames: bool
    ) -> list[Row]:
        request = qe.QueryRequest(
            limit=limit,
            offset=offset or None,
            query=qe.Query.Nearest(q.tolist(), using=VIDEO_VECTOR),
            filter=_edge_filter(flt),
            # the Gram matrices only matter to the re-rank: do not convert them otherwise
            with_payload=True if with_frames else qe.PayloadSelector.Exclude(["frame_gram"]),
            with_vector=[FRAMES_VECTOR] if with_frames else False,
        )
        return [row_from_point(p, with_frames) for p in self._require().query(request)]

    def _set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            self._require().update(qe.UpdateOperation.set_payload(list(ids), payload))

    def _delete_points(self, ids: Sequence[str]) -> None:
        if ids:
            self._require().update(qe.UpdateOperation.delete_points(list(ids)))

    def _count_points(self, flt: Filter = ()) -> int:
        return self._require().count(qe.CountRequest(exact=True, filter=_edge_filter(flt)))

    def _retrieve_with_frames(self, ids: Sequence[str]) -> list[Row]:
        points = self._require().retrieve(list(ids), True, [FRAMES_VECTOR])
        return [row_from_point(p, with_frames=True) for p in points]

    def _video_vectors(self, ids: Sequence[str]) -> dict[str, FloatArray]:
        points = self._require().retrieve(list(ids), False, [VIDEO_VECTOR])
        out = {}
        for p in points:
            vectors = p.vector if isinstance(p.vector, dict) else {}
            if VIDEO_VECTOR in vectors:
                out[str(p.id)] = np.asarray(vectors[VIDEO_VECTOR], dtype=np.float32)
        return out

    def _aliases(self) -> dict[str, str]:
        try:
            data = json.loads((self.path / ALIASES_FILE).read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _collection_exists(self, name: str) -> bool:
        return bool(_NAME.fullmatch(name)) and (self.path / name / _CONFIG_FILE).exists()

    def _switch_alias(self, alias: str, collection: str, previous: str | None) -> None:
        if not _NAME.fullmatch(alias):
            raise ValueError(f"bad alias name {alias!r}: use letters, digits, _ . -")
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / f".{ALIASES_FILE}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # writers one at a time (read-modify-write)
            aliases = {**self._aliases(), alias: collection}
            fd, tmp = tempfile.mkstemp(prefix=f".{ALIASES_FILE}.", dir=self.path)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(aliases, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path / ALIASES_FILE)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _close(self) -> None:
        if self._shard is not None:
            shard, self._shard, self._shard_name = self._shard, None, None
            shard.flush()
            shard.close()
