"""Server store: qdrant-client against a Qdrant server (or its local mode, in tests).

The schema is the embedded one; writes go out in batches with `wait=True`, so a point is
searchable when `upsert` returns. The `frames` multivector gets no HNSW graph (m=0): it is
only fetched for re-ranking. Local mode (`location=":memory:"` or `path=`) is pure Python,
ignores payload indexes and warns above 20k points: a test stand-in, not a deployment.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

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
from pipelines.store.profile import DEFAULT_INDEXING_THRESHOLD_KB, CollectionProfile
from pipelines.store.retry import RetryPolicy, with_retries

log = logging.getLogger("adaclip.store")

_UPSERT_BATCH = 64  # ~13 x 512 floats a point: a few MB of JSON a request


def _client_filter(flt: Filter, exclude: Filter = ()) -> qm.Filter | None:
    if not flt and not exclude:
        return None

    def conditions(pairs: Filter) -> list[qm.Condition] | None:
        return [qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in pairs] or None

    return qm.Filter(must=conditions(flt), must_not=conditions(exclude))


def _server_client(
    url: str, api_key: str | None, prefer_grpc: bool, grpc_port: int, timeout: int
) -> tuple[QdrantClient, str]:
    """A client of the server at ``url``, gRPC when asked and its port answers, else REST."""
    rest = QdrantClient(url=url, api_key=api_key, timeout=timeout)
    if not prefer_grpc:
        return rest, "rest"
    grpc = QdrantClient(
        url=url, api_key=api_key, prefer_grpc=True, grpc_port=grpc_port, timeout=timeout
    )
    try:
        grpc.get_collections()
    except Exception as grpc_err:
        try:
            rest.get_collections()
        except Exception:  # neither answers: keep gRPC, whose requests are retried
            rest.close()
            return grpc, "grpc"
        log.warning(
            "Qdrant gRPC port %d of %s does not answer (%s); using REST",
            grpc_port, url, type(grpc_err).__name__,
        )  # fmt: skip
        grpc.close()
        return rest, "rest"
    rest.close()
    return grpc, "grpc"


class ServerVideoStore(VideoStore):
    """Video store behind a Qdrant server (`url`), or qdrant-client's local mode.

    Args:
        url: Qdrant server URL (`http://host:6333`).
        api_key: its API key, if any.
        location: `":memory:"` for an in-process local mode (tests).
        path: folder of a persistent local mode (tests).
        prefer_grpc: talk gRPC to the server (port ``grpc_port``): a point is about a fifth
            of its JSON size in protobuf and far cheaper to encode. When the gRPC port does
            not answer (not exposed, a proxy that speaks HTTP/1 only) the store falls back
            to REST and logs it.
        grpc_port: the server's gRPC port.
        timeout: request timeout in seconds.
        retry: how requests are retried after connection errors, timeouts, 5xx, 429 and
            gRPC UNAVAILABLE (:mod:`pipelines.store.retry`); every write is idempotent.
        profile: the layout of a collection this store creates (:mod:`pipelines.store.
            profile`; default: the profile for millions of videos). A writer's open also
            makes missing payload indexes and restores HNSW building a crashed bulk load
            left deferred.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        location: str | None = None,
        path: str | None = None,
        prefer_grpc: bool = True,
        grpc_port: int = 6334,
        timeout: int = 60,
        retry: RetryPolicy | None = None,
        profile: CollectionProfile | None = None,
    ) -> None:
        super().__init__()
        if sum(x is not None for x in (url, location, path)) != 1:
            raise ValueError("give exactly one of url, location or path")
        self._retry = retry or RetryPolicy()
        self.profile = profile or CollectionProfile()
        self._search_params: qm.SearchParams | None = None
        self._deferred_hnsw = False  # bulk load: indexing_threshold=0 until optimize()
        self.transport = "local"
        if url is not None:
            self._client, self.transport = _server_client(
                url, api_key, prefer_grpc, grpc_port, timeout
            )
        else:
            self._client = QdrantClient(location=location, path=path)
        self._name: str | None = None
        self._closed = False

    def _require(self) -> str:
        if self._name is None:
            raise RuntimeError("no collection bound: call ensure_collection() first")
        return self._name

    def _open(self, name: str, dim: int, create: bool) -> bool:
        self._name = None
        if not self._client.collection_exists(name):
            if not create:
                return False
            try:
                self._client.create_collection(name, **self.profile.create_kwargs(dim))
            except Exception:
                if not self._client.collection_exists(name):  # else: created concurrently
                    raise
        info = self._client.get_collection(name)
        if create:  # a writer: indexes and HNSW as the profile wants them, on every open
            self._ensure_payload_indexes(name, set(info.payload_schema or {}))
            self._set_hnsw_deferred(name, info, self.profile.bulk_load)
        video = info.config.params.vectors
        quantized = isinstance(video, dict) and video[VIDEO_VECTOR].quantization_config
        self._search_params = (
            qm.SearchParams(
                quantization=qm.QuantizationSearchParams(rescore=True, oversampling=2.0)
            )
            if quantized
            else None
        )
        self._name = name
        return True

    def _ensure_payload_indexes(self, name: str, existing: set[str]) -> None:
        """Create the payload indexes the collection lacks (idempotent; any writer's open)."""
        with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
            warnings.simplefilter("ignore", UserWarning)
            for key in INDEXED_FIELDS:
                if key not in existing:
                    self._client.create_payload_index(
                        name, key, qm.PayloadSchemaType.KEYWORD, wait=True
                    )

    def _set_hnsw_deferred(self, name: str, info: Any, defer: bool) -> None:
        """Defer HNSW building (bulk load), or restore it where a crashed load left it off."""
        threshold = info.config.optimizer_config.indexing_threshold
        if defer and threshold != 0:
            self._update_indexing_threshold(name, 0)
        elif not defer and threshold == 0:
            log.warning("collection %s had HNSW building deferred (a bulk load that did not "
                        "finish): restoring it", name)  # fmt: skip
            self._update_indexing_threshold(name, DEFAULT_INDEXING_THRESHOLD_KB)
        self._deferred_hnsw = defer

    def _update_indexing_threshold(self, name: str, kb: int) -> None:
        config = qm.OptimizersConfigDiff(indexing_threshold=kb)
        self._retrying(
            lambda: self._client.update_collection(name, optimizers_config=config),
            "update_collection",
        )

    def optimize(self) -> bool:
        """End of a bulk load: build HNSW now (restore the indexing threshold)."""
        if not self._deferred_hnsw:
            return False
        self._update_indexing_threshold(self._require(), DEFAULT_INDEXING_THRESHOLD_KB)
        self._deferred_hnsw = False
        return True

    def _upsert_points(self, points: Sequence[Point]) -> None:
        name = self._require()
        for i in range(0, len(points), _UPSERT_BATCH):
            batch = [
                qm.PointStruct(
                    id=p.id,
                    vector={k: v.tolist() for k, v in p.vectors.items()},
                    payload=p.payload,
                )
                for p in points[i : i + _UPSERT_BATCH]
            ]
            self._retrying(partial(self._client.upsert, name, batch, wait=True), "upsert")

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        return with_retries(fn, f"Qdrant {what} ({self.transport})", self._retry)

    def _retrieve(self, ids: Sequence[str], fields: list[str] | None = None) -> list[Row]:
        name = self._require()
        points = self._retrying(
            lambda: self._client.retrieve(
                name,
                list(ids),
                with_payload=True if fields is None else list(fields),
                with_vectors=False,
            ),
            "retrieve",
        )
        return [row_from_point(p) for p in points]

    def _scroll(
        self,
        flt: Filter,
        fields: list[str] | None,
        offset: str | None,
        limit: int,
        exclude: Filter = (),
    ) -> tuple[list[Row], str | None]:
        points, next_offset = self._retrying(
            partial(
                self._client.scroll,
                self._require(),
                scroll_filter=_client_filter(flt, exclude),
                limit=limit,
                offset=offset,
                with_payload=True if fields is None else fields,
                with_vectors=False,
            ),
            "scroll",
        )
        return [row_from_point(p) for p in points], (
            None if next_offset is None else str(next_offset)
        )

    def _query(
        self, q: FloatArray, limit: int, offset: int, flt: Filter, with_frames: bool
    ) -> list[Row]:
        response = self._client.query_points(
            self._require(),
            query=q.tolist(),
            using=VIDEO_VECTOR,
            query_filter=_client_filter(flt),
            search_params=self._search_params,
            limit=limit,
            offset=offset or None,
            # the Gram matrices only matter to the re-rank: do not transfer them otherwise
            with_payload=True if with_frames else qm.PayloadSelectorExclude(exclude=["frame_gram"]),
            with_vectors=[FRAMES_VECTOR] if with_frames else False,
        )
        return [row_from_point(p, with_frames) for p in response.points]

    def _set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            name = self._require()
            self._retrying(
                lambda: self._client.set_payload(name, payload, points=list(ids), wait=True),
                "set_payload",
            )

    def _delete_points(self, ids: Sequence[str]) -> None:
        if ids:
            name = self._require()
            selector = qm.PointIdsList(points=list(ids))
            self._retrying(
                lambda: self._client.delete(name, points_selector=selector, wait=True), "delete"
            )

    def _count_points(self, flt: Filter = ()) -> int:
        name, count_filter = self._require(), _client_filter(flt)
        return int(
            self._retrying(
                partial(self._client.count, name, count_filter=count_filter, exact=True), "count"
            ).count
        )

    def _retrieve_with_frames(self, ids: Sequence[str]) -> list[Row]:
        name = self._require()
        points = self._retrying(
            lambda: self._client.retrieve(
                name, list(ids), with_payload=True, with_vectors=[FRAMES_VECTOR]
            ),
            "retrieve",
        )
        return [row_from_point(p, with_frames=True) for p in points]

    def _video_vectors(self, ids: Sequence[str]) -> dict[str, FloatArray]:
        points = self._client.retrieve(
            self._require(), list(ids), with_payload=False, with_vectors=[VIDEO_VECTOR]
        )
        out = {}
        for p in points:
            vectors = p.vector if isinstance(p.vector, dict) else {}
            if VIDEO_VECTOR in vectors:
                out[str(p.id)] = np.asarray(vectors[VIDEO_VECTOR], dtype=np.float32)
        return out

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}

    def _collection_exists(self, name: str) -> bool:
        # the server's collection list (an alias is not in it)
        return name in {c.name for c in self._client.get_collections().collections}

    def _switch_alias(self, alias: str, collection: str, previous: str | None) -> None:
        # one request: the server applies the delete and the create atomically
        operations: list[qm.AliasOperations] = []
        if previous is not None:
            operations.append(
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
            )
        operations.append(
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        self._client.update_collection_aliases(change_aliases_operations=operations)

    def _close(self) -> None:
        self._name = None
        if not self._closed:
            self._closed = True
            self._client.close()
