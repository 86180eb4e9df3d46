"""Settings of the entry points: one pydantic model each, flags override ``ADACLIP_*``.

Every entry point (``adaclip index``, ``adaclip train``, ``adaclip serve`` ...) declares one
:class:`JobSettings` subclass. Its fields are the command-line flags (kebab case) and the
environment variables (``ADACLIP_`` + upper case); the README's configuration reference is
generated from these models, so a flag is documented exactly once: in its ``description``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, CliPositionalArg, SettingsConfigDict

DEFAULT_QDRANT_PATH = "./.adaclip/qdrant"


def default_collection(model_id: str) -> str:
    """The collection a model's vectors go to when ``--collection`` is not given."""
    return f"adaclip_{model_id}"


class JobSettings(BaseSettings):
    """Base of every entry point's settings."""

    model_config = SettingsConfigDict(
        env_prefix="ADACLIP_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="forbid",
        validate_default=True,
    )


S = TypeVar("S", bound=JobSettings)


def parse_settings(cls: type[S], argv: Sequence[str] | None, prog: str) -> S:
    """Parse ``argv`` (flags) over ``ADACLIP_*`` environment variables into ``cls``."""
    from adaclip.cli import parse_flags

    return parse_flags(cls, list(argv or []), prog)


class StoreSettings(JobSettings):
    """Where the Qdrant index lives (shared by the index job, the server and search)."""

    collection: str | None = Field(
        None, description="Qdrant collection (default: derived from the checkpoint's model_id)"
    )
    qdrant_path: str | None = Field(
        None, description=f"embedded Qdrant folder (default {DEFAULT_QDRANT_PATH})"
    )
    qdrant_url: str | None = Field(None, description="Qdrant server URL (wins over --qdrant-path)")
    qdrant_api_key: str | None = Field(None, description="Qdrant server API key")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, moto...); credentials: boto3 chain"
    )


class IndexSettings(StoreSettings):
    """``adaclip index SOURCE``: bulk-index videos into Qdrant with Ray Data."""

    source: CliPositionalArg[str] = Field(
        description="s3://bucket/prefix, a local folder, or a manifest: one URI per line, or "
        "a .csv / .jsonl / .parquet table with a uri column and optional etag and size"
    )
    checkpoint: str | None = Field(
        None, description="checkpoint folder (local or s3://); none: zero-shot CLIP (--arch)"
    )
    arch: str = Field("tiny", description="CLIP architecture for zero-shot indexing")
    clip_weights: str | None = Field(None, description="CLIP weights file for zero-shot indexing")
    output: str = Field(
        "./.adaclip/jobs/index", description="folder for summary.json and failures.jsonl"
    )
    ray_address: str | None = Field(None, description="Ray cluster address (default: local/auto)")
    frame_size: int = Field(224, description="decoded frame size (square, pixels)")
    num_candidates: int | None = Field(
        None, description="N candidate frames (default: checkpoint's)"
    )
    decode_actors: int = Field(2, description="max decode actors (pool grows from 1)")
    decode_cpus: float = Field(0.5, description="CPUs per decode actor")
    decode_batch_size: int = Field(4, description="videos per decode batch")
    decode_threads: int = Field(1, description="FFmpeg threads per decode actor (0: FFmpeg picks)")
    model_actors: int = Field(
        1,
        description="max model actors (one GPU each with GPUs); the pool autoscales between "
        "--model-actors-min and this",
    )
    model_actors_min: int = Field(1, description="model actors kept running (at least 1)")
    model_cpus: float = Field(0.5, description="CPUs per model actor on a CPU-only cluster")
    model_batch_size: int = Field(8, description="videos per model batch")
    upsert_batch_size: int = Field(64, description="points per Qdrant upsert")
    write_tasks: int = Field(
        4,
        description="parallel upsert tasks for a Qdrant server, each with its own client "
        "(the embedded store has one writer)",
    )
    qdrant_grpc: bool = Field(
        True, description="talk gRPC (port 6334) to a Qdrant server; REST when it does not answer"
    )
    qdrant_video_int8: bool = Field(
        True,
        description="new server collection: int8 scalar quantisation of the video vectors, "
        "kept in RAM (originals on disk, searches rescore with them)",
    )
    qdrant_frames_on_disk: bool = Field(
        True, description="new server collection: frame multivectors stored on disk (mmap)"
    )
    qdrant_frames_int8: bool = Field(
        False, description="new server collection: int8 quantisation of the frame multivectors"
    )
    qdrant_payload_on_disk: bool = Field(
        True, description="new server collection: payload stored on disk"
    )
    qdrant_shards: int = Field(1, description="new server collection: shard_number")
    qdrant_replicas: int = Field(1, description="new server collection: replication_factor")
    qdrant_write_consistency: int = Field(
        1, description="new server collection: write_consistency_factor (<= replicas)"
    )
    qdrant_bulk_load: bool = Field(
        False,
        description="server backend: defer HNSW building (indexing_threshold 0) during this "
        "run, build it at the end; for a large first load",
    )
    use_gpu: bool | None = Field(
        None,
        description="model actors on GPUs (an error where CUDA is missing); default: when the "
        "cluster has GPUs or its autoscaler can launch GPU nodes",
    )
    decode_resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources per decode actor, e.g. {"cpu_node": 0.01}',
    )
    model_resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources per model actor, e.g. {"gpu_node": 0.01}',
    )
    spool_threshold_mb: int = Field(64, description="objects larger than this are spooled to disk")
    ranged_read_mb: int = Field(
        32,
        description="objects of at least this many MB are decoded through ranged GETs (only "
        "the bytes the decoder needs) instead of downloaded whole; 0: never",
    )
    max_retries: int = Field(
        5,
        description="retries of an S3 request after throttling, 5xx or a dropped connection "
        "(botocore standard mode), and resumes of a download cut mid-body",
    )
    limit: int | None = Field(
        None,
        description="index at most this many new or changed videos (the listing, the skip "
        "check and --prune still cover the whole source)",
    )
    prune: bool = Field(
        False,
        description="delete indexed videos under SOURCE whose objects are gone (only after a "
        "complete listing; not for manifests)",
    )
    dry_run: bool = Field(
        False,
        description="print what would be indexed, skipped and pruned, with bytes; write nothing",
    )
    retry_failed: bool = Field(
        False, description="fetch again videos that failed to decode before at the same etag"
    )
    list_shards: int = Field(
        16, description="key ranges a bucket or folder listing is split into (one read task each)"
    )
    list_page_size: int = Field(1000, description="keys per listing request and listing block")
    summary_every_s: float = Field(
        30.0, description="seconds between two rewrites of summary.json while the job runs"
    )
    frames_dir: bool = Field(
        False,
        description="SOURCE is a local folder of pre-extracted frames in the paper's layout "
        "(SOURCE/<video_id>/image_00001.jpg ...); candidates are sampled from them",
    )
    frames_fps: float | None = Field(
        None, description="frame rate the frames were extracted at (for timestamps)"
    )


def settings_reference(models: Sequence[type[JobSettings]]) -> list[dict[str, Any]]:
    """Flag, variable, default and description of every field, for the README."""
    rows: list[dict[str, Any]] = []
    for model in models:
        shortcuts = model.model_config.get("cli_shortcuts") or {}
        for name, field in model.model_fields.items():
            positional = any(
                getattr(m, "__name__", "") == "_CliPositionalArg" for m in field.metadata
            )
            flag = name.replace("_", "-")
            extra = shortcuts.get(flag, [])
            flags = [flag, *([extra] if isinstance(extra, str) else extra)]
            rows.append(
                {
                    "settings": model.__name__,
                    "flag": name.upper() if positional else ", ".join(f"--{f}" for f in flags),
                    "positional": positional,
                    "env": "ADACLIP_" + name.upper(),
                    "default": None
                    if field.is_required()
                    else field.get_default(call_default_factory=True),
                    "required": field.is_required(),
                    "description": field.description or "",
                }
            )
    return rows
