"""How a server collection is laid out for millions of videos, and what it costs in memory.

A point holds one ``video`` vector (D floats, searched through HNSW) and the ``frames``
multivector (K x D floats, only read back to re-rank the top hits), plus a payload of
~2 kB (the K x K Gram matrix and the frame times dominate it). At D=512, K=12 the frames
are 12 times the video vector, so where they live decides the collection's memory.

:class:`CollectionProfile` is what the index job's ``--qdrant-*`` flags set when it creates
a collection on a Qdrant server (the embedded store has its own layout). The default
profile keeps in RAM only what search touches: the int8-quantised ``video`` vectors (1 byte
a dimension, originals on disk for rescoring) and their HNSW graph; ``frames`` and the
payload live on disk (mmap) and are read for the few points a query returns.

:func:`memory_per_million` applies Qdrant's documented formulas:

- capacity planning (https://qdrant.tech/documentation/guides/capacity-planning/):
  ``memory_size = number_of_vectors * vector_dimension * 4 bytes * 1.5`` for vectors kept
  in RAM, the 1.5 covering "metadata (such as indexes and point versions) and temporary
  segments created during optimization";
- quantisation (https://qdrant.tech/documentation/guides/quantization/): scalar int8 keeps
  one byte per dimension in RAM (``always_ram``), 4x less than float32, originals on disk
  and read back to rescore;
- on-disk vectors and payload (https://qdrant.tech/documentation/concepts/storage/): memmap
  storage, served from the OS page cache, not counted as required RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qdrant_client import models as qm

from pipelines.store.base import FRAMES_VECTOR, VIDEO_VECTOR

DEFAULT_INDEXING_THRESHOLD_KB = 20_000  # Qdrant's default (OptimizersConfigDiff docs)
QDRANT_OVERHEAD = 1.5  # capacity planning: metadata, indexes, optimisation segments
PAYLOAD_BYTES = 2_000  # a point's payload at K=12 (Gram matrix, times, weights, uri ...)


@dataclass(frozen=True)
class CollectionProfile:
    """Layout of a server collection (defaults: the profile for millions of videos).

    Attributes:
        video_int8: scalar int8 quantisation of ``video`` (quantile 0.99, kept in RAM);
            its float originals move to disk and searches rescore with them.
        frames_on_disk: ``frames`` multivectors stored on disk (mmap).
        frames_int8: int8 quantisation of ``frames`` too (in RAM); they are read only
            to re-rank, so the default leaves them unquantised on disk.
        payload_on_disk: payload stored on disk (the indexed fields stay in RAM).
        shards: ``shard_number`` (spread points over nodes; set once, at creation).
        replicas: ``replication_factor`` (copies of each shard).
        write_consistency: ``write_consistency_factor`` (replicas that acknowledge a write).
        bulk_load: create (or switch) the collection with HNSW building deferred
            (``indexing_threshold=0``) for a large first load; the job restores it at the
            end, and any later writer restores a collection a crashed load left deferred.
    """

    video_int8: bool = True
    frames_on_disk: bool = True
    frames_int8: bool = False
    payload_on_disk: bool = True
    shards: int = 1
    replicas: int = 1
    write_consistency: int = 1
    bulk_load: bool = False

    def __post_init__(self) -> None:
        if min(self.shards, self.replicas, self.write_consistency) < 1:
            raise ValueError("shards, replicas and write consistency must be >= 1")
        if self.write_consistency > self.replicas:
            raise ValueError(
                f"write consistency {self.write_consistency} > replicas {self.replicas}: "
                "no write could ever be acknowledged"
            )

    def vectors_config(self, dim: int) -> dict[str, qm.VectorParams]:
        video = qm.VectorParams(
            size=dim,
            distance=qm.Distance.COSINE,
            on_disk=self.video_int8 or None,  # originals on disk when the int8 copy is in RAM
            quantization_config=_int8() if self.video_int8 else None,
        )
        frames = qm.VectorParams(
            size=dim,
            distance=qm.Distance.COSINE,
            multivector_config=qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM),
            hnsw_config=qm.HnswConfigDiff(m=0),  # fetched for re-ranking, never searched
            on_disk=self.frames_on_disk or None,
            quantization_config=_int8() if self.frames_int8 else None,
        )
        return {VIDEO_VECTOR: video, FRAMES_VECTOR: frames}

    def create_kwargs(self, dim: int) -> dict[str, Any]:
        """Keyword arguments of ``QdrantClient.create_collection`` for this profile."""
        return {
            "vectors_config": self.vectors_config(dim),
            "shard_number": self.shards,
            "replication_factor": self.replicas,
            "write_consistency_factor": self.write_consistency,
            "on_disk_payload": self.payload_on_disk,
            "optimizers_config": qm.OptimizersConfigDiff(indexing_threshold=0)
            if self.bulk_load
            else None,
        }

    def search_params(self) -> qm.SearchParams | None:
        """Rescore the int8 candidates with the originals (2x oversampling)."""
        if not self.video_int8:
            return None
        return qm.SearchParams(
            quantization=qm.QuantizationSearchParams(rescore=True, oversampling=2.0)
        )


def _int8() -> qm.ScalarQuantization:
    return qm.ScalarQuantization(
        scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)
    )


def memory_per_million(profile: CollectionProfile, dim: int = 512, k: int = 12) -> dict[str, float]:
    """GB per million videos, per replica: RAM the profile needs, and disk.

    RAM: vectors kept in RAM (float32 or their int8 copies) x 1.5, plus the payload when it
    is not on disk. Disk: every vector's float originals, quantised copies and the payload.
    """
    n = 1_000_000
    video_f32, frames_f32 = n * dim * 4, n * k * dim * 4
    ram = 0.0
    ram += n * dim * 1 if profile.video_int8 else video_f32
    if profile.frames_int8:
        ram += n * k * dim * 1
    elif not profile.frames_on_disk:
        ram += frames_f32
    ram *= QDRANT_OVERHEAD
    payload = n * PAYLOAD_BYTES
    if not profile.payload_on_disk:
        ram += payload
    disk = video_f32 + frames_f32 + payload
    disk += n * dim * (1 if profile.video_int8 else 0) + n * k * dim * (
        1 if profile.frames_int8 else 0
    )
    return {"ram_gb": ram / 1e9, "disk_gb": disk / 1e9}
