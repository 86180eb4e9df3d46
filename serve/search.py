"""The search itself, without HTTP or Ray: embed the query, query the store, shape results.

`SearchService` is what the FastAPI routes call. It opens the store lazily (so a server
whose Qdrant is down still starts, answers 503 and recovers when Qdrant comes back), runs
blocking store calls in worker threads, and turns every store or encoder failure into
`UnavailableError` (HTTP 503).

Model rollout: the configured collection name may be an alias of a physical per-model
collection. The service binds the physical collection and the model that filled it, and
checks the alias every `alias_check_s`; when it points elsewhere, the new collection's
model is loaded (published under `models_root/<model_id>/`) while the old binding keeps
answering, then the binding switches in one step. Every query embedding carries its
`model_id`; one that is not the bound collection's is refused (`ModelMismatchError`,
HTTP 503, counted), so an answer always comes from exactly one model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from pipelines.store import SearchHit, VideoStore
from serve.encoder import ModelInfo, QueryVector
from serve.media import MediaResolver
from serve.schemas import (
    SearchRequest,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    VideoInfo,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class UnavailableError(RuntimeError):
    """The store or the encoder cannot answer now (HTTP 503)."""


class BadQueryError(ValueError):
    """The query itself cannot be embedded (an upload that is no image): HTTP 422."""


class ModelMismatchError(UnavailableError):
    """A query embedding of another model than the collection's: refused, never served."""


class QueryEncoding(Protocol):
    """What the service needs of an encoder (`InlineEncoder`, or the handle adapter)."""

    @property
    def info(self) -> ModelInfo: ...

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector: ...

    async def load(self, model_id: str) -> ModelInfo: ...

    async def embed_image(self, image: bytes, model_id: str | None = None) -> QueryVector: ...


THUMBNAIL_CACHE = 2048  # JPEG thumbnails kept per replica (a few KB each)
THUMBNAIL_SIZE = 96


def thumbnail_jpeg(path: Any, t: float, size: int = THUMBNAIL_SIZE) -> bytes:
    """The frame at `t` seconds, centre-cropped square (as the model saw it), as JPEG."""
    import io

    from PIL import Image

    from adaclip.thumbnails import decode_frame_at

    out = io.BytesIO()
    Image.fromarray(decode_frame_at(path, t, size)).save(out, format="JPEG", quality=85)
    return out.getvalue()


@dataclass
class Binding:
    """The physical collection answered from, its model, and a store bound to it."""

    collection: str
    model: ModelInfo
    store: VideoStore


class SearchService:
    """Query embedding + store search + media URLs.

    Args:
        encoder: embeds queries (with their model_id) and loads published models.
        open_store: opens the (unbound) video store; called again after a failure.
        collection: collection to search: a physical collection or an alias of one.
        media: turns URIs into playable URLs.
        rerank_candidates: candidates re-ranked by Q-Score when re-ranking.
        ready_timeout_s: how long /readyz waits for the encoder.
        alias_check_s: how often the alias is resolved again (0: every request).
        on_mismatch: called once per refused mismatched embedding (a metric).
    """

    def __init__(
        self,
        encoder: QueryEncoding,
        open_store: Callable[[], VideoStore],
        collection: str,
        media: MediaResolver,
        rerank_candidates: int = 100,
        ready_timeout_s: float = 5.0,
        alias_check_s: float = 2.0,
        on_mismatch: Callable[[], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self._open_store = open_store
        self.collection = collection
        self.media = media
        self.rerank_candidates = rerank_candidates
        self.ready_timeout_s = ready_timeout_s
        self.alias_check_s = alias_check_s
        self._on_mismatch = on_mismatch
        self._binding: Binding | None = None
        self._retired: list[Binding] = []  # replaced bindings, closed one switch later
        self._refusal: str | None = None  # the alias points at a model that cannot load
        self._switching: asyncio.Task[None] | None = None
        self._checked_at = 0.0
        self._open_lock = asyncio.Lock()
        self._thumbnails: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    @property
    def info(self) -> ModelInfo:
        """The model of the bound collection (the encoder's configured one before binding)."""
        return self._binding.model if self._binding is not None else self.encoder.info

    # ---- public API -------------------------------------------------------------------

    async def search(self, request: SearchRequest, base: str = "") -> SearchResponse:
        """Answer one validated search request; `base` prefixes local media URLs."""
        start = time.perf_counter()
        binding = await self._current()
        model = binding.model
        if request.image is not None:
            vector = await self.embed_image_for(request.image_bytes(), binding)
            rerank = bool(request.rerank)  # Q-Score was defined for text queries
        else:
            vector = await self.embed_for(request.query or "", binding)
            rerank = request.rerank if request.rerank is not None else model.frame_agg == "qscore"
        prefix = request.filter.uri_prefix if request.filter else None

        def run(store: VideoStore) -> list[SearchResult]:
            hits = store.search(
                vector,
                top_k=request.top_k,
                uri_prefix=prefix or None,
                rerank=rerank,
                rerank_candidates=self.rerank_candidates,
                agg_temperature=model.agg_temperature,
            )
            if request.moments and not rerank:
                store.add_moments(hits, vector)
            return [self._result(hit, base) for hit in hits]

        results = await self._with_store(binding, run)
        took_ms = (time.perf_counter() - start) * 1000.0
        return SearchResponse(
            results=results,
            took_ms=took_ms,
            model_id=model.model_id,
            collection=binding.collection,
            reranked=rerank,
        )

    async def video(self, video_id: str, base: str = "") -> VideoInfo | None:
        """A video's stored record by `video_id` (or point id); None if unknown."""
        binding = await self._current()

        def run(store: VideoStore) -> VideoInfo | None:
            hit = store.get(video_id)
            return None if hit is None else self._video_info(hit, base)

        return await self._with_store(binding, run)

    async def similar(self, video_id: str, top_k: int, base: str = "") -> SimilarResponse | None:
        """Videos nearest to indexed video `video_id` (never itself); None if unknown."""
        start = time.perf_counter()
        binding = await self._current()

        def run(store: VideoStore) -> tuple[SearchHit, list[SearchHit]] | None:
            return store.similar(video_id, top_k)

        found = await self._with_store(binding, run)
        if found is None:
            return None
        hit, hits = found
        return SimilarResponse(
            video_id=hit.video_id,
            results=[self._result(h, base) for h in hits],
            took_ms=(time.perf_counter() - start) * 1000.0,
            model_id=binding.model.model_id,
            collection=binding.collection,
        )

    async def embed_image_for(self, image: bytes, binding: Binding) -> np.ndarray:
        """The CLIP image embedding of `image` by `binding`'s model (refused otherwise)."""
        try:
            qv = await self.encoder.embed_image(image, binding.model.model_id)
        except ValueError as err:
            raise BadQueryError(str(err).splitlines()[-1]) from err
        except Exception as err:
            logger.exception("image encoder failed")
            raise UnavailableError(f"image encoder unavailable: {type(err).__name__}") from err
        return self._checked(QueryVector(qv.model_id, np.asarray(qv.vector, np.float32)), binding)

    def _checked(self, qv: QueryVector, binding: Binding) -> np.ndarray:
        if qv.model_id != binding.model.model_id:
            if self._on_mismatch is not None:
                self._on_mismatch()
            raise ModelMismatchError(
                f"query embedded by model {qv.model_id}, but collection "
                f"{binding.collection!r} holds model {binding.model.model_id}: refused"
            )
        return qv.vector.reshape(-1)

    async def readiness(self) -> dict[str, Any]:
        """Facts for /readyz, probed now (nothing cached): the alias resolves, the store
        counts the bound collection, and the encoder embeds a probe with its model.

        Raises:
            UnavailableError: the store or the model is not ready.
        """
        binding = await self._current(force_check=True)
        count = await self._with_store(binding, lambda store: store.count())
        try:
            await asyncio.wait_for(
                self.embed_for("readiness probe", binding), timeout=self.ready_timeout_s
            )
        except asyncio.TimeoutError as err:
            raise UnavailableError("text encoder did not answer in time") from err
        return {
            "ready": True,
            "model_id": binding.model.model_id,
            "collection": self.collection,
            "physical_collection": binding.collection,
            "videos": count,
        }

    async def health(self) -> None:
        """Replica health: the encoder embeds a probe, and the bound store answers (a
        replica whose model or store client stopped answering is replaced). Before the
        first binding only the encoder is probed: /readyz says whether the store opens."""
        try:
            await asyncio.wait_for(self.embed("health probe"), timeout=self.ready_timeout_s)
        except asyncio.TimeoutError as err:
            raise UnavailableError("text encoder did not answer in time") from err
        if self._binding is not None:
            await self._with_store(self._binding, lambda store: store.count())

    @property
    def default_rerank(self) -> bool:
        """Re-rank by default only when the model's aggregator is query-dependent (Q-Score):
        re-ordering an MLP-Score model by Q-Score ranks by a similarity it was not trained on."""
        return self.info.frame_agg == "qscore"

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        """The encoder's embedding of `text` by `model_id`; failures become 503s."""
        try:
            qv = await self.encoder.embed(text, model_id)
        except Exception as err:
            logger.exception("text encoder failed")
            raise UnavailableError(f"text encoder unavailable: {type(err).__name__}") from err
        return QueryVector(qv.model_id, np.asarray(qv.vector, dtype=np.float32).reshape(-1))

    async def embed_for(self, text: str, binding: Binding) -> np.ndarray:
        """The query vector for `binding`'s collection; a vector of any other model is
        refused (ModelMismatchError), never searched with."""
        return self._checked(await self.embed(text, binding.model.model_id), binding)

    def close(self) -> None:
        if self._switching is not None:
            self._switching.cancel()
        for binding in [*self._retired, *([self._binding] if self._binding else [])]:
            binding.store.close()
        self._binding, self._retired = None, []

    # ---- binding: alias -> physical collection -> model ---------------------------------

    async def _current(self, force_check: bool = False) -> Binding:
        binding = self._binding
        if binding is None:
            return await self._first_binding()
        now = time.monotonic()
        due = force_check or now - self._checked_at >= self.alias_check_s
        if due and (self._switching is None or self._switching.done()):
            self._checked_at = now
            target = await self._with_store(
                binding, lambda store: store.resolve_alias(self.collection)
            )
            if target != binding.collection:
                self._switching = asyncio.create_task(self._switch(target))
            elif self._refusal is not None:
                self._refusal = None  # the alias came back to the bound collection
        if self._refusal is not None:
            raise UnavailableError(self._refusal)
        return binding

    async def _first_binding(self) -> Binding:
        async with self._open_lock:
            if self._binding is None:
                self._binding = await self._bind(None)
                self._checked_at = time.monotonic()
            return self._binding

    async def _switch(self, target: str) -> None:
        """Bind `target` while the old binding keeps answering; then swap in one step."""
        try:
            new = await self._bind(target)
        except UnavailableError as err:
            logger.error("alias %r -> %r: %s", self.collection, target, err)
            self._refusal = str(err)
            return
        old, self._binding = self._binding, new
        self._refusal = None
        for retired in self._retired:  # in-flight calls on these ended a switch ago
            retired.store.close()
        self._retired = [old] if old is not None else []
        logger.info(
            "collection %r now answers from %r (model %s)",
            self.collection,
            new.collection,
            new.model.model_id,
        )

    async def _bind(self, target: str | None) -> Binding:
        """Open the store on `target` (None: resolve the alias) and get its model."""
        try:
            store = await asyncio.to_thread(self._open_store)
        except Exception as err:
            logger.warning("cannot open the store: %s: %s", type(err).__name__, err)
            raise UnavailableError(
                f"vector store unavailable: {type(err).__name__}: {err}"
            ) from err
        try:
            info = await asyncio.to_thread(store.open_collection, target or self.collection)
            model = await self._model_for(info.model_id, info.name)
        except UnavailableError:
            store.close()
            raise
        except Exception as err:
            store.close()
            logger.warning("cannot open collection: %s: %s", type(err).__name__, err)
            raise UnavailableError(
                f"vector store unavailable: {type(err).__name__}: {err}"
            ) from err
        return Binding(info.name, model, store)

    async def _model_for(self, model_id: str, collection: str) -> ModelInfo:
        if model_id == self.encoder.info.model_id:
            return self.encoder.info
        try:
            return await self.encoder.load(model_id)
        except Exception as err:
            raise UnavailableError(
                f"collection {collection!r} holds vectors of model {model_id}, but the server "
                f"encodes queries with model {self.encoder.info.model_id} and cannot load "
                f"{model_id} ({err}); it refuses rather than mix models"
            ) from err

    # ---- helpers ----------------------------------------------------------------------

    async def _with_store(self, binding: Binding, fn: Callable[[VideoStore], T]) -> T:
        try:
            return await asyncio.to_thread(fn, binding.store)
        except Exception as err:
            logger.warning("store call failed: %s: %s", type(err).__name__, err)
            raise UnavailableError(f"vector store unavailable: {type(err).__name__}") from err

    async def frame_jpeg(self, video_id: str, index: int) -> bytes | None:
        """JPEG thumbnail of kept frame `index` of a local video under the media root,
        decoded by seeking to its `frame_ts` (cached by URI, etag and index); None when the
        video, the frame or the file is unknown or out of bounds."""
        binding = await self._current()
        hit = await self._with_store(binding, lambda store: store.get(video_id))
        if hit is None or not 0 <= index < len(hit.frame_ts):
            return None
        path = self.media.local_path(hit.uri)
        if path is None:
            return None
        key = (hit.uri, str(hit.payload.get("etag")), index)
        cached = self._thumbnails.get(key)
        if cached is not None:
            self._thumbnails.move_to_end(key)
            return cached
        try:
            data = await asyncio.to_thread(thumbnail_jpeg, path, hit.frame_ts[index])
        except Exception as err:  # a file that no longer decodes: no thumbnail
            logger.warning("thumbnail %s #%d: %s: %s", hit.uri, index, type(err).__name__, err)
            return None
        self._thumbnails[key] = data
        while len(self._thumbnails) > THUMBNAIL_CACHE:
            self._thumbnails.popitem(last=False)
        return data

    def _result(self, hit: SearchHit, base: str) -> SearchResult:
        duration = hit.payload.get("duration_s")
        return SearchResult(
            frame_urls=self.media.frame_urls(hit.uri, hit.video_id, len(hit.frame_ts), base),
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
