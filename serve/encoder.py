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

    Args:
        checkpoint: checkpoint folder, local or `s3://` (copied to a temp folder).
        device: torch device (default: CUDA when available, else CPU).
        s3_endpoint_url: S3-compatible endpoint for an `s3://` checkpoint.
    """

    def __init__(
        self, checkpoint: str, device: str | None = None, s3_endpoint_url: str | None = None
    ) -> None:
        import torch

        from adaclip.checkpoint import load_checkpoint

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_checkpoint(local_checkpoint(checkpoint, s3_endpoint_url), device=device)
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


class InlineEncoder:
    """Cached query encoding in the caller's process: the ingress without an encoder hop.

    No batching (on CPU a batch costs as much as its queries one by one, and a lone query
    would wait for company) and one worker thread: concurrent queries queue for the model
    instead of oversubscribing the replica's CPUs, and the event loop stays free.

    Args:
        checkpoint: checkpoint folder, local or `s3://`.
        cache_size: query embeddings kept in the LRU cache (0: no cache).
        s3_endpoint_url: S3-compatible endpoint for an `s3://` checkpoint.
    """

    def __init__(
        self, checkpoint: str, cache_size: int = 1024, s3_endpoint_url: str | None = None
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from serve.metrics import EncoderMetrics

        self.encoder = QueryEncoder(checkpoint, s3_endpoint_url=s3_endpoint_url)
        self.info = self.encoder.info
        self.cache = QueryCache(cache_size)
        self.metrics = EncoderMetrics.create()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-encoder")
        self.encoder.encode(["warm up"])

    def _encode_one(self, text: str) -> Vector:
        start = time.perf_counter()
        vector = self.encoder.encode([text])[0]  # (D,)
        self.metrics.batch(1, time.perf_counter() - start)
        return vector

    async def embed(self, text: str) -> Vector:
        """Unit embedding (D,) of one query."""
        key = normalize_query(text)
        vector = self.cache.get(key)
        self.metrics.cache(vector is not None)
        if vector is None:
            loop = asyncio.get_running_loop()
            vector = await loop.run_in_executor(self._executor, self._encode_one, key)
            self.cache.put(key, vector)
        return vector

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
    """

    def __init__(
        self,
        checkpoint: str,
        cache_size: int = 1024,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        s3_endpoint_url: str | None = None,
    ) -> None:
        from serve.metrics import EncoderMetrics

        self.encoder = QueryEncoder(checkpoint, s3_endpoint_url=s3_endpoint_url)
        self.cache = QueryCache(cache_size)
        self.metrics = EncoderMetrics.create()
        self._encode_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.encoder.encode(["warm up"])

    def info(self) -> dict[str, Any]:
        """The model's `ModelInfo` as a dict (plain data crosses the handle)."""
        return self.encoder.info.to_dict()

    async def embed(self, text: str) -> Vector:
        """Unit embedding (D,) of one query."""
        key = normalize_query(text)
        vector = self.cache.get(key)
        self.metrics.cache(vector is not None)
        if vector is None:
            vector = await self._encode_batch(key)
            self.cache.put(key, vector)
        return vector

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, texts: list[str]) -> list[Vector]:
        start = time.perf_counter()
        vectors = await asyncio.to_thread(self.encoder.encode, texts)  # (B, D)
        self.metrics.batch(len(texts), time.perf_counter() - start)
        return list(vectors)
