"""The search itself, without HTTP or Ray: embed the query, query the store, shape results.

`SearchService` is what the FastAPI routes call. It opens the store lazily (so a server
whose Qdrant is down still starts, answers 503 and recovers when Qdrant comes back), runs
blocking store calls in worker threads, and turns every store or encoder failure into
`UnavailableError` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from pipelines.store import SearchHit, VideoStore
from serve.encoder import ModelInfo
from serve.media import MediaResolver
from serve.schemas import SearchRequest, SearchResponse, SearchResult, VideoInfo

logger = logging.getLogger(__name__)

T = TypeVar("T")
EmbedFn = Callable[[str], Awaitable[npt.NDArray[np.float32]]]


class UnavailableError(RuntimeError):
    """The store or the encoder cannot answer now (HTTP 503)."""


class SearchService:
    """Query embedding + store search + media URLs.

    Args:
        embed: coroutine function: query text -> unit embedding (D,).
        info: the encoder's model.
        open_store: opens the (unbound) video store; called again after a failure.
        collection: collection to search.
        media: turns URIs into playable URLs.
        rerank_candidates: candidates re-ranked by Q-Score when re-ranking.
        ready_timeout_s: how long /readyz waits for the encoder.
    """

    def __init__(
        self,
        embed: EmbedFn,
        info: ModelInfo,
        open_store: Callable[[], VideoStore],
        collection: str,
        media: MediaResolver,
        rerank_candidates: int = 100,
        ready_timeout_s: float = 5.0,
    ) -> None:
        self._embed = embed
        self.info = info
        self._open_store = open_store
        self.collection = collection
        self.media = media
        self.rerank_candidates = rerank_candidates
        self.ready_timeout_s = ready_timeout_s
        self._store: VideoStore | None = None
        self._open_lock = asyncio.Lock()

    # ---- public API -------------------------------------------------------------------

    async def search(self, request: SearchRequest, base: str = "") -> SearchResponse:
        """Answer one validated search request; `base` prefixes local media URLs."""
        start = time.perf_counter()
        vector = await self.embed(request.query)
        rerank = request.rerank if request.rerank is not None else self.default_rerank
        prefix = request.filter.uri_prefix if request.filter else None

        def run(store: VideoStore) -> list[SearchResult]:
            hits = store.search(
                vector,
                top_k=request.top_k,
                uri_prefix=prefix or None,
                rerank=rerank,
                rerank_candidates=self.rerank_candidates,
                agg_temperature=self.info.agg_temperature,
            )
            return [self._result(hit, base) for hit in hits]

        results = await self._with_store(run)
        took_ms = (time.perf_counter() - start) * 1000.0
        return SearchResponse(results=results, took_ms=took_ms, model_id=self.info.model_id)

    async def video(self, video_id: str, base: str = "") -> VideoInfo | None:
        """A video's stored record by `video_id` (or point id); None if unknown."""

        def run(store: VideoStore) -> VideoInfo | None:
            hit = store.get(video_id)
            return None if hit is None else self._video_info(hit, base)

        return await self._with_store(run)

    async def readiness(self) -> dict[str, Any]:
        """Facts for /readyz; raises UnavailableError when the store or model is not ready."""
        count = await self._with_store(lambda store: store.count())
        try:
            await asyncio.wait_for(self.embed("readiness probe"), timeout=self.ready_timeout_s)
        except asyncio.TimeoutError as err:
            raise UnavailableError("text encoder did not answer in time") from err
        return {
            "ready": True,
            "model_id": self.info.model_id,
            "collection": self.collection,
            "videos": count,
        }

    @property
    def default_rerank(self) -> bool:
        """Re-rank unless asked not to when the model's video vector is a Q-Score proxy."""
        return self.info.frame_agg == "qscore"

    async def embed(self, text: str) -> npt.NDArray[np.float32]:
        try:
            vector = await self._embed(text)
        except Exception as err:
            logger.exception("text encoder failed")
            raise UnavailableError(f"text encoder unavailable: {type(err).__name__}") from err
        return np.asarray(vector, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    # ---- helpers ----------------------------------------------------------------------

    async def _with_store(self, fn: Callable[[VideoStore], T]) -> T:
        store = await self._bound_store()
        try:
            return await asyncio.to_thread(fn, store)
        except Exception as err:
            logger.warning("store call failed: %s: %s", type(err).__name__, err)
            raise UnavailableError(f"vector store unavailable: {type(err).__name__}") from err

    async def _bound_store(self) -> VideoStore:
        if self._store is not None:
            return self._store
        async with self._open_lock:
            if self._store is None:
                try:
                    self._store = await asyncio.to_thread(self._open_bound)
                except UnavailableError:
                    raise
                except Exception as err:
                    logger.warning("cannot open the store: %s: %s", type(err).__name__, err)
                    raise UnavailableError(
                        f"vector store unavailable: {type(err).__name__}: {err}"
                    ) from err
            return self._store

    def _open_bound(self) -> VideoStore:
        store = self._open_store()
        try:
            info = store.open_collection(self.collection)
        except Exception:
            store.close()
            raise
        if info.model_id != self.info.model_id:
            store.close()
            raise UnavailableError(
                f"collection {self.collection!r} holds vectors of model {info.model_id}, "
                f"but the server encodes queries with model {self.info.model_id}"
            )
        return store

    def _result(self, hit: SearchHit, base: str) -> SearchResult:
        duration = hit.payload.get("duration_s")
        return SearchResult(
            video_id=hit.video_id,
            uri=hit.uri,
            score=hit.score,
            frame_ts=hit.frame_ts,
            best_moment_s=hit.best_moment_s,
            duration_s=None if duration is None else float(duration),
            media_url=self.media.media_url(hit.uri, base),
        )

    def _video_info(self, hit: SearchHit, base: str) -> VideoInfo:
        p = hit.payload
        return VideoInfo(
            video_id=hit.video_id,
            uri=hit.uri,
            etag=p.get("etag"),
            size_bytes=p.get("size_bytes"),
            duration_s=p.get("duration_s"),
            frame_ts=hit.frame_ts,
            frame_weights=[float(w) for w in p.get("frame_weights", [])],
            model_id=p.get("model_id"),
            indexed_at=p.get("indexed_at"),
            media_url=self.media.media_url(hit.uri, base),
        )
