"""Prometheus metrics of the search server through Ray's metrics API.

Ray exports them on every node's metrics endpoint with a `ray_` prefix (for example
`ray_adaclip_http_requests_total`), tagged with the Serve application, deployment and
replica. Outside a Ray worker (unit tests of the FastAPI app) the recorders do nothing.
"""

from __future__ import annotations

from typing import Any

LATENCY_BOUNDARIES_MS = [1.0, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000]
BATCH_SIZE_BOUNDARIES = [1.0, 2, 4, 8, 16, 32, 64, 128]


def _ray_running() -> bool:
    import ray

    return bool(ray.is_initialized())


def _metric(kind: str, name: str, **kwargs: Any) -> Any:
    """A `ray.serve.metrics` Counter or Histogram (its stubs type tag_keys too narrowly)."""
    from ray.serve import metrics

    return getattr(metrics, kind)(name, **kwargs)


class RequestMetrics:
    """Count and latency of HTTP requests, by route template, method and status."""

    def __init__(self, requests: Any = None, latency: Any = None, refusals: Any = None) -> None:
        self._requests = requests
        self._latency = latency
        self._refusals = refusals
        self.refusal_counts: dict[str, int] = {}

    @classmethod
    def create(cls) -> RequestMetrics:
        if not _ray_running():
            return cls()
        requests = _metric(
            "Counter",
            "adaclip_http_requests",
            description="HTTP requests answered by the search API.",
            tag_keys=("route", "method", "status"),
        )
        latency = _metric(
            "Histogram",
            "adaclip_http_request_latency_ms",
            description="Latency of search API requests inside the ingress, milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route", "method"),
        )
        refusals = _metric(
            "Counter",
            "adaclip_refused_requests",
            description="Requests refused by the ingress, by reason (model_mismatch, overload).",
            tag_keys=("reason",),
        )
        return cls(requests, latency, refusals)

    def refused(self, reason: str) -> None:
        """Count one refused request (`model_mismatch`: a query embedding of another model
        than the collection's; `overload`: shed with 503 + Retry-After)."""
        self.refusal_counts[reason] = self.refusal_counts.get(reason, 0) + 1
        if self._refusals is not None:
            self._refusals.inc(tags={"reason": reason})

    def record(self, route: str, method: str, status: int, latency_ms: float) -> None:
        if self._requests is None or self._latency is None:
            return
        self._requests.inc(tags={"route": route, "method": method, "status": str(status)})
        self._latency.observe(latency_ms, tags={"route": route, "method": method})


class EncoderMetrics:
    """Cache hits and batch sizes of the text encoder."""

    def __init__(self, cache: Any = None, batch_size: Any = None, batch_ms: Any = None) -> None:
        self._cache = cache
        self._batch_size = batch_size
        self._batch_ms = batch_ms

    @classmethod
    def create(cls) -> EncoderMetrics:
        if not _ray_running():
            return cls()
        cache = _metric(
            "Counter",
            "adaclip_encoder_cache_lookups",
            description="Query cache lookups of the text encoder, by result (hit or miss).",
            tag_keys=("result",),
        )
        batch_size = _metric(
            "Histogram",
            "adaclip_encoder_batch_size",
            description="Queries per text encoder forward pass.",
            boundaries=BATCH_SIZE_BOUNDARIES,
        )
        batch_ms = _metric(
            "Histogram",
            "adaclip_encoder_batch_latency_ms",
            description="Time of one text encoder forward pass, milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
        )
        return cls(cache, batch_size, batch_ms)

    def cache(self, hit: bool) -> None:
        if self._cache is not None:
            self._cache.inc(tags={"result": "hit" if hit else "miss"})

    def batch(self, size: int, seconds: float) -> None:
        if self._batch_size is not None and self._batch_ms is not None:
            self._batch_size.observe(size)
            self._batch_ms.observe(seconds * 1000.0)
