"""Settings of the search server (`adaclip serve`, `serve run serve.app:build_app ...`) and
of the search client (`adaclip search`). Flags override `ADACLIP_*` environment variables.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import CliPositionalArg, NoDecode

from pipelines.settings import JobSettings, StoreSettings


def _split_csv(value: object) -> object:
    """Accept `a,b` (command line, env, `serve run k=v`) as well as a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServeSettings(StoreSettings):
    """`adaclip serve`: the HTTP search API (Ray Serve) over a Qdrant index."""

    checkpoint: str = Field(description="checkpoint folder whose text tower encodes queries")
    host: str = Field("127.0.0.1", description="HTTP host of the Serve proxy")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy")
    app_name: str = Field("adaclip", description="Serve application name")
    route_prefix: str = Field("/", description="URL prefix of the application")
    ray_address: str | None = Field(None, description="Ray cluster address (default: local/auto)")
    api_key: str | None = Field(
        None,
        description=(
            "require this key in the X-API-Key header (none: refused unless"
            " --allow-unauthenticated, or `adaclip serve` on a loopback host)"
        ),
    )
    allow_unauthenticated: bool = Field(
        False,
        description=(
            "serve an open API without --api-key, deliberately (not needed for `adaclip"
            " serve` bound to a loopback host: only this machine can reach it)"
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS, comma separated ('*': any)"
    )
    media_root: str | None = Field(
        None, description="local folder whose videos /media serves (none: no local media)"
    )
    presign_expires_s: int = Field(3600, ge=1, description="lifetime of presigned s3 media URLs")
    min_replicas: int = Field(1, ge=0, description="text encoder: fewest replicas")
    max_replicas: int = Field(2, ge=1, description="text encoder: most replicas")
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description=(
            "text encoder: ongoing requests per replica autoscaling aims at (default:"
            " --max-batch-size, so replicas scale out when their batches are full)"
        ),
    )
    encoder_cpus: float = Field(0.5, gt=0, description="CPUs per text encoder replica")
    encoder_gpus: float = Field(
        0.25,
        gt=0,
        le=1,
        description=(
            "GPUs per text encoder replica when it has one: a fraction shares a GPU (the"
            " replica holds the text tower only)"
        ),
    )
    ingress_cpus: float = Field(0.25, gt=0, description="CPUs per HTTP ingress replica")
    ingress_max_replicas: int = Field(
        2, ge=1, description="most ingress replicas (1 with an embedded store: it has one owner)"
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica accepts at once (more wait in the proxy)"
    )
    max_queued_requests: int = Field(
        32,
        ge=1,
        description=(
            "requests each caller (proxy, ingress) queues per deployment beyond"
            " max_ongoing_requests; more are shed with 503 + Retry-After"
        ),
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a shed request, seconds")
    request_timeout_s: float = Field(
        30.0, gt=0, description="end-to-end HTTP request timeout of the Serve proxy, seconds"
    )
    health_check_period_s: float = Field(
        10.0, gt=0, description="how often Serve probes each replica's encoder and store"
    )
    use_gpu: bool | None = Field(
        None, description="give each encoder replica a GPU (default: when the cluster has one)"
    )
    encode_in_ingress: bool | None = Field(
        None,
        description=(
            "encode queries in the ingress process, without the batched encoder deployment"
            " and its extra hop (default: with an embedded store or without a GPU)"
        ),
    )
    direct_ingress: bool = Field(
        False,
        description=(
            "experimental: the ingress replica answers HTTP on its own port, without the"
            " Serve proxy hop (Ray's RAY_SERVE_ENABLE_DIRECT_INGRESS; set for the local"
            " cluster `adaclip serve` starts, a remote one must be started with it)"
        ),
    )
    max_batch_size: int = Field(16, ge=1, description="queries per text encoder batch (1: off)")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="how long a batch waits to fill up, seconds"
    )
    cache_size: int = Field(
        1024, ge=0, description="query embeddings kept per encoder replica (LRU; 0: off)"
    )
    rerank_candidates: int = Field(
        100, ge=1, le=1000, description="candidates re-ranked by Q-Score when rerank is on"
    )
    max_body_bytes: int = Field(65536, ge=1024, description="largest accepted request body")
    models_root: str | None = Field(
        None,
        description=(
            "folder or s3:// prefix of checkpoints published by `adaclip publish`"
            " (<root>/<model_id>/): when the collection alias switches to a collection of"
            " another model, that model is loaded from here (none: such a switch is refused)"
        ),
    )
    alias_check_s: float = Field(
        2.0, ge=0, description="how often the collection alias is resolved again, seconds"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("route_prefix must start with '/'")
        return value


LOOPBACK_HOSTS = frozenset({"localhost", "ip6-localhost"})


class OpenApiRefused(ValueError):
    """No API key and no deliberate `allow_unauthenticated`: the server would be open."""


def is_loopback(host: str | None) -> bool:
    """Whether `host` only accepts connections from this machine (127.0.0.0/8, ::1)."""
    import ipaddress

    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth(settings: ServeSettings, http_host: str | None) -> None:
    """Refuse an open API unless it is deliberate.

    An API key, or `allow_unauthenticated`, is required; the one exception is an HTTP
    proxy bound to a loopback address (`http_host`, when the caller knows where Serve
    listens), which nothing off this machine can reach.

    Raises:
        OpenApiRefused: neither, with what to pass instead.
    """
    if settings.api_key or settings.allow_unauthenticated or is_loopback(http_host):
        return
    where = f"on {http_host}" if http_host else "where Serve's HTTP proxy listens"
    raise OpenApiRefused(
        f"refusing to serve an open search API {where}: set an API key (--api-key KEY, "
        f"ADACLIP_API_KEY, or api_key in the Serve config), or pass "
        f"--allow-unauthenticated (allow_unauthenticated: true) to serve without one on "
        f"purpose; `adaclip serve` on a loopback --host (127.0.0.1, the default) needs neither"
    )


class SearchSettings(JobSettings):
    """`adaclip search TEXT`: query a running server, or the index directly with --local."""

    query: CliPositionalArg[str | None] = Field(
        None, description="text to search for (or --image FILE, or --like VIDEO_ID)"
    )
    image: str | None = Field(
        None, description="search by example: videos that look like this image file"
    )
    like: str | None = Field(
        None, description="more like this: videos near this indexed video_id (never itself)"
    )
    url: str = Field("http://127.0.0.1:8000", description="base URL of the running server")
    api_key: str | None = Field(None, description="the server's API key (X-API-Key)")
    top_k: int = Field(10, ge=1, le=100, description="number of results")
    uri_prefix: str | None = Field(None, description="only videos whose URI starts with this")
    rerank: Literal["auto", "on", "off"] = Field(
        "auto", description="re-rank by Q-Score and find moments (auto: the server's default)"
    )
    json_output: bool = Field(False, description="print the raw JSON response")
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout, seconds")
    local: bool = Field(False, description="search the index in process instead of a server")
    checkpoint: str | None = Field(None, description="checkpoint folder (with --local)")
    collection: str | None = Field(
        None, description="Qdrant collection (with --local; default: from the checkpoint)"
    )
    qdrant_path: str | None = Field(None, description="embedded Qdrant folder (with --local)")
    qdrant_url: str | None = Field(None, description="Qdrant server URL (with --local)")
    qdrant_api_key: str | None = Field(None, description="Qdrant server API key (with --local)")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (with --local)")

    @model_validator(mode="after")
    def _one_query(self) -> SearchSettings:
        given = [name for name in ("query", "image", "like") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of TEXT, --image FILE and --like VIDEO_ID")
        return self
