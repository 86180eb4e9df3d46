"""``adaclip index SOURCE``: bulk-index a bucket or folder of videos into Qdrant with Ray Data.

    ray job submit --working-dir . -- python -m pipelines.index s3://bucket/videos/ \\
        --checkpoint s3://bucket/models/adaclip --qdrant-url http://qdrant:6333

One streaming pipeline, whose cost on the driver does not grow with the bucket:

    list (read tasks per key range) -> plan (skip check per batch) -> decode actors (CPU)
        -> model actors (GPU or CPU) -> sink -> the store's single owner (one actor)

The driver holds no listing, no indexed etags and no work list: listing blocks stream into
the plan stage, which looks each batch's URIs up by point id (UUID5 of the URI) through the
store's owner and passes on only new or changed videos (:mod:`pipelines.plan`). Point ids
make a re-run of a killed job overwrite instead of duplicating. The driver builds no model:
it reads model_id, N, K and D from the checkpoint's files, a Ray task writes the zero-shot
checkpoint when none is given, and the model actors report the GFLOPs figure.

``--prune`` marks every listed URI the store holds with this run's id and, after a complete
listing, deletes the points under the source prefix that the run did not mark.
``--dry-run`` counts what would be indexed, skipped and pruned and writes nothing.
Reports (:mod:`pipelines.report`) are written as the job runs.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.checkpoints import CheckpointInfo, describe_checkpoint, write_zero_shot_checkpoint
from pipelines.embed import DecodeSpec, DecodeVideos, EmbedVideos
from pipelines.gpu import cluster_can_have_gpus
from pipelines.listing import SourceSpec, listing_dataset, resolve_source
from pipelines.object_fetch import is_s3_uri
from pipelines.plan import PlanSpec, plan_batch
from pipelines.report import FailureReporter, JobReport
from pipelines.settings import (
    DEFAULT_QDRANT_PATH,
    IndexSettings,
    default_collection,
    parse_settings,
)
from pipelines.sources import ObjectFetcher, SourceError
from pipelines.store import ModelMismatchError
from pipelines.store_sink import (
    WRITE_TASK_CPUS,
    WRITE_TASKS,
    ProgressReporter,
    StoreTarget,
    StoreWriter,
    VideoStoreDatasink,
)

log = logging.getLogger("adaclip.index")

PLAN_TASK_CPUS = 0.1  # a lookup per batch: the store's owner does the work
EXIT_SOURCE_ERROR = 2  # the source or the checkpoint cannot be read: nothing was done
EXIT_FAILED = 1


@dataclass
class IndexSummary:
    """What ``summary.json`` holds (also refreshed while the job runs, ``finished`` False)."""

    source: str
    collection: str
    model_id: str
    run_id: str = ""
    dry_run: bool = False
    finished: bool = False
    error: str | None = None
    listed: int = 0
    listed_bytes: int = 0
    skipped: int = 0  # already indexed at the same etag
    skipped_bytes: int = 0
    skipped_failed: int = 0  # failed for good before at the same etag; not fetched again
    skipped_failed_bytes: int = 0
    to_index: int = 0  # new or changed (the dry run's "would index")
    to_index_bytes: int = 0
    deferred: int = 0  # new or changed beyond --limit
    deferred_bytes: int = 0
    indexed: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    pruned: int = 0  # deleted by --prune (the dry run: would be deleted with --prune)
    pruned_bytes: int = 0
    gflops_per_video: float = 0.0  # policy on N + CLIP on K + aggregation, as counted
    gflops_per_video_no_policy: float = 0.0  # the paper's baseline: CLIP on all N frames
    elapsed_s: float = 0.0
    videos_per_s: float = 0.0

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> IndexSummary:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})


# ---- the model ----------------------------------------------------------------------------


def resolve_model(
    settings: IndexSettings, driver_node: str, scratch: str | None = None
) -> CheckpointInfo:
    """The checkpoint the model actors load: ``--checkpoint``, or a zero-shot one that a Ray
    task writes (under ``--output``, or under ``scratch`` for a dry run); model_id, N, K, D
    read from its files."""
    uri = settings.checkpoint
    if uri is None:
        uri = zero_shot_checkpoint(settings, driver_node, scratch)
    info = describe_checkpoint(uri, settings.s3_endpoint_url)
    if settings.num_candidates:
        info = CheckpointInfo(
            info.uri, info.model_id, settings.num_candidates, info.top_k, info.embed_dim
        )
    return info


def zero_shot_checkpoint(settings: IndexSettings, driver_node: str, scratch: str | None) -> str:
    """Write (once) the zero-shot checkpoint in a Ray task on the driver's node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    base = scratch or settings.output
    if is_s3_uri(base):
        dest = base.rstrip("/") + "/zero-shot-checkpoint"
    else:
        dest = str((Path(base) / "zero-shot-checkpoint").resolve())
    task: Any = ray.remote(write_zero_shot_checkpoint).options(
        num_cpus=0.1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False),
    )
    return str(
        ray.get(task.remote(dest, settings.arch, settings.clip_weights, settings.s3_endpoint_url))
    )


# ---- the pipeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobActors:
    """The job's three actors and its identity."""

    owner: Any  # StoreWriter: the store's single owner
    report: Any  # JobReport
    run_id: str
    model: CheckpointInfo


def build_dataset(
    spec: SourceSpec, settings: IndexSettings, job: JobActors, driver_node: str
) -> Any:
    """The Ray Data pipeline: listing -> plan -> decode actors (CPU) -> model actors."""
    from ray.data import ActorPoolStrategy

    dry_run = settings.dry_run
    failures = FailureReporter(
        job.report,
        owner=None if dry_run else job.owner,
        model_id=job.model.model_id,
        run_id=job.run_id if settings.prune else "",
    )
    plan = PlanSpec(
        run_id=job.run_id,
        prune=settings.prune,
        retry_failed=settings.retry_failed,
        dry_run=dry_run,
        limited=settings.limit is not None,
    )
    ds: Any = listing_dataset(spec, on_driver_node=True, failures=failures)
    ds = ds.map_batches(
        plan_batch,
        fn_kwargs={"owner": job.owner, "report": job.report, "spec": plan},
        batch_size=settings.list_page_size,
        batch_format="numpy",
        num_cpus=PLAN_TASK_CPUS,
    )
    if dry_run:
        return ds
    # small blocks, so that every decode actor gets work while the listing goes on
    ds = ds.repartition(target_num_rows_per_block=settings.decode_batch_size)
    _set_task_cpus(ds, PLAN_TASK_CPUS)
    use_gpu = settings.use_gpu
    if use_gpu is None:  # GPUs now, or GPU nodes the autoscaler can launch (from zero)
        use_gpu = cluster_can_have_gpus()
    if not 1 <= settings.model_actors_min <= settings.model_actors:
        raise ValueError("need 1 <= --model-actors-min <= --model-actors")
    fetcher = ObjectFetcher(
        s3_endpoint_url=settings.s3_endpoint_url,
        max_retries=settings.max_retries,
        spool_threshold_bytes=settings.spool_threshold_mb << 20,
        ranged_min_bytes=(settings.ranged_read_mb << 20) if settings.ranged_read_mb > 0 else None,
    )
    decode = DecodeSpec(
        job.model.num_candidates,
        settings.frame_size,
        settings.frames_dir,
        settings.frames_fps,
        settings.decode_threads,
    )
    ds = ds.map_batches(
        DecodeVideos,
        fn_constructor_args=(fetcher, decode, failures),
        batch_size=settings.decode_batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=settings.decode_actors),
        num_cpus=settings.decode_cpus,
        resources=settings.decode_resources or None,
    )
    return ds.map_batches(
        EmbedVideos,
        fn_constructor_args=(
            job.model.uri,
            settings.s3_endpoint_url,
            use_gpu,
            settings.frame_size,
            job.report,
            failures,
        ),
        batch_size=settings.model_batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(
            min_size=settings.model_actors_min, max_size=settings.model_actors
        ),
        num_gpus=1 if use_gpu else 0,
        num_cpus=settings.model_cpus if not use_gpu else 1,
        resources=settings.model_resources or None,
    )


def _set_task_cpus(ds: Any, num_cpus: float) -> None:
    """CPUs of the last operator's tasks. Ray 2.60's ``repartition`` takes no remote args
    and its tasks ask for a whole CPU: on nodes whose CPUs the decode and model actors hold
    in halves (a 1-CPU node, a 2-CPU machine) such a task is never scheduled."""
    op = ds._logical_plan.dag
    args = getattr(op, "ray_remote_args", None)
    if isinstance(args, dict):
        args["num_cpus"] = num_cpus


def store_target(settings: IndexSettings, model: CheckpointInfo) -> StoreTarget:
    return StoreTarget(
        qdrant_path=None
        if settings.qdrant_url
        else str(Path(settings.qdrant_path or DEFAULT_QDRANT_PATH).resolve()),
        qdrant_url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        collection=settings.collection or default_collection(model.model_id),
        dim=model.embed_dim,
        num_frames=model.top_k,
        model_id=model.model_id,
        create=not settings.dry_run,
        prefer_grpc=settings.qdrant_grpc,
        profile=collection_profile(settings) if settings.qdrant_url else None,
        shared=True,
    )


def collection_profile(settings: IndexSettings) -> Any:
    """The server collection's layout from the ``--qdrant-*`` flags (a CollectionProfile)."""
    from pipelines.store.profile import CollectionProfile

    return CollectionProfile(
        video_int8=settings.qdrant_video_int8,
        frames_on_disk=settings.qdrant_frames_on_disk,
        frames_int8=settings.qdrant_frames_int8,
        payload_on_disk=settings.qdrant_payload_on_disk,
        shards=settings.qdrant_shards,
        replicas=settings.qdrant_replicas,
        write_consistency=settings.qdrant_write_consistency,
        bulk_load=settings.qdrant_bulk_load,
    )


def run_index(settings: IndexSettings) -> IndexSummary:
    """Run the whole job; keep ``summary.json`` and ``failures.jsonl`` under ``output``.

    Raises:
        SourceError: the source cannot be listed (before anything is written), or
            ``--prune`` with a source that has no prefix.
        ModelMismatchError: the collection holds another model's vectors.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    start = time.monotonic()
    spec = resolve_source(
        settings.source,
        frames_dir=settings.frames_dir,
        s3_endpoint_url=settings.s3_endpoint_url,
        page_size=settings.list_page_size,
        shards=settings.list_shards,
    )
    if settings.prune and spec.prune_prefix is None:
        raise SourceError(f"--prune needs a bucket prefix or a folder, not {settings.source}")
    if settings.limit is not None and settings.limit < 0:
        raise ValueError("--limit must be >= 0")
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    driver_node = ray.get_runtime_context().get_node_id()
    here = NodeAffinitySchedulingStrategy(driver_node, soft=False)
    with tempfile.TemporaryDirectory(prefix="adaclip-dry-run-") as scratch:
        model = resolve_model(settings, driver_node, scratch if settings.dry_run else None)
        target = store_target(settings, model)
        run_id = uuid.uuid4().hex
        header = {
            "source": settings.source,
            "collection": target.collection,
            "model_id": model.model_id,
            "run_id": run_id,
            "dry_run": settings.dry_run,
        }
        report: Any = (
            ray.remote(JobReport)
            .options(num_cpus=0, scheduling_strategy=here)
            .remote(
                settings.output,
                header,
                settings.limit,
                not settings.dry_run,
                settings.s3_endpoint_url,
            )
        )
        owner: Any = (
            ray.remote(StoreWriter).options(num_cpus=0, scheduling_strategy=here).remote(target)
        )
        job = JobActors(owner, report, run_id, model)
        try:
            return _run(spec, settings, job, driver_node, start, target)
        finally:
            for actor in (owner, report):
                ray.kill(actor)


def _run(
    spec: SourceSpec,
    settings: IndexSettings,
    job: JobActors,
    driver_node: str,
    start: float,
    target: StoreTarget | None = None,
) -> IndexSummary:
    import ray

    ray.get(job.owner.progress.remote())  # the store opened (or its error) before any work
    extra: dict[str, Any] = {"finished": False, "indexed": 0}

    def flush() -> dict[str, Any]:
        extra["elapsed_s"] = round(time.monotonic() - start, 3)
        return dict(ray.get(job.report.flush.remote(extra)))

    progress = ProgressReporter(
        job.owner, job.report, flush=flush, flush_every_s=settings.summary_every_s
    )
    server = target is not None and target.qdrant_url is not None
    sink = VideoStoreDatasink(
        job.owner,
        job.model.model_id,
        settings.upsert_batch_size,
        run_id=job.run_id if settings.prune else "",
        failures=FailureReporter(job.report),
        direct=target if server else None,  # a server: each write task has its own client
    )
    write_tasks = max(1, settings.write_tasks) if server else WRITE_TASKS
    progress.start()
    written = False
    try:
        ds = build_dataset(spec, settings, job, driver_node)
        if settings.dry_run:
            for _ in ds.iter_internal_ref_bundles():
                pass
        else:
            ds.write_datasink(
                sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=write_tasks
            )
        written = not settings.dry_run
        extra.update(prune_or_count(spec, settings, job))
    except BaseException as err:
        progress.stop()
        extra.update(indexed=sink.written, error=f"{type(err).__name__}: {root_error(err)}")
        _close_owner(job.owner, optimize=False)
        _flush_quietly(flush)
        raise
    progress.stop()
    extra.update(indexed=sink.written, finished=True)
    _close_owner(job.owner, optimize=written)
    elapsed = time.monotonic() - start
    extra["videos_per_s"] = round(sink.written / elapsed, 3) if elapsed > 0 else 0.0
    summary = IndexSummary.from_dict(flush())
    ray.get(job.report.close.remote())
    return summary


def prune_or_count(spec: SourceSpec, settings: IndexSettings, job: JobActors) -> dict[str, int]:
    """After a complete listing: sweep (``--prune``), or the dry run's would-prune counts."""
    import ray

    prefix = spec.prune_prefix
    if prefix is None or not (settings.prune or settings.dry_run):
        return {}
    if settings.dry_run:
        stored, stored_bytes = ray.get(job.owner.prefix_totals.remote(prefix))
        seen = ray.get(job.report.snapshot.remote())
        return {
            "pruned": max(stored - int(seen["known"]), 0),
            "pruned_bytes": max(stored_bytes - int(seen["known_bytes"]), 0),
        }
    pruned, pruned_bytes = ray.get(job.owner.sweep.remote(prefix, job.run_id))
    log.info("pruned %d videos (%d bytes) no longer under %s", pruned, pruned_bytes, prefix)
    return {"pruned": pruned, "pruned_bytes": pruned_bytes}


def _close_owner(owner: Any, optimize: bool) -> None:
    import ray

    try:
        ray.get(owner.close.remote(optimize=optimize))
    except Exception as err:
        ray.kill(owner)  # its process exits and lets go of the store
        if optimize:
            raise
        log.debug("closing the store owner failed: %s", err)


def _flush_quietly(flush: Any) -> None:
    try:
        flush()
    except Exception as err:  # the report actor died with the job: the job's error wins
        log.warning("could not write summary.json: %s", err)


def root_error(err: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers (task errors, Ray Data's UDF errors)."""
    seen: set[int] = set()
    current: BaseException | None = err
    best = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # RayTaskError: the exception raised
        if isinstance(inner, BaseException):
            current = inner
            continue
        if isinstance(current, SourceError | ModelMismatchError):
            return current
        best = current
        current = current.__cause__
    return best


def format_dry_run(summary: IndexSummary) -> str:
    """The dry run's answer: counts and bytes of what would happen."""

    def line(what: str, n: int, size: int) -> str:
        return f"{what:<22}{n:>10} videos {size / 1e6:>12.1f} MB"

    lines = [
        line("listed", summary.listed, summary.listed_bytes),
        line("would index", summary.to_index, summary.to_index_bytes),
        line("would skip (indexed)", summary.skipped, summary.skipped_bytes),
        line("would skip (failed)", summary.skipped_failed, summary.skipped_failed_bytes),
        line("beyond --limit", summary.deferred, summary.deferred_bytes),
        line("would prune", summary.pruned, summary.pruned_bytes),
    ]
    return "\n".join([f"dry run of {summary.source} into {summary.collection}:", *lines])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip index`` and ``python -m pipelines.index``.

    Exit codes: 0 done (failed videos are in failures.jsonl), 2 the source or checkpoint
    cannot be read or the collection belongs to another model (nothing indexed), 1 the job
    failed part way (summary.json says how far it got).
    """
    from adaclip.checkpoint import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = parse_settings(IndexSettings, argv, "adaclip index")
    try:
        summary = run_index(settings)
    except (SourceError, ModelMismatchError, CheckpointError, ValueError) as err:
        print(f"adaclip index: {root_error(err)}", file=sys.stderr)
        return EXIT_SOURCE_ERROR
    except Exception as err:
        cause = root_error(err)
        print(f"adaclip index: failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return EXIT_SOURCE_ERROR if isinstance(cause, SourceError) else EXIT_FAILED
    if settings.dry_run:
        print(format_dry_run(summary))
    else:
        print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
