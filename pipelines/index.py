"""``adaclip index SOURCE``: bulk-index a bucket or folder of videos into Qdrant with Ray Data.

    ray job submit --working-dir . -- python -m pipelines.index s3://bucket/videos/ \\
        --checkpoint s3://bucket/models/adaclip --qdrant-url http://qdrant:6333

Incremental and crash-safe: videos whose URI and etag are already in the collection for
this model are skipped before download; point ids are UUID5 of the URI, so a killed job
that is run again overwrites instead of duplicating. The driver opens the store only to
bind the collection (refusing another model's) and to plan; it closes it before the
pipeline runs. The rows then stream into a Ray Data ``Datasink`` whose write tasks hand
them to one store-writer actor, the store's single owner until the end of the write
(:mod:`pipelines.store_sink`), while a driver thread reports progress.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.embed import DecodeSpec, DecodeVideos, EmbedVideos, FailureLog
from pipelines.settings import (
    DEFAULT_QDRANT_PATH,
    IndexSettings,
    default_collection,
    parse_settings,
)
from pipelines.sources import (
    ObjectFetcher,
    VideoObject,
    download_folder,
    list_frame_folders,
    list_videos,
)

if TYPE_CHECKING:
    from pipelines.store_sink import StoreTarget

log = logging.getLogger("adaclip.index")


@dataclass
class ResolvedModel:
    """The checkpoint the actors load, with what the driver needs to know about it."""

    uri: str  # what the model actors load (local folder or s3://)
    model_id: str
    num_candidates: int
    top_k: int
    embed_dim: int
    gflops: dict[str, Any]


@dataclass
class IndexSummary:
    """What ``summary.json`` holds."""

    source: str
    collection: str
    model_id: str
    listed: int = 0
    skipped: int = 0
    indexed: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    gflops_per_video: float = 0.0  # policy on N + CLIP on K + aggregation, as counted
    gflops_per_video_no_policy: float = 0.0  # the paper's baseline: CLIP on all N frames
    elapsed_s: float = 0.0
    videos_per_s: float = 0.0


def resolve_model(settings: IndexSettings) -> ResolvedModel:
    """Find the checkpoint (or write a zero-shot one) and read its config and model_id."""
    from adaclip.checkpoint import model_id_of, read_checkpoint_config

    uri = settings.checkpoint
    if uri is None:
        uri = str(write_zero_shot_checkpoint(settings))
    local = uri
    if uri.startswith("s3://"):
        local = str(
            download_folder(
                uri,
                tempfile.mkdtemp(prefix="adaclip-ckpt-"),
                s3_endpoint_url=settings.s3_endpoint_url,
            )
        )
    config, _ = read_checkpoint_config(local)
    assert config.clip.model_cfg is not None
    num_candidates = settings.num_candidates or config.num_candidates
    return ResolvedModel(
        uri=uri,
        model_id=model_id_of(local),
        num_candidates=num_candidates,
        top_k=config.top_k,
        embed_dim=int(config.clip.model_cfg["embed_dim"]),
        gflops=count_gflops(local, settings.frame_size),
    )


def count_gflops(checkpoint_dir: str, frame_size: int) -> dict[str, Any]:
    """GFLOPs one video costs with this checkpoint, counted on the real model."""
    from adaclip.checkpoint import load_checkpoint
    from adaclip.flops import video_gflops

    return video_gflops(load_checkpoint(checkpoint_dir), frame_size)


def write_zero_shot_checkpoint(settings: IndexSettings) -> Path:
    """No checkpoint given: CLIP weights only, uniform K frames, mean pooling."""
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP

    out = Path(settings.output) / "zero-shot-checkpoint"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)  # deterministic when no CLIP weights are given (tiny smoke runs)
    config = build_init_config(settings.arch, clip_weights=settings.clip_weights, zero_shot=True)
    save_checkpoint(AdaCLIP(config), out, kind="zero-shot")
    return out


def plan(listed: Sequence[VideoObject], indexed: dict[str, str]) -> list[VideoObject]:
    """The videos to (re)index: new URIs, or URIs whose etag changed."""
    return [obj for obj in listed if indexed.get(obj.uri) != obj.etag]


def build_dataset(
    todo: Sequence[VideoObject], settings: IndexSettings, model: ResolvedModel, failure_log: Any
) -> Any:
    """The Ray Data pipeline: listing -> decode actors (CPU) -> model actors (GPU or CPU)."""
    import ray
    from ray.data import ActorPoolStrategy

    use_gpu = settings.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    fetcher = ObjectFetcher(
        s3_endpoint_url=settings.s3_endpoint_url,
        max_retries=settings.max_retries,
        spool_threshold_bytes=settings.spool_threshold_mb << 20,
    )
    spec = DecodeSpec(
        model.num_candidates,
        settings.frame_size,
        settings.frames_dir,
        settings.frames_fps,
        settings.decode_threads,
    )
    rows = [asdict(obj) for obj in todo]
    ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 256)))
    ds = ds.map_batches(
        DecodeVideos,
        fn_constructor_args=(fetcher, spec, failure_log),
        batch_size=settings.decode_batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=settings.decode_actors),
        num_cpus=settings.decode_cpus,
        resources=settings.decode_resources or None,
    )
    return ds.map_batches(
        EmbedVideos,
        fn_constructor_args=(model.uri, settings.s3_endpoint_url, use_gpu),
        batch_size=settings.model_batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=settings.model_actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=settings.model_cpus if not use_gpu else 1,
        resources=settings.model_resources or None,
    )


def list_source(settings: IndexSettings) -> list[VideoObject]:
    """The videos SOURCE holds: objects, files, manifest entries or frame folders."""
    if settings.frames_dir:
        return list(list_frame_folders(settings.source, limit=settings.limit))
    return list(
        list_videos(settings.source, s3_endpoint_url=settings.s3_endpoint_url, limit=settings.limit)
    )


def run_index(settings: IndexSettings) -> IndexSummary:
    """Run the whole job; write ``summary.json`` and ``failures.jsonl`` under ``output``."""
    from pipelines.store_sink import StoreTarget, open_when_free

    start = time.monotonic()
    out_dir = Path(settings.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(settings)
    collection = settings.collection or default_collection(model.model_id)
    summary = IndexSummary(
        source=settings.source,
        collection=collection,
        model_id=model.model_id,
        gflops_per_video=round(float(model.gflops["total"]), 3),
        gflops_per_video_no_policy=round(float(model.gflops["no_policy_clip_n"]), 3),
    )
    target = StoreTarget(
        qdrant_path=None
        if settings.qdrant_url
        else str(Path(settings.qdrant_path or DEFAULT_QDRANT_PATH).resolve()),
        qdrant_url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        collection=collection,
        dim=model.embed_dim,
        num_frames=model.top_k,
        model_id=model.model_id,
    )
    store = open_when_free(target.open)  # refuses a collection of another model
    try:
        listed = list_source(settings)
        todo = plan(listed, store.indexed_etags())
        if not todo:
            store.optimize()
    finally:
        store.close()  # the writer actor owns the store from here on
    summary.listed, summary.skipped = len(listed), len(listed) - len(todo)
    log.info(
        "listed %d videos, %d already indexed, %d to index",
        len(listed),
        summary.skipped,
        len(todo),
    )
    failures: list[dict[str, str]] = []
    if todo:
        summary.indexed, failures = write_index(todo, settings, model, target, summary.skipped)
    summary.failed = len(failures)
    summary.failed_by_reason = dict(Counter(row["reason"] for row in failures))
    summary.elapsed_s = round(time.monotonic() - start, 3)
    summary.videos_per_s = (
        round(summary.indexed / summary.elapsed_s, 3) if summary.elapsed_s else 0.0
    )
    write_reports(out_dir, summary, failures)
    return summary


def write_index(
    todo: Sequence[VideoObject],
    settings: IndexSettings,
    model: ResolvedModel,
    target: StoreTarget,
    skipped: int,
) -> tuple[int, list[dict[str, str]]]:
    """Stream ``todo`` through the pipeline into the store; (videos upserted, failure rows)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipelines.store_sink import (
        WRITE_TASK_CPUS,
        WRITE_TASKS,
        ProgressReporter,
        StoreWriter,
        VideoStoreDatasink,
    )

    if not ray.is_initialized():
        ray.init(address=settings.ray_address, log_to_driver=False)
    failure_log: Any = ray.remote(FailureLog).options(num_cpus=0).remote()
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    writer: Any = (
        ray.remote(StoreWriter).options(num_cpus=0, scheduling_strategy=here).remote(target)
    )
    ray.get(writer.progress.remote())  # the store opened (or the error) before any work
    sink = VideoStoreDatasink(writer, model.model_id, settings.upsert_batch_size)
    progress = ProgressReporter(writer, failure_log, total=len(todo), skipped=skipped)
    progress.start()
    written = False
    try:
        build_dataset(todo, settings, model, failure_log).write_datasink(
            sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=WRITE_TASKS
        )
        written = True
    finally:
        progress.stop()
        try:
            ray.get(writer.close.remote(optimize=written))
        except Exception:
            ray.kill(writer)  # its process exits and lets go of the store
            if written:
                raise
    return sink.written, ray.get(failure_log.drain.remote())


def write_reports(out_dir: Path, summary: IndexSummary, failures: list[dict[str, str]]) -> None:
    """``summary.json`` and ``failures.jsonl`` (one row per failed video) for this run."""
    with open(out_dir / "failures.jsonl", "w") as fh:
        for row in failures:
            fh.write(json.dumps(row) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip index`` and ``python -m pipelines.index``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = parse_settings(IndexSettings, argv, "adaclip index")
    summary = run_index(settings)
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
