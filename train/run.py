"""``adaclip train`` / ``python -m train.run``: the Ray Train job.

The driver decodes the train and validation splits once with Ray Data (materialised: the
frame cache of every later epoch; persisted in the frame store, ``--frame-store``, so a
resumed or resubmitted run decodes only what changed), starts a ``TorchTrainer`` (fixed or elastic worker
count, failure retries, checkpoints under ``--storage-path/--name``), then exports the
epoch with the best VALIDATION text-to-video R@1 as a plain checkpoint folder
(``<output>/best``) that ``adaclip index`` and the server load, and writes one JSON report
per validation epoch. Re-running with the same storage path and name resumes the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaclip.config import AdaClipConfig
from train.data import DecodedSplit, decode_options, decode_split
from train.evaluate import PRIMARY_METRIC, format_metrics, write_report
from train.frame_store import FrameStore, filesystem_of
from train.loop import HISTORY_FILE, LoopConfig, train_loop_per_worker
from train.progress import EpochProgress
from train.settings import TrainSettings, parse_with_config

logger = logging.getLogger(__name__)
PROG = "adaclip train"


@dataclass
class TrainRunResult:
    """What a finished run left behind."""

    run_dir: str  # Ray Train run folder (storage path / name)
    best_checkpoint: str  # exported best-by-validation checkpoint folder
    best_epoch: int
    best_val: dict[str, Any]
    history: list[dict[str, Any]]
    failures: list[dict[str, str]] = field(default_factory=list)
    decode_seconds: dict[str, float] = field(default_factory=dict)
    decoded_videos: dict[str, int | None] = field(default_factory=dict)  # not from the store
    num_workers: int | tuple[int, int] = 1
    num_nodes: int = 1  # distinct Ray nodes the workers of the last epoch ran on


# ------------------------------------------------------------------ configuration
def build_model_config(settings: TrainSettings) -> AdaClipConfig:
    """The model configuration from flags (or the ``--init-checkpoint``'s own config)."""
    from adaclip.commands import build_init_config

    if settings.init_checkpoint:
        from adaclip.checkpoint import read_checkpoint_config

        return read_checkpoint_config(settings.init_checkpoint)[0]
    weights = settings.clip_weights
    is_file = weights is not None and Path(weights).is_file()
    all_frames = settings.frame_selection == "all"
    config = build_init_config(
        settings.arch,
        clip_weights=weights if is_file else None,
        pretrained=None if is_file else weights,
        num_candidates=settings.num_candidates,
        top_k=settings.num_candidates if all_frames else settings.top_k,
        frame_agg=settings.frame_agg,
        policy_weights=settings.policy_weights,
        quick_gelu=settings.quick_gelu,
    )
    config.policy.enabled = settings.frame_selection == "policy"
    config.policy.freeze_backbone = settings.freeze_cnn
    if settings.policy_resolution is not None:
        config.policy.resolution = settings.policy_resolution
    config.max_text_len = settings.max_text_len
    config.validate()
    return config


def scaling_config(settings: TrainSettings) -> Any:
    """Fixed ``N`` or elastic ``(MIN, MAX)`` workers, one GPU each with ``--use-gpu``."""
    from ray.train.v2.api.config import ScalingConfig  # = ray.train.ScalingConfig (Train V2)

    resources: dict[str, float] = {"CPU": settings.cpus_per_worker}
    if settings.use_gpu:
        resources["GPU"] = 1.0
    return ScalingConfig(
        num_workers=settings.workers,
        use_gpu=settings.use_gpu,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=10.0,
    )


def storage_filesystem(settings: TrainSettings) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of ``--storage-path``: the run folders' home.

    Ray Train is handed the same filesystem (``s3://`` through ``--s3-endpoint-url``), so
    the resume checks and the checkpoints see the same objects.
    """
    return filesystem_of(_storage_uri(settings.storage_path), settings.s3_endpoint_url)


def run_config(settings: TrainSettings) -> Any:
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig

    remote = "://" in settings.storage_path
    fs, path = storage_filesystem(settings) if remote else (None, "")
    return RunConfig(
        name=settings.run_name,
        storage_path=path if remote else _storage_uri(settings.storage_path),
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=settings.keep_checkpoints or None,
            checkpoint_score_attribute=f"val_{PRIMARY_METRIC}",
            checkpoint_score_order="max",
        ),
    )


def _storage_uri(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


RUN_CONFIG_FILE = "adaclip_run.json"  # the experiment a run folder holds (resume check)
# LoopConfig fields that may change when a run is resumed: more epochs, another cluster.
RESUMABLE_FIELDS = frozenset(
    {"num_epochs", "num_train_videos", "eval_batch_size", "amp", "fail_at_epoch", "fail_marker"}
)


def experiment_config(loop: LoopConfig, settings: TrainSettings) -> dict[str, Any]:
    """What defines the experiment of a run: resuming it with anything else is refused."""
    fields = {k: v for k, v in loop.to_dict().items() if k not in RESUMABLE_FIELDS}
    data = {k: getattr(settings, k) for k in ("dataset", "train_split", "val_split")}
    return json.loads(json.dumps({**fields, **data, "frame_size": settings.frame_size}))


def check_resume_config(settings: TrainSettings, config: dict[str, Any]) -> None:
    """Record the experiment in a new run folder; refuse to resume one with another config.

    Raises:
        ValueError: the run folder holds a run whose experiment config differs.
    """
    import pyarrow.fs

    fs, base = storage_filesystem(settings)
    run_dir = f"{base}/{settings.run_name}"
    path = f"{run_dir}/{RUN_CONFIG_FILE}"
    if _has_snapshot(fs, run_dir) and fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as stream:
            saved = json.loads(stream.read().decode())
        changed = sorted(k for k in saved.keys() | config.keys() if saved.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"run {settings.run_name!r} under {settings.storage_path} was started with "
                f"another configuration (changed: {', '.join(changed)}); resuming would mix "
                "two experiments: pass another --name, or --no-resume with a new folder"
            )
        return
    fs.create_dir(run_dir, recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def describe_batch_plans(settings: TrainSettings, num_train_videos: int) -> list[str]:
    """The batch rule at every world size the run may take (elastic: MIN..MAX)."""
    from train.loop import batch_plan

    workers = settings.workers
    low, high = workers if isinstance(workers, tuple) else (workers, workers)
    lines = []
    for world in range(low, high + 1):
        try:
            plan = batch_plan(
                settings.batch_size, world, num_train_videos, settings.max_worker_batch
            )
            lines.append(plan.describe())
        except ValueError as err:
            lines.append(f"world size {world}: {err}")
    return lines


def frame_store(settings: TrainSettings) -> FrameStore | None:
    """``--frame-store URI`` (``auto``, the default: ``<output>/frame_store``; ``none``: no
    store)."""
    root = (settings.frame_store or "").strip()
    if root.lower() in ("", "none", "off"):
        return None
    if root == "auto":
        root = str(Path(settings.output).resolve() / "frame_store")
    return FrameStore(root, s3_endpoint_url=settings.s3_endpoint_url)


def run_exists(settings: TrainSettings) -> bool:
    """Whether ``--storage-path``/``--name`` holds a run Ray Train would resume."""
    fs, base = storage_filesystem(settings)
    return _has_snapshot(fs, f"{base}/{settings.run_name}")


def _has_snapshot(fs: Any, run_dir: str) -> bool:
    """Whether the run folder ``run_dir`` (in ``fs``) holds a run Ray Train would resume."""
    import pyarrow.fs

    if fs.get_file_info(run_dir).type != pyarrow.fs.FileType.Directory:
        return False
    entries = fs.get_file_info(pyarrow.fs.FileSelector(run_dir))
    return any(Path(e.path).name.startswith("checkpoint_manager_snapshot") for e in entries)


# ------------------------------------------------------------------------ the job
def run_training(settings: TrainSettings) -> TrainRunResult:
    """Decode the data, train with Ray Train, export the best checkpoint, write reports."""
    import ray
    import ray.data
    from ray.train.torch import TorchConfig, TorchTrainer

    from train.ingest import ShardedEvalDataConfig

    if settings.videos_root is None:
        raise ValueError("--videos-root is required")
    if not settings.resume and run_exists(settings):
        raise ValueError(
            f"run {settings.run_name!r} already exists under {settings.storage_path}; pass "
            "--resume, another --name, or remove the folder"
        )
    if not ray.is_initialized():
        ray.init(address=settings.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = settings.progress_bars
    model_config = build_model_config(settings)
    out = Path(settings.output)
    loop = LoopConfig(
        model_config=model_config.to_dict(),
        num_epochs=settings.num_epochs,
        global_batch_size=settings.batch_size,
        num_train_videos=0,  # set once the split is decoded
        lr=settings.lr,
        clip_lr=settings.clip_lr,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        grad_clip=settings.grad_clip,
        seed=settings.seed,
        amp=settings.amp,
        eval_batch_size=settings.eval_batch_size,
        max_worker_batch=settings.max_worker_batch,
        init_checkpoint=settings.init_checkpoint,
        fail_at_epoch=settings.inject_failure_at_epoch,
        fail_marker=str((out / "injected_failure.marker").resolve()),
    )
    check_resume_config(settings, experiment_config(loop, settings))
    options = decode_options(settings, model_config.num_candidates)
    splits: dict[str, DecodedSplit] = {}
    for role, split in (("train", settings.train_split), ("val", settings.val_split)):
        splits[role] = decode_split(
            settings.annotations_dir,
            split,
            settings.dataset,
            settings.videos_root,
            options,
            store=frame_store(settings),
        )
        logger.info(
            "decoded %s split %s: %d videos in %.1fs (%d left out)",
            role,
            split,
            splits[role].num_videos,
            splits[role].decode_seconds,
            len(splits[role].failures),
        )
    failures = [{"split": s.name, **f} for s in splits.values() for f in s.failures]
    _write_failures(out, failures)

    loop = dataclasses.replace(loop, num_train_videos=splits["train"].num_videos)
    for line in describe_batch_plans(settings, loop.num_train_videos):
        print(f"[adaclip train] batch plan: {line}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_dict(),
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        scaling_config=scaling_config(settings),
        run_config=run_config(settings),
        datasets={
            "train": splits["train"].dataset.randomize_block_order(seed=None),
            "val": splits["val"].dataset,
        },
        dataset_config=ShardedEvalDataConfig(train_names=["train"], eval_names=["val"]),
    )
    start = time.perf_counter()
    progress = EpochProgress(
        Path(_storage_uri(settings.storage_path)) / settings.run_name, settings.num_epochs
    )
    progress.start()
    try:
        result = trainer.fit()
    finally:
        progress.stop()
    logger.info("training finished in %.1fs", time.perf_counter() - start)
    return finish_run(settings, result, failures, splits)


def finish_run(
    settings: TrainSettings,
    result: Any,
    failures: list[dict[str, str]],
    splits: dict[str, DecodedSplit],
) -> TrainRunResult:
    """Export the best-by-validation checkpoint and write the per-epoch reports."""
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("the run reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: _rank_key(cm[1]))
    out = Path(settings.output)
    best_dir = out / "best"
    export_checkpoint(best_ckpt, best_dir)
    for record in history:
        write_report(
            out / "reports" / f"val_epoch{record['epoch']:04d}.json",
            record.get("val", {}),
            split=settings.val_split,
            epoch=record["epoch"],
            run=settings.run_name,
            loss=record["loss"],
            train_kept_position_histogram=record.get("train_kept_position_histogram"),
            train_selection_entropy=record.get("train_selection_entropy"),
        )
    best_epoch = int(best_metrics["epoch"])
    best_val = next(r["val"] for r in history if r["epoch"] == best_epoch)
    run_result = TrainRunResult(
        run_dir=str(result.path),
        best_checkpoint=str(best_dir),
        best_epoch=best_epoch,
        best_val=best_val,
        history=history,
        failures=failures,
        decode_seconds={role: s.decode_seconds for role, s in splits.items()},
        decoded_videos={role: s.decoded_videos for role, s in splits.items()},
        num_workers=settings.workers,
        num_nodes=int(history[-1].get("num_nodes", 1)) if history else 1,
    )
    summary = dict(run_result.__dict__)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return run_result


def _rank_key(metrics: dict[str, Any]) -> tuple[float, ...]:
    """Best epoch: highest val R@1, then R@5, R@10, then lowest mean rank, then earliest."""
    return (
        float(metrics.get(f"val_{PRIMARY_METRIC}", float("-inf"))),
        float(metrics.get("val_t2v_R5", 0.0)),
        float(metrics.get("val_t2v_R10", 0.0)),
        -float(metrics.get("val_t2v_MnR", 0.0)),
        -float(metrics.get("epoch", 0)),
    )


def export_checkpoint(checkpoint: Any, dest: Path) -> str:
    """Copy the model files of a Ray checkpoint into ``dest``; returns its model_id."""
    from adaclip.checkpoint import CONFIG_FILE, WEIGHTS_FILE, model_id_of

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with checkpoint.as_directory() as folder:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(Path(folder) / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return model_id_of(dest)


def _write_failures(out: Path, failures: list[dict[str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "failures.jsonl", "w", encoding="utf-8") as fh:
        for row in failures:
            fh.write(json.dumps(row) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip train`` and ``python -m train.run``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = parse_with_config(TrainSettings, argv, PROG)
    if settings.do_inference:
        from train.inference import run_inference

        checkpoint = settings.checkpoint or str(Path(settings.output) / "best")
        report = run_inference(settings, checkpoint, settings.eval_split or settings.test_split)
        print(format_metrics(report["metrics"]))
        return 0
    result = run_training(settings)
    print(
        f"best epoch {result.best_epoch} (val {format_metrics(result.best_val)}); "
        f"exported to {result.best_checkpoint}"
    )
    if result.failures:
        print(f"{len(result.failures)} videos left out: see {settings.output}/failures.jsonl")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
