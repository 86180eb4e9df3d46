"""The video store interface and the logic both Qdrant backends share.

A collection holds one point per video (id = UUID5 of its URI) with a named dense vector
`video` (cosine) and a named multivector `frames` (K x D, cosine, MAX_SIM), plus one
metadata point (reserved id `META_POINT_ID`, no vectors) that records the `model_id` that
filled the collection, its dimension and K. Backends implement the small `_`-prefixed
primitives at the bottom of `VideoStore`; everything else lives here.

Prefix filtering: Qdrant matches keywords exactly, so every point stores `uri_prefixes`,
each '/'-delimited directory prefix of its URI (for `s3://b/a/c.mp4`: `s3://b/` and
`s3://b/a/`; for `/data/v/x.mp4`: `/`, `/data/` and `/data/v/`). A user prefix that ends at
a '/' boundary becomes one indexed `MatchValue` on that field; any other prefix filters on
its longest directory prefix and the hits are then kept by `uri.startswith(prefix)` (a
query may take several pages to collect `top_k` hits then).
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.store.rerank import frame_cosines, gram_matrices, qscore_from_cosines

Filter = tuple[tuple[str, str], ...]  # AND of exact keyword matches (key, value)

# Fixed forever: point ids of already-built indexes depend on it.
NAMESPACE = uuid.UUID("fd15bc21-6c29-58f6-9d85-9f02be357ec5")
# The nil UUID; uuid5 ids always carry version 5, so no video can collide with it.
META_POINT_ID = "00000000-0000-0000-0000-000000000000"
SCHEMA_VERSION = 1
VIDEO_VECTOR = "video"
FRAMES_VECTOR = "frames"
INDEXED_FIELDS = ("uri", "video_id", "model_id", "uri_prefixes", "status", "seen_run")
INTERNAL_FIELDS = ("uri_prefixes", "frame_norms", "frame_gram")
# What `adaclip ls` shows of each video.
LISTED_FIELDS = ("uri", "video_id", "etag", "duration_s", "model_id", "indexed_at")
SCROLL_PAGE = 1024
# A URI prefix not ending at '/' is matched on its directory's indexed prefix and then by
# str.startswith: at most this many nearest videos of that directory are examined for it.
PREFIX_SCAN_LIMIT = 4096
# `status` of a failure record: a video that failed for good at this etag (no vectors).
FAILED = "failed"
FAILURE_RECORDS: Filter = (("status", FAILED),)  # matches failure records only

FloatArray = npt.NDArray[np.float32]


class ModelMismatchError(ValueError):
    """Writing vectors of one model into a collection built by another."""

    def __init__(self, collection: str, stored: str, given: str) -> None:
        super().__init__(
            f"collection {collection!r} was built by model {stored!r}, you are writing model "
            f"{given!r}: mixing embedding spaces corrupts search; use another --collection"
        )
        self.collection, self.stored, self.given = collection, stored, given

    def __reduce__(self) -> tuple[Any, ...]:  # raised across Ray processes (store actor)
        return (type(self), (self.collection, self.stored, self.given))


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def point_id_for(uri: str) -> str:
    """Point id of a video: UUID5 of its URI in the project namespace."""
    return str(uuid.uuid5(NAMESPACE, uri))


def uri_dir_prefixes(uri: str) -> list[str]:
    """Every prefix of `uri` that ends at a '/' after the scheme's '://' (shortest first)."""
    sep = uri.find("://")
    start = sep + 3 if sep >= 0 else 0
    return [uri[: i + 1] for i in range(start, len(uri)) if uri[i] == "/"]


def prefix_filter(prefix: str | None) -> tuple[str | None, str | None]:
    """Split a user URI prefix into (indexed `uri_prefixes` value, post-filter prefix).

    A prefix ending at a '/' boundary needs no post-filter; any other is narrowed by its
    longest directory prefix (if any) and checked with str.startswith afterwards.
    """
    if not prefix:
        return None, None
    dirs = uri_dir_prefixes(prefix)
    if dirs and dirs[-1] == prefix:
        return prefix, None
    return (dirs[-1] if dirs else None), prefix


@dataclass
class VideoRecord:
    """One indexed video, as the ingestion job writes it."""

    uri: str
    video_id: str
    etag: str
    size_bytes: int
    duration_s: float
    video_vector: FloatArray  # (D,)
    frame_vectors: FloatArray  # (K, D) raw (un-normalised) frame embeddings
    frame_ts: list[float]  # (K,) seconds, time order
    frame_weights: list[float]  # (K,) aggregation weights
    model_id: str
    indexed_at: str = ""  # ISO 8601 UTC; filled when empty
    seen_run: str = ""  # run id of the index job that listed it (mark and sweep)

    def __post_init__(self) -> None:
        self.video_vector = np.asarray(self.video_vector, dtype=np.float32).reshape(-1)
        self.frame_vectors = np.asarray(self.frame_vectors, dtype=np.float32)
        self.frame_ts = [float(t) for t in self.frame_ts]
        self.frame_weights = [float(w) for w in self.frame_weights]
        dim, fv = self.video_vector.shape[0], self.frame_vectors
        if fv.ndim != 2 or fv.shape[0] == 0 or fv.shape[1] != dim:
            raise ValueError(f"{self.uri}: frame_vectors must be (K, {dim}), got {fv.shape}")
        k = fv.shape[0]
        if len(self.frame_ts) != k or len(self.frame_weights) != k:
            raise ValueError(f"{self.uri}: frame_ts and frame_weights need {k} values each")
        if np.any(np.diff(self.frame_ts) < 0):
            raise ValueError(f"{self.uri}: frame_ts must be in time order")
        finite = np.isfinite(self.video_vector).all() and np.isfinite(fv).all()
        if not finite or not np.linalg.norm(self.video_vector) > 0 or self.frame_norms().min() <= 0:
            raise ValueError(f"{self.uri}: zero or non-finite vector (cosine is undefined)")
        if not self.indexed_at:
            self.indexed_at = _utc_now()

    @property
    def dim(self) -> int:
        return int(self.video_vector.shape[0])

    def frame_norms(self) -> npt.NDArray[np.float32]:
        return np.linalg.norm(self.frame_vectors, axis=1)  # (K,)

    def frame_gram(self) -> npt.NDArray[np.float64]:
        """(K, K) G_kl = f_k . f_l of the raw frames, for exact Q-Score re-ranking."""
        fv = self.frame_vectors.astype(np.float64)
        return fv @ fv.T

    def payload(self) -> dict[str, Any]:
        """The point's payload (DESIGN.md "The index"), plus the internal fields."""
        return {
            "uri": self.uri,
            "video_id": self.video_id,
            "etag": self.etag,
            "size_bytes": int(self.size_bytes),
            "duration_s": float(self.duration_s),
            "frame_ts": self.frame_ts,
            "frame_weights": self.frame_weights,
            "model_id": self.model_id,
            "indexed_at": self.indexed_at,
            "uri_prefixes": uri_dir_prefixes(self.uri),
            "frame_norms": [float(n) for n in self.frame_norms()],
            "frame_gram": [float(g) for g in self.frame_gram().reshape(-1)],
            **({"seen_run": self.seen_run} if self.seen_run else {}),
        }


@dataclass(frozen=True)
class FailedVideo:
    """A video that failed for good at this etag: stored as a point without vectors, so the
    next run does not download it again until its etag changes (or ``--retry-failed``)."""

    uri: str
    etag: str
    size_bytes: int
    stage: str
    reason: str
    message: str
    model_id: str
    seen_run: str = ""

    def payload(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "etag": self.etag,
            "size_bytes": int(self.size_bytes),
            "status": FAILED,
            "failure": {"stage": self.stage, "reason": self.reason, "message": self.message},
            "model_id": self.model_id,
            "indexed_at": _utc_now(),
            "uri_prefixes": uri_dir_prefixes(self.uri),
            **({"seen_run": self.seen_run} if self.seen_run else {}),
        }


@dataclass(frozen=True)
class IndexedState:
    """What the store knows of a URI: its etag and size, and whether it is a failure record."""

    etag: str
    size_bytes: int
    failed: bool = False


@dataclass
class SearchHit:
    """One result. `score` is cosine to `video`, the Q-Score when re-ranked, 0.0 for get()."""

    id: str
    uri: str
    video_id: str
    score: float
    payload: dict[str, Any]  # stored payload without the internal fields
    frame_ts: list[float]
    best_moment_s: float | None = None  # time of the frame closest to the query (re-rank)
    frame_scores: list[float] | None = None  # cos(q, f_k) per frame (re-rank)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    num_frames: int
    model_id: str


@dataclass
class Point:
    """Backend-neutral point to write: vectors by name (empty for the metadata point)."""

    id: str
    vectors: dict[str, FloatArray]
    payload: dict[str, Any]


@dataclass
class Row:
    """Backend-neutral point read back; `frames` are the stored (unit-norm) frame vectors."""

    id: str
    payload: dict[str, Any]
    score: float = 0.0
    frames: FloatArray | None = None  # (K, D)


def row_from_point(point: Any, with_frames: bool = False) -> Row:
    """A backend's point (qdrant-edge or qdrant-client: same attributes) as a `Row`."""
    frames = None
    if with_frames:
        frames = np.asarray(point.vector[FRAMES_VECTOR], dtype=np.float32)  # (K, D)
    score = float(getattr(point, "score", 0.0))
    return Row(str(point.id), dict(point.payload or {}), score, frames)


def row_to_hit(row: Row) -> SearchHit:
    payload = {k: v for k, v in row.payload.items() if k not in INTERNAL_FIELDS}
    return SearchHit(
        id=row.id,
        uri=str(payload.get("uri", "")),
        video_id=str(payload.get("video_id", "")),
        score=float(row.score),
        payload=payload,
        frame_ts=[float(t) for t in payload.get("frame_ts", [])],
    )


def rerank_rows(rows: Sequence[Row], query: FloatArray, temperature: float) -> list[SearchHit]:
    """Exact Q-Score of the candidate rows, best first, with their best moments."""
    if not rows:
        return []
    k_max = max(len(r.payload["frame_norms"]) for r in rows)
    frames = np.zeros((len(rows), k_max, query.shape[0]), dtype=np.float32)  # (C, K, D)
    norms = np.zeros((len(rows), k_max), dtype=np.float32)  # (C, K)
    for i, r in enumerate(rows):
        assert r.frames is not None, "re-rank needs the frames multivector"
        frames[i, : len(r.frames)] = r.frames
        norms[i, : len(r.frames)] = r.payload["frame_norms"]
    if all("frame_gram" in r.payload for r in rows):
        gram = np.zeros((len(rows), k_max, k_max), dtype=np.float64)  # (C, K, K)
        for i, r in enumerate(rows):
            k = len(r.payload["frame_norms"])
            gram[i, :k, :k] = np.asarray(r.payload["frame_gram"], dtype=np.float64).reshape(k, k)
    else:  # points written before the Gram matrices were stored
        gram = gram_matrices(frames, norms)
    cos = frame_cosines(query, frames)
    scores, best = qscore_from_cosines(cos, norms, gram, temperature)
    hits = []
    for i, r in enumerate(rows):
        hit = row_to_hit(r)
        k = len(hit.frame_ts)
        hit.score = float(scores[i])
        hit.best_moment_s = hit.frame_ts[int(best[i])] if k else None
        hit.frame_scores = [float(c) for c in cos[i, :k]]
        hits.append(hit)
    return sorted(hits, key=lambda h: h.score, reverse=True)


class VideoStore(abc.ABC):
    """A Qdrant collection of videos; bind it with `ensure_collection` or `open_collection`."""

    def __init__(self) -> None:
        self._info: CollectionInfo | None = None

    # ---- public API -------------------------------------------------------------------

    @property
    def collection(self) -> CollectionInfo:
        if self._info is None:
            raise RuntimeError("no collection bound: call ensure_collection() first")
        return self._info

    def ensure_collection(
        self, name: str, dim: int, num_frames: int, model_id: str
    ) -> CollectionInfo:
        """Create the collection if missing (vectors, payload indexes, model record) and bind it.

        Raises:
            ModelMismatchError: the collection was filled by another model.
            ValueError: same model but another dimension or K, or a collection with
                points but no model record (not written by this project).
        """
        self._info = None
        self._open(name, dim=dim, create=True)
        meta = self._read_meta()
        if meta is None:
            if self._count_points() > 0:
                raise ValueError(f"collection {name!r} has points but no model record")
            meta = {
                "adaclip_meta": True,
                "model_id": model_id,
                "dim": dim,
                "num_frames": num_frames,
                "schema_version": SCHEMA_VERSION,
                "created_at": _utc_now(),
            }
            self._upsert_points([Point(META_POINT_ID, {}, meta)])
        if meta["model_id"] != model_id:
            raise ModelMismatchError(name, str(meta["model_id"]), model_id)
        if (meta["dim"], meta["num_frames"]) != (dim, num_frames):
            raise ValueError(
                f"collection {name!r} holds dim={meta['dim']} K={meta['num_frames']} vectors, "
                f"not dim={dim} K={num_frames}"
            )
        self._info = CollectionInfo(name, dim, num_frames, model_id)
        return self._info

    def open_collection(self, name: str) -> CollectionInfo:
        """Bind an existing collection (for readers); raises LookupError if it is missing.

        An alias binds the physical collection it points at (`CollectionInfo.name`)."""
        self._info = None
        name = self.resolve_alias(name)
        if not self._open(name, dim=0, create=False):
            raise LookupError(f"no collection {name!r}")
        meta = self._read_meta()
        if meta is None:
            raise LookupError(f"collection {name!r} has no model record")
        self._info = CollectionInfo(
            name, int(meta["dim"]), int(meta["num_frames"]), str(meta["model_id"])
        )
        return self._info

    def upsert(self, records: Sequence[VideoRecord]) -> None:
        """Write (or overwrite, by URI) videos; nothing is written if any record is refused.

        A video may carry fewer frames than the collection's K (a short video), never more.

        Raises:
            ModelMismatchError: a record's model_id is not the collection's.
            ValueError: a record's dimension or frame count does not fit the collection.
        """
        info = self.collection
        for r in records:
            if r.model_id != info.model_id:
                raise ModelMismatchError(info.name, info.model_id, r.model_id)
            if r.dim != info.dim or len(r.frame_ts) > info.num_frames:
                raise ValueError(
                    f"{r.uri}: dim {r.dim} with {len(r.frame_ts)} frames does not fit collection "
                    f"{info.name!r} (dim {info.dim}, at most {info.num_frames} frames)"
                )
        points = [
            Point(
                point_id_for(r.uri),
                {VIDEO_VECTOR: r.video_vector, FRAMES_VECTOR: r.frame_vectors},
                r.payload(),
            )
            for r in records
        ]
        if points:
            self._upsert_points(points)

    def indexed_etags(self, uri_prefix: str | None = None) -> dict[str, str]:
        """uri -> etag of every indexed video (under `uri_prefix` if given).

        Holds the whole collection in memory: for tests and small tools. The ingestion
        job looks URIs up batch by batch with `lookup` instead.
        """
        return {
            p["uri"]: str(p.get("etag", "")) for p in self.iter_videos(uri_prefix, ["uri", "etag"])
        }

    def iter_videos(
        self, uri_prefix: str | None = None, fields: Sequence[str] = LISTED_FIELDS
    ) -> Iterator[dict[str, Any]]:
        """The payload `fields` of every indexed video (under `uri_prefix`), page by page, in
        point-id order. Failure records are not videos and are left out."""
        _ = self.collection  # raises when unbound
        exact, post = prefix_filter(uri_prefix)
        flt: Filter = (("uri_prefixes", exact),) if exact else ()
        wanted = list(dict.fromkeys(["uri", *fields]))
        offset: str | None = None
        while True:
            rows, offset = self._scroll(flt, wanted, offset, SCROLL_PAGE, FAILURE_RECORDS)
            for r in rows:
                uri = r.payload.get("uri")
                if r.id != META_POINT_ID and uri and (post is None or uri.startswith(post)):
                    yield {f: r.payload.get(f) for f in wanted}
            if offset is None:
                return

    def lookup(self, uris: Sequence[str]) -> dict[str, IndexedState]:
        """What the collection holds for each of `uris` (by point id; absent ones left out)."""
        _ = self.collection  # raises when unbound
        if not uris:
            return {}
        rows = self._retrieve(
            [point_id_for(u) for u in uris], ["uri", "etag", "size_bytes", "status"]
        )
        wanted = set(uris)
        out = {}
        for r in rows:
            uri = r.payload.get("uri")
            if uri in wanted:
                out[str(uri)] = IndexedState(
                    etag=str(r.payload.get("etag") or ""),
                    size_bytes=int(r.payload.get("size_bytes") or 0),
                    failed=r.payload.get("status") == FAILED,
                )
        return out

    def mark_seen(self, uris: Sequence[str], run_id: str) -> None:
        """Record that run `run_id` listed these (already stored) URIs: the mark of `sweep`."""
        _ = self.collection
        if uris:
            self._set_payload([point_id_for(u) for u in uris], {"seen_run": run_id})

    def delete(self, uris: Sequence[str]) -> int:
        """Delete the videos (or failure records) of `uris`, durable on return; how many of
        them the collection held."""
        _ = self.collection
        held = self.lookup(uris)
        if held:
            self._delete_points([point_id_for(u) for u in held])
        return len(held)

    def flush(self) -> None:
        """Make every write so far durable on disk (a no-op where writes already are)."""
        return None

    def record_failures(self, failures: Sequence[FailedVideo]) -> None:
        """Store failure records (points without vectors); a stored video of the same URI is
        replaced: its object changed into one that cannot be indexed."""
        info = self.collection
        for f in failures:
            if f.model_id != info.model_id:
                raise ModelMismatchError(info.name, info.model_id, f.model_id)
        if failures:
            self._upsert_points([Point(point_id_for(f.uri), {}, f.payload()) for f in failures])

    def prefix_totals(self, uri_prefix: str, unseen_by: str | None = None) -> tuple[int, int]:
        """(points, bytes) stored under the directory prefix `uri_prefix` (videos and failure
        records), only those not marked by run `unseen_by` when given."""
        _ = self.collection
        exclude: Filter = (("seen_run", unseen_by),) if unseen_by else ()
        count = size = 0
        offset: str | None = None
        while True:
            rows, offset = self._scroll(
                (("uri_prefixes", uri_prefix),), ["size_bytes"], offset, SCROLL_PAGE, exclude
            )
            count += len(rows)
            size += sum(int(r.payload.get("size_bytes") or 0) for r in rows)
            if offset is None:
                return count, size

    def sweep(self, uri_prefix: str, run_id: str) -> tuple[int, int]:
        """Delete the points under the directory prefix `uri_prefix` that run `run_id` did not
        mark (their objects are gone); returns (points, bytes) deleted.

        Call it only after a complete listing: an unlisted object is taken as deleted.
        """
        _ = self.collection
        if not uri_prefix.endswith("/"):
            raise ValueError(f"sweep needs a directory prefix ending in '/': {uri_prefix!r}")
        flt: Filter = (("uri_prefixes", uri_prefix),)
        count = size = 0
        while True:  # deleted points leave the filter: always read the first page
            rows, _ = self._scroll(flt, ["size_bytes"], None, SCROLL_PAGE, (("seen_run", run_id),))
            rows = [r for r in rows if r.id != META_POINT_ID]
            if not rows:
                return count, size
            self._delete_points([r.id for r in rows])
            count += len(rows)
            size += sum(int(r.payload.get("size_bytes") or 0) for r in rows)

    def search(
        self,
        query_vector: npt.ArrayLike,
        top_k: int = 10,
        uri_prefix: str | None = None,
        rerank: bool = False,
        rerank_candidates: int = 100,
        agg_temperature: float = 1.0,
    ) -> list[SearchHit]:
        """Nearest videos by cosine to `video`; optionally re-ranked by exact Q-Score.

        Args:
            query_vector: (D,) query (text) embedding.
            top_k: number of hits returned.
            uri_prefix: keep only videos whose URI starts with it.
            rerank: take the best `rerank_candidates` by `video`, then order them by
                Q-Score (METHOD.md section 5) and fill `best_moment_s`/`frame_scores`.
            agg_temperature: T_agg of the Q-Score softmax.

        Returns:
            Up to `top_k` hits, best first.
        """
        q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.collection.dim:
            raise ValueError(f"query dim {q.shape[0]} != collection dim {self.collection.dim}")
        if top_k <= 0:
            return []
        limit = max(top_k, rerank_candidates) if rerank else top_k
        rows = self._query_prefixed(q, limit, uri_prefix, with_frames=rerank)
        if rerank:
            return rerank_rows(rows, q, agg_temperature)[:top_k]
        return [row_to_hit(r) for r in rows]

    def add_moments(self, hits: Sequence[SearchHit], query_vector: npt.ArrayLike) -> None:
        """Fill each hit's `best_moment_s` (its frame closest to the query, argmax of
        cos(q, f_k)) and `frame_scores`, without changing scores or order. One batched
        fetch of the hits' frame vectors."""
        if not hits:
            return
        frames = self._retrieve_frames([h.id for h in hits])
        for hit in hits:
            u = frames.get(hit.id)
            if u is None or not len(hit.frame_ts):
                continue
            cos = frame_cosines(query_vector, u[None])[0]  # (K,)
            hit.frame_scores = [float(c) for c in cos]
            hit.best_moment_s = hit.frame_ts[int(np.argmax(cos))]

    def get(self, key: str) -> SearchHit | None:
        """A video by point id (UUID string) or else by `video_id`."""
        _ = self.collection  # raises when unbound
        try:
            pid = str(uuid.UUID(key))
        except ValueError:
            rows, _ = self._scroll((("video_id", key),), None, None, 1)
        else:
            rows = [] if pid == META_POINT_ID else self._retrieve([pid])
        if not rows or rows[0].payload.get("status") == FAILED:
            return None
        return row_to_hit(rows[0])

    def count(self) -> int:
        """Number of videos (the metadata point and failure records excluded)."""
        _ = self.collection  # raises when unbound
        failed = self._count_points(FAILURE_RECORDS)
        return max(self._count_points() - 1 - failed, 0)

    def similar(self, key: str, top_k: int = 10) -> tuple[SearchHit, list[SearchHit]] | None:
        """Videos nearest to an indexed video's `video` vector, the video itself left out.

        Args:
            key: point id (UUID string) or `video_id`.
            top_k: number of hits.

        Returns:
            (the video, its neighbours best first), or None when `key` is not indexed.
        """
        hit = self.get(key)
        if hit is None:
            return None
        vector = self._video_vectors([hit.id]).get(hit.id)
        if vector is None:
            return None
        rows = self._query(vector, top_k + 1, 0, (), False)
        return hit, [row_to_hit(r) for r in rows if r.id != hit.id][:top_k]

    # ---- aliases: a logical collection name -> a physical per-model collection ---------

    def aliases(self) -> dict[str, str]:
        """alias -> physical collection, for every alias of this store."""
        return self._aliases()

    def resolve_alias(self, name: str) -> str:
        """The physical collection `name` stands for (`name` itself when it is no alias)."""
        return self._aliases().get(name, name)

    def set_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at the physical `collection` in one atomic step; returns the
        collection it pointed at before (None: a new alias).

        Readers that resolve the alias afterwards see the new collection; none sees a
        half-made state. The target must exist and hold a model record.

        Raises:
            LookupError: `collection` does not exist (or is itself an alias).
            ValueError: `alias` is the name of a physical collection.
        """
        current = self._aliases()
        if collection in current or not self._collection_exists(collection):
            raise LookupError(f"no collection {collection!r} to point alias {alias!r} at")
        if self._collection_exists(alias):
            raise ValueError(f"{alias!r} is a collection, it cannot also be an alias")
        self._switch_alias(alias, collection, current.get(alias))
        return current.get(alias)

    def optimize(self) -> bool:
        """Build indexes now (embedded backend); True if anything changed."""
        return False

    def close(self) -> None:
        self._info = None
        self._close()

    def __enter__(self) -> VideoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- shared helpers ---------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        rows = self._retrieve([META_POINT_ID])
        return rows[0].payload if rows else None

    def _query_prefixed(
        self, q: FloatArray, limit: int, uri_prefix: str | None, with_frames: bool
    ) -> list[Row]:
        """Nearest rows under `uri_prefix`. A directory prefix is one indexed match; any
        other pages through its directory's nearest videos, without frame vectors, until
        `limit` match or PREFIX_SCAN_LIMIT rows were examined, and then fetches the frames
        of the kept rows only."""
        exact, post = prefix_filter(uri_prefix)
        flt: Filter = (("uri_prefixes", exact),) if exact else ()
        if post is None:
            return self._query(q, limit, 0, flt, with_frames)
        kept: list[Row] = []
        offset, page = 0, max(2 * limit, 64)
        while len(kept) < limit and offset < PREFIX_SCAN_LIMIT:
            page = min(page, PREFIX_SCAN_LIMIT - offset)
            rows = self._query(q, page, offset, flt, False)
            kept += [r for r in rows if str(r.payload.get("uri", "")).startswith(post)]
            if len(rows) < page:
                break
            offset, page = offset + page, page * 2
        kept = kept[:limit]
        if with_frames and kept:
            full = {r.id: r for r in self._retrieve_with_frames([r.id for r in kept])}
            kept = [Row(r.id, full[r.id].payload, r.score, full[r.id].frames) for r in kept]
        return kept

    def _retrieve_frames(self, ids: Sequence[str]) -> dict[str, FloatArray]:
        """id -> (K, D) stored unit frame vectors (K: the video's own frame count)."""
        rows = self._retrieve_with_frames(ids)
        out = {}
        for r in rows:
            if r.frames is not None:
                k = len(r.payload.get("frame_norms") or r.frames)
                out[r.id] = r.frames[:k]
        return out

    # ---- backend primitives -----------------------------------------------------------

    @abc.abstractmethod
    def _open(self, name: str, dim: int, create: bool) -> bool:
        """Open collection `name`, creating it (vectors + payload indexes) if `create`.

        Returns False if it does not exist and `create` is False.
        """

    @abc.abstractmethod
    def _upsert_points(self, points: Sequence[Point]) -> None:
        """Write points (batched by the backend), durable when it returns."""

    @abc.abstractmethod
    def _retrieve(self, ids: Sequence[str], fields: list[str] | None = None) -> list[Row]:
        """Points by id, with payload (`fields`, or all if None), without vectors; missing
        ids are skipped."""

    @abc.abstractmethod
    def _scroll(
        self,
        flt: Filter,
        fields: list[str] | None,
        offset: str | None,
        limit: int,
        exclude: Filter = (),
    ) -> tuple[list[Row], str | None]:
        """One page of points matching `flt` and none of `exclude` (payload `fields`, or all
        if None) and the next offset."""

    @abc.abstractmethod
    def _set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set payload keys of existing points (missing ids are ignored), durable on return."""

    @abc.abstractmethod
    def _delete_points(self, ids: Sequence[str]) -> None:
        """Delete points by id, durable on return."""

    @abc.abstractmethod
    def _query(
        self, q: FloatArray, limit: int, offset: int, flt: Filter, with_frames: bool
    ) -> list[Row]:
        """Nearest points by the `video` vector, best first, with payload (and frames)."""

    @abc.abstractmethod
    def _count_points(self, flt: Filter = ()) -> int:
        """Exact number of points matching `flt`, metadata point included."""

    @abc.abstractmethod
    def _retrieve_with_frames(self, ids: Sequence[str]) -> list[Row]:
        """Points by id with their whole payload and `frames` multivector (missing skipped)."""

    @abc.abstractmethod
    def _video_vectors(self, ids: Sequence[str]) -> dict[str, FloatArray]:
        """id -> stored (unit) `video` vector of each existing point."""

    def _aliases(self) -> dict[str, str]:
        """alias -> collection of every alias (backends without aliases: none)."""
        return {}

    @abc.abstractmethod
    def _collection_exists(self, name: str) -> bool:
        """Whether a physical collection `name` exists (aliases do not count)."""

    @abc.abstractmethod
    def _switch_alias(self, alias: str, collection: str, previous: str | None) -> None:
        """Atomically make `alias` point at `collection` (it pointed at `previous`)."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the backend; safe to call twice."""
