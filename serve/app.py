"""The Ray Serve application: a FastAPI ingress, and a batched, autoscaled text encoder.

    serve run serve.app:build_app checkpoint=./ckpt qdrant_path=./.adaclip/qdrant
    serve deploy serve/config.yaml
    adaclip serve --checkpoint ./ckpt --qdrant-path ./.adaclip/qdrant

Importing this module builds nothing and touches no cluster: `build_app` (the typed
builder Serve calls with the `key=value` arguments or the config's `args`) validates them
into `ServeSettings` and binds the deployments. The encoder is a separate deployment when
it has a GPU and the ingress may scale out (a Qdrant server); otherwise (embedded store: one
ingress replica; or CPU, where batching gains nothing) the ingress encodes queries itself,
which saves a deployment hop and the batch wait per request (`encode_in_ingress`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from pipelines.settings import default_collection
from serve.encoder import InlineEncoder, ModelInfo, QueryVector, TextEncoder
from serve.settings import ServeSettings, check_auth

logger = logging.getLogger(__name__)


@dataclass
class IngressConfig:
    """What the ingress replicas need, passed as a constructor argument (plain data)."""

    collection: str | None = None
    qdrant_path: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    media_root: str | None = None
    presign_expires_s: int = 3600
    api_key: str | None = field(default=None, repr=False)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 65536
    rerank_candidates: int = 100
    checkpoint: str | None = None  # set: encode queries in the ingress (no encoder handle)
    cache_size: int = 1024
    models_root: str | None = None
    alias_check_s: float = 2.0

    @classmethod
    def from_settings(cls, s: ServeSettings) -> IngressConfig:
        return cls(
            collection=s.collection,
            qdrant_path=_absolute(s.qdrant_path),
            qdrant_url=s.qdrant_url,
            qdrant_api_key=s.qdrant_api_key,
            s3_endpoint_url=s.s3_endpoint_url,
            media_root=_absolute(s.media_root),
            presign_expires_s=s.presign_expires_s,
            api_key=s.api_key,
            cors_origins=list(s.cors_origins),
            max_body_bytes=s.max_body_bytes,
            rerank_candidates=s.rerank_candidates,
            checkpoint=_absolute(s.checkpoint) if encodes_in_ingress(s) else None,
            cache_size=s.cache_size,
            models_root=s.models_root,
            alias_check_s=s.alias_check_s,
        )


class HandleEncoder:
    """The `TextEncoder` deployment behind the ingress's `QueryEncoding` interface."""

    def __init__(self, handle: DeploymentHandle, info: ModelInfo) -> None:
        self.handle = handle
        self.info = info

    async def embed(self, text: str, model_id: str | None = None) -> QueryVector:
        result: QueryVector = await self.handle.embed.remote(text, model_id)
        return result

    async def load(self, model_id: str) -> ModelInfo:
        return ModelInfo(**await self.handle.load.remote(model_id))

    async def embed_image(self, image: bytes, model_id: str | None = None) -> QueryVector:
        result: QueryVector = await self.handle.embed_image.remote(image, model_id)
        return result


@serve.deployment(name="SearchIngress", max_ongoing_requests=64)
@serve.ingress()
class SearchIngress:
    """HTTP ingress: the FastAPI app of `serve.api`, built once the model is known.

    Args:
        encoder: handle to the `TextEncoder` deployment; None: encode queries here
            (`config.checkpoint`) with an `InlineEncoder`.
        config: store, media and HTTP settings.
    """

    async def __init__(  # type: ignore[misc]
        self, encoder: DeploymentHandle | None, config: IngressConfig
    ) -> None:
        from pipelines.store import open_store
        from serve.api import ApiOptions
        from serve.media import MediaResolver
        from serve.metrics import RequestMetrics
        from serve.search import SearchService

        self.encoder = encoder
        self.inline: InlineEncoder | None = None
        queries: InlineEncoder | HandleEncoder
        if encoder is None:
            if not config.checkpoint:
                raise ValueError("no encoder handle and no checkpoint to encode queries with")
            self.inline = queries = InlineEncoder(
                config.checkpoint,
                cache_size=config.cache_size,
                s3_endpoint_url=config.s3_endpoint_url,
                models_root=config.models_root,
            )
        else:
            queries = HandleEncoder(encoder, ModelInfo(**await encoder.info.remote()))
        info = queries.info
        collection = config.collection or default_collection(info.model_id)
        metrics = RequestMetrics.create()

        def open_configured_store() -> Any:
            return open_store(  # an embedded folder: read through its store actor
                qdrant_path=config.qdrant_path,
                qdrant_url=config.qdrant_url,
                api_key=config.qdrant_api_key,
                create_owner=True,
            )

        self.service = SearchService(
            encoder=queries,
            open_store=open_configured_store,
            collection=collection,
            media=MediaResolver(
                config.media_root, config.s3_endpoint_url, config.presign_expires_s
            ),
            rerank_candidates=config.rerank_candidates,
            alias_check_s=config.alias_check_s,
            on_mismatch=lambda: metrics.refused("model_mismatch"),
        )
        self.api_options = ApiOptions(
            api_key=config.api_key,
            cors_origins=config.cors_origins,
            max_body_bytes=config.max_body_bytes,
            metrics=metrics,
        )
        logger.info(
            "search ingress ready: model %s, collection %s, queries encoded %s",
            info.model_id,
            collection,
            f"here ({info.device})" if self.inline is not None else "by TextEncoder",
        )

    async def check_health(self) -> None:
        """Serve's replica health check: a real encoder and store probe (raises when either
        fails; Serve then replaces the replica). /readyz runs the same probes per call."""
        await self.service.health()

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve.api import create_api

        return create_api(self.service, self.api_options)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
        inline = getattr(self, "inline", None)
        if inline is not None:
            inline.close()


def _absolute(path: str | None) -> str | None:
    """Replicas may not share the caller's working directory: pass absolute local paths."""
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _cluster_has_gpu() -> bool:
    import ray

    return bool(ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0)


def _use_gpu(s: ServeSettings) -> bool:
    return s.use_gpu if s.use_gpu is not None else _cluster_has_gpu()


def encodes_in_ingress(s: ServeSettings) -> bool:
    """Whether the ingress encodes queries itself (no `TextEncoder` deployment).

    Default: yes with an embedded store (a single ingress replica, so a separate encoder
    only adds a hop) or without a GPU (batching gains nothing on CPU, and a lone query
    would wait `batch_wait_timeout_s`); no with a Qdrant server and a GPU.
    """
    if s.encode_in_ingress is not None:
        return s.encode_in_ingress
    return not s.qdrant_url or not _use_gpu(s)


def encoder_options(s: ServeSettings) -> dict[str, Any]:
    """Replica resources, autoscaling and batching of the text encoder deployment."""
    use_gpu = _use_gpu(s)
    return {
        "autoscaling_config": {
            "min_replicas": s.min_replicas,
            "initial_replicas": max(s.min_replicas, 1),
            "max_replicas": max(s.max_replicas, s.min_replicas, 1),
            "target_ongoing_requests": encoder_target(s),
        },
        "ray_actor_options": {
            "num_cpus": s.encoder_cpus,
            "num_gpus": s.encoder_gpus if use_gpu else 0,
        },
        "max_ongoing_requests": max(s.max_ongoing_requests, 2 * s.max_batch_size),
        **load_protection(s),
    }


def encoder_target(s: ServeSettings) -> float:
    """Ongoing requests per encoder replica that autoscaling aims at: by default one full
    batch (a replica with fewer in flight would batch them anyway; scaling out earlier
    only splits batches)."""
    if s.target_ongoing_requests is not None:
        return s.target_ongoing_requests
    return float(s.max_batch_size)


def load_protection(s: ServeSettings) -> dict[str, Any]:
    """Bounded queues (shed with 503 + Retry-After beyond them) and health probes."""
    return {
        "max_queued_requests": s.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": s.retry_after_s},
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": max(30.0, 3 * s.health_check_period_s),
    }


def ingress_options(s: ServeSettings) -> dict[str, Any]:
    """One ingress replica with an embedded store (it has a single owner), else autoscaled.

    An ingress that encodes queries also holds the encoder's CPUs (and GPU).
    """
    actor: dict[str, Any] = {"num_cpus": s.ingress_cpus}
    if encodes_in_ingress(s):
        actor = {
            "num_cpus": s.ingress_cpus + s.encoder_cpus,
            "num_gpus": s.encoder_gpus if _use_gpu(s) else 0,
        }
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": s.max_ongoing_requests,
        **load_protection(s),
    }
    if s.qdrant_url and s.ingress_max_replicas > 1:
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": s.ingress_max_replicas,
            "target_ongoing_requests": max(s.target_ongoing_requests or 8.0, 8.0),
        }
    else:
        options["num_replicas"] = 1
    return options


def app_from_settings(s: ServeSettings) -> serve.Application:
    """Bind the ingress, and the encoder unless the ingress encodes (nothing is deployed yet)."""
    ingress = cast(Deployment, SearchIngress).options(**ingress_options(s))
    config = IngressConfig.from_settings(s)
    if config.checkpoint is not None:
        return ingress.bind(None, config)
    encoder = (
        cast(Deployment, TextEncoder)
        .options(**encoder_options(s))
        .bind(
            _absolute(s.checkpoint),
            cache_size=s.cache_size,
            max_batch_size=s.max_batch_size,
            batch_wait_timeout_s=s.batch_wait_timeout_s,
            s3_endpoint_url=s.s3_endpoint_url,
            models_root=s.models_root,
        )
    )
    return ingress.bind(encoder, config)


def build_app(args: dict[str, Any] | ServeSettings) -> serve.Application:
    """Typed application builder for `serve run serve.app:build_app key=value ...`.

    Args:
        args: `ServeSettings` fields (`checkpoint` is required); `ADACLIP_*` environment
            variables fill the ones not given.

    Returns:
        The bound application.

    Raises:
        OpenApiRefused: no `api_key` and no `allow_unauthenticated`, unless Serve's HTTP
            proxy already runs on a loopback host (production configs bind 0.0.0.0).
    """
    settings = args if isinstance(args, ServeSettings) else ServeSettings(**args)
    check_auth(settings, serve_http_host())
    return app_from_settings(settings)


def serve_http_host() -> str | None:
    """Where the running Serve instance's HTTP proxies listen (None: no Serve, or no Ray, in
    this process: unknown). Never starts Ray or Serve."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return None if client is None else str(client.http_config.host)
    except Exception:  # no controller, or one that does not answer: unknown
        return None
