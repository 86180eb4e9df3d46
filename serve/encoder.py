"""The query text encoder: a checkpoint's text tower behind `@serve.batch` and an LRU cache.

`QueryEncoder` (no Ray) loads the checkpoint and encodes a list of queries with the exact
padding trim and length grouping of `AdaCLIP.encode_text`. `TextEncoder` is the Serve
deployment around it: concurrent requests are gathered into batches, repeated queries are
answered from a per-replica LRU cache, and the model runs in a worker thread so that the
replica's event loop keeps accepting requests while a batch computes. `InlineEncoder` is the
same cached encoding inside the ingress process (no batching, no deployment hop).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the model behind the encoder."""

    model_id: str
    dim: int
    frame_agg: str
    agg_temperature: float
    max_text_len: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueryVector:
    """A query embedding and the model that made it: an embedding never travels alone, so
    the ingress can refuse one whose model is not the collection's."""

    model_id: str
    vector: Vector  # (D,) unit norm


def published_checkpoint(models_root: str, model_id: str) -> str:
    """Where `adaclip publish` put model `model_id` under `models_root`: `<root>/<model_id>`."""
    return f"{models_root.rstrip('/')}/{model_id}"


class QueryCache:
    """Least-recently-used map from query text to its embedding (capacity 0: disabled)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Vector] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> Vector | None:
        vector = self._items.get(text)
        if vector is None:
            self.misses += 1
            return None
        self._items.move_to_end(text)
        self.hits += 1
        return vector

    def put(self, text: str, vector: Vector) -> None:
        if self.capacity <= 0:
            return
        self._items[text] = vector
        self._items.move_to_end(text)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class QueryEncoder:
    """A checkpoint's text tower: queries -> unit embeddings.

    Only the text tower is loaded (`adaclip.text_tower.load_text_tower`: no image tower,
    policy or aggregator); the full model is loaded on the first image query, so a replica
    that only ever sees text holds the text tower alone.

    Args:
        checkpoint: checkpoint folder, local or `s3://` (copied to a temp folder).
        device: torch device (default: CUDA when available, else CPU).
        s3_endpoint_url: S3-compatible endpoint for an `s3://` checkpoint.
    """

    def __init__(
        self, checkpoint: str, device: str | None = None, s3_endpoint_url: str | None = None
    ) -> None:
        import threading

        import torch

        from adaclip.text_tower import load_text_tower

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.folder = local_checkpoint(checkpoint, s3_endpoint_url)
        self.device = device
        self.model = load_text_tower(self.folder, device=device)
        self._image_model: Any = None  # the full model, loaded by the first image query
        self._image_lock = threading.Lock()
        cfg = self.model.config
        self.info = ModelInfo(
            model_id=str(self.model.model_id),
            dim=int(self.model.embed_dim),
            frame_agg=cfg.aggregation,
            agg_temperature=float(cfg.agg_temperature),
            max_text_len=int(cfg.max_text_len),
            device=device,
        )

    def encode(self, texts: Sequence[str]) -> Vector:
        """Unit text embeddings (B, D) float32, in the order of `texts`."""
        return self.model.encode_text(list(texts)).float().cpu().numpy()  # (B, D)

    def image_model(self) -> Any:
        """The full model (its image tower), loaded once, on first use."""
        with self._image_lock:
            if self._image_model is None:
                from adaclip.checkpoint import load_checkpoint

                self._image_model = load_checkpoint(self.folder, device=self.device)
            return self._image_model

    def encode_image(self, image: bytes) -> Vector:
        """Unit CLIP image embedding (D,) of an encoded image (JPEG, PNG, WebP ...), cropped
        and scaled as the index's frames are.

        Raises:
            ValueError: the bytes are not an image.
        """
        import torch
        import torch.nn.functional as F

        pixels = torch.from_numpy(decode_query_image(image, int(self.model.image_size)).copy())
        model = self.image_model()
        with torch.no_grad():
            raw = model.encode_images(pixels[None])  # (1, D)
        return F.normalize(raw.float(), dim=-1)[0].cpu().numpy()  # (D,)


def decode_query_image(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    """An uploaded image as RGB uint8 (size, size, 3): centre square crop, then resize (the
    decoder's `shortest_center_crop` for frames)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            rgb = opened.convert("RGB")
            w, h = rgb.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
            square = rgb.crop(box).resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(square, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"not a readable image: {err}") from err


def local_checkpoint(checkpoint: str, s3_endpoint_url: str | None = None) -> str:
    """A local folder holding `checkpoint` (an `s3://` one through the node's checkpoint
    cache, :func:`pipelines.checkpoints.fetch_checkpoint`)."""
    if not checkpoint.startswith("s3://"):
        return checkpoint
    from pipelines.checkpoints import fetch_checkpoint

    return str(fetch_checkpoint(checkpoint, s3_endpoint_url))


def normalize_query(text: str) -> str:
    """The text that is encoded and cached: surrounding whitespace does not matter."""
    return " ".join(text.split())


class UnknownModelError(LookupError):
    """No checkpoint of the model a collection was built with can be loaded."""


class ModelSet:
    """The query encoders of a replica, by model_id: the configured checkpoint, and models
    published under `models_root/<model_id>/` (`adaclip publish`), loaded when a collection
    alias switches to a collection of theirs. At most `max_models` stay loaded (least
    recently loaded first out; the configured one too, once replaced).

    Args:
        checkpoint: checkpoint folder loaded at start, local or `s3://`.
        models_root: folder or `s3://` prefix of published checkpoints (None: only
            `checkpoint`).
        s3_endpoint_url: S3-compatible endpoint for `s3://` checkpoints.
        max_models: most models held at once.
    """

    def __init__(
        self,
        checkpoint: str,
        models_root: str | None = None,
        s3_endpoint_url: str | None = None,
        max_models: int = 2,
    ) -> None:
        import threading

        self.models_root = models_root
        self.s3_endpoint_url = s3_endpoint_url
        self.max_models = max(max_models, 1)
        first = QueryEncoder(checkpoint, s3_endpoint_url=s3_endpoint_url)
        first.encode(["warm up"])
        self.info = first.info
        self._encoders: OrderedDict[str, QueryEncoder] = OrderedDict({first.info.model_id: first})
        self._lock = threading.Lock()

    def get(self, model_id: str | None) -> QueryEncoder:
        """The loaded encoder of `model_id` (None: the first one loaded).

        Raises:
            UnknownModelError: it is not loaded.
        """
        with self._lock:
            encoder = self._encoders.get(model_id or self.info.model_id)
            if encoder is None and model_id is None and self._encoders:
                encoder = next(reversed(self._encoders.values()))
        if encoder is None:
            raise UnknownModelError(f"model {model_id} is not loaded")
        return encoder

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._encoders)

    def load(self, model_id: str) -> ModelInfo:
        """Load published model `model_id` (blocking; a no-op when loaded).

        Raises:
            UnknownModelError: no `models_root`, nothing published under it for this id, or
                the files there hash to another model_id (a prefix must be immutable).
        """
        with self._lock:
            if model_id in self._encoders:
                return self._encoders[model_id].info
        if not self.models_root:
            raise UnknownModelError(
                f"model {model_id} is not loaded and no models_root is set to load it from"
            )
        where = published_checkpoint(self.models_root, model_id)
        try:
            encoder = QueryEncoder(where, s3_endpoint_url=self.s3_endpoint_url)
        except Exception as err:
            raise UnknownModelError(
                f"cannot load model {model_id} from {where}: {type(err).__name__}: {err}"
            ) from err
        if encoder.info.model_id != model_id:
            raise UnknownModelError(
                f"{where} holds model {encoder.info.model_id}, not {model_id}: published "
                f"prefixes must never be overwritten"
            )
        encoder.encode(["warm up"])
        with self._lock:
            self._encoders[model_id] = encoder
            while len(self._encoders) > self.max_models:
                self._encoders.popitem(last=False)
        return encoder.info


class InlineEncoder:
    """Cached query encoding in the caller's process: the ingress without an encoder hop.

    No batching (on CPU a batch costs as much as its queries one by one, and a lone query
    would wait for company) and one worker thread: concurrent queries queue for the model
    instead of oversubscribing the replica's CPUs, and the event loop stays free.

    Args:
        checkpoint: checkpoint folder, local or `s3://`.
        cache_size: query embeddings kept in the LRU cache (0: no cache).
        s3_endpoint_url: S3-compatible endpoint for an `s3://` checkpoint.
        models_root: where published models are loaded from when a collection needs one.
    """

    def __init__(
        self,
        checkpoint: str,
        cache_size: int = 1024,
        s3_endpoint_url: str | None = None,
        models_root: str | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from serve.metrics import EncoderMetrics

        self.models = ModelSet(checkpoint, models_root, s3_endpoint_url)
        self.info = self.models.info
        self.cache = QueryCache(cache_size)
        self.metrics = EncoderMetrics.create()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-encoder")

    def _encode_one(self, encoder: QueryEncoder, text: str) -> Vector:
        start = time.perf_counter()
        vector = encoder.encode([text])[0]  # (D,)
        self.metrics.batch(1, time.perf_counter() - start)
        return vector

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        """Unit embedding (D,) of one query by model `model_id` (None: the configured one).

        Raises:
            UnknownModelError: that model is not loaded.
        """
        encoder = self.models.get(model_id)
        key = normalize_query(text)
        cache_key = f"{encoder.info.model_id}\n{key}"
        vector = self.cache.get(cache_key)
        self.metrics.cache(vector is not None)
        if vector is None:
            loop = asyncio.get_running_loop()
            vector = await loop.run_in_executor(self._executor, self._encode_one, encoder, key)
            self.cache.put(cache_key, vector)
        return QueryVector(encoder.info.model_id, vector)

    async def load(self, model_id: str) -> ModelInfo:
        """Load published model `model_id` in a worker thread (queries go on meanwhile)."""
        return await asyncio.to_thread(self.models.load, model_id)

    async def embed_image(self, image: bytes, model_id: str | None = None) -> QueryVector:
        """Unit CLIP image embedding (D,) of an encoded image, by model `model_id`."""
        encoder = self.models.get(model_id)
        loop = asyncio.get_running_loop()
        vector = await loop.run_in_executor(self._executor, encoder.encode_image, image)
        return QueryVector(encoder.info.model_id, vector)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


@serve.deployment(name="TextEncoder", max_ongoing_requests=64)
class TextEncoder:
    """Serve deployment: batched, cached query encoding.

    Args:
        checkpoint: checkpoint folder, local or `s3://`.
        cache_size: query embeddings kept in the LRU cache (0: no cache).
        max_batch_size: most queries per forward pass (1: batching off).
        batch_wait_timeout_s: how long the first query of a batch waits for company.
        s3_endpoint_url: S3-compatible endpoint for an `s3://` checkpoint.
        models_root: where published models are loaded from when a collection needs one.
    """

    def __init__(
        self,
        checkpoint: str,
        cache_size: int = 1024,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        s3_endpoint_url: str | None = None,
        models_root: str | None = None,
    ) -> None:
        from serve.metrics import EncoderMetrics

        self.models = ModelSet(checkpoint, models_root, s3_endpoint_url)
        self.cache = QueryCache(cache_size)
        self.metrics = EncoderMetrics.create()
        self._encode_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def info(self) -> dict[str, Any]:
        """The configured model's `ModelInfo` as a dict (plain data crosses the handle)."""
        return self.models.info.to_dict()

    async def load(self, model_id: str) -> dict[str, Any]:
        """Load published model `model_id`; its `ModelInfo` as a dict."""
        info = await asyncio.to_thread(self.models.load, model_id)
        return info.to_dict()

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        """Unit embedding (D,) of one query by model `model_id` (None: the configured one);
        a published model this replica has not loaded yet is loaded first."""
        if model_id is not None and model_id not in self.models.loaded():
            await asyncio.to_thread(self.models.load, model_id)
        model = self.models.get(model_id).info.model_id
        key = normalize_query(text)
        vector = self.cache.get(f"{model}\n{key}")
        self.metrics.cache(vector is not None)
        if vector is None:
            vector = await self._encode_batch((model, key))
            self.cache.put(f"{model}\n{key}", vector)
        return QueryVector(model, vector)

    async def embed_image(self, image: bytes, model_id: str | None = None) -> QueryVector:
        """Unit CLIP image embedding (D,) of an encoded image, by model `model_id`."""
        if model_id is not None and model_id not in self.models.loaded():
            await asyncio.to_thread(self.models.load, model_id)
        encoder = self.models.get(model_id)
        vector = await asyncio.to_thread(encoder.encode_image, image)
        return QueryVector(encoder.info.model_id, vector)

    async def check_health(self) -> None:
        """Serve's health check: the model still encodes (a replica that cannot is replaced)."""
        await asyncio.wait_for(asyncio.to_thread(self.models.get(None).encode, ["health"]), 10.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, items: list[tuple[str, str]]) -> list[Vector]:
        start = time.perf_counter()
        out: list[Vector | None] = [None] * len(items)
        for model in dict.fromkeys(m for m, _ in items):  # one forward pass per model
            rows = [i for i, (m, _) in enumerate(items) if m == model]
            encoder = self.models.get(model)
            vectors = await asyncio.to_thread(encoder.encode, [items[i][1] for i in rows])
            for i, vector in zip(rows, vectors, strict=True):
                out[i] = vector  # (D,)
        self.metrics.batch(len(items), time.perf_counter() - start)
        return [v for v in out if v is not None]
