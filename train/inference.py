"""``adaclip eval CHECKPOINT`` (and ``adaclip train --do-inference``): test a checkpoint.

``adaclip eval --zero-shot --arch ViT-B-32 --clip-weights FILE`` tests plain CLIP instead.

Decodes the split with the same Ray Data stage as training (N from the checkpoint), runs
the inference path of the model (policy top-k, CLIP on the K kept frames) in Ray Data
actors (a GPU each with ``--use-gpu``), scores the gathered embeddings once and writes ``<output>/reports/<split>_<model_id>.json``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.data import decode_options, decode_split
from train.evaluate import (
    embed_batch,
    embeddings_to_rows,
    evaluate_embeddings,
    format_metrics,
    rows_to_embeddings,
    write_report,
)
from train.settings import EvalSettings, TrainSettings, parse_with_config

logger = logging.getLogger(__name__)


def run_inference(
    settings: TrainSettings | EvalSettings, checkpoint: str, split: str
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (folder, local or s3://) on ``split``; return the report."""
    import ray
    import ray.data

    from adaclip.checkpoint import load_checkpoint

    if settings.videos_root is None:
        raise ValueError("--videos-root is required")
    if not ray.is_initialized():
        ray.init(address=settings.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = settings.progress_bars
    from pipelines.checkpoints import fetch_checkpoint

    model = load_checkpoint(fetch_checkpoint(checkpoint, settings.s3_endpoint_url))
    options = decode_options(settings, model.config.num_candidates)
    decoded = decode_split(
        settings.annotations_dir, split, settings.dataset, settings.videos_root, options
    )
    metrics = evaluate_on_workers(settings, checkpoint, decoded.dataset, model)
    meta = {
        "checkpoint": checkpoint,
        "model_id": model.model_id,
        "split": split,
        "dataset": settings.dataset,
        "left_out": decoded.failures,
        "decode_seconds": decoded.decode_seconds,
        "gflops_per_video": compute_cost(model, settings.frame_size),
    }
    path = Path(settings.output) / "reports" / f"{split}_{model.model_id}.json"
    write_report(path, metrics, **meta)
    logger.info("%s on %s: %s (report %s)", checkpoint, split, format_metrics(metrics), path)
    return {"metrics": metrics, "report": str(path), **meta}


class EmbedVideos:
    """Ray Data UDF: decoded rows -> per-video embeddings; loads the checkpoint once."""

    def __init__(self, checkpoint: str, s3_endpoint_url: str | None, use_gpu: bool) -> None:
        from adaclip.checkpoint import load_checkpoint
        from pipelines.checkpoints import fetch_checkpoint

        self.model = load_checkpoint(fetch_checkpoint(checkpoint, s3_endpoint_url))
        if use_gpu:
            self.model.to("cuda")
        self.model.eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return embeddings_to_rows(embed_batch(self.model, batch))


def evaluate_on_workers(
    settings: TrainSettings | EvalSettings, checkpoint: str, dataset: Any, model: Any
) -> dict[str, Any]:
    """Encode the split's videos and captions in Ray Data actors (one GPU each with
    ``--use-gpu``, as many as training workers); the driver only merges the embeddings
    and scores them once, with the metrics of :func:`train.evaluate.evaluate_batches`."""
    import ray.data

    use_gpu = bool(getattr(settings, "use_gpu", False))
    workers = getattr(settings, "workers", 1)
    actors = workers[1] if isinstance(workers, tuple) else int(workers)
    embedded = dataset.map_batches(
        EmbedVideos,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "s3_endpoint_url": settings.s3_endpoint_url,
            "use_gpu": use_gpu,
        },
        batch_size=settings.eval_batch_size,
        batch_format="numpy",
        num_cpus=None if use_gpu else float(getattr(settings, "cpus_per_worker", 1.0)),
        num_gpus=1 if use_gpu else None,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
    )
    parts = [rows_to_embeddings(rows) for rows in embedded.iter_batches(batch_format="numpy")]
    return evaluate_embeddings(model, parts)


def compute_cost(model: Any, frame_size: int) -> dict[str, float]:
    """GFLOPs one video costs (policy on N + CLIP on K + aggregation), counted on the
    real model, next to the paper's no-policy figure (CLIP on all N)."""
    from adaclip.flops import video_gflops

    counted = video_gflops(model, frame_size)
    keys = ("policy", "clip_k", "aggregation", "total", "no_policy_clip_n")
    return {key: round(float(counted[key]), 4) for key in keys}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip eval`` and ``python -m train.inference``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = parse_with_config(EvalSettings, argv, "adaclip eval")
    split = settings.split or settings.test_split
    if settings.zero_shot:
        with tempfile.TemporaryDirectory(prefix="adaclip-zero-shot-") as tmp:
            checkpoint = write_zero_shot_checkpoint(settings, Path(tmp))
            report = run_inference(settings, checkpoint, split)
        name = f"zero-shot {settings.arch}"
    else:
        assert settings.checkpoint is not None  # the settings model requires one of the two
        report = run_inference(settings, settings.checkpoint, split)
        name = settings.checkpoint
    print(f"{name} on {report['split']}: {format_metrics(report['metrics'])}")
    print(f"report: {report['report']}")
    return 0


def write_zero_shot_checkpoint(settings: EvalSettings, folder: Path) -> str:
    """Plain CLIP as a checkpoint folder: all ``--num-candidates`` frames, mean pooling.

    This is the zero-shot setting of the published CLIP figures (e.g. 31.1 R@1 on MSR-VTT
    1k-A with ViT-B/32 and OpenAI's weights), so a user can check real weights in one
    command before training.
    """
    from adaclip.checkpoint import save_checkpoint
    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP

    weights = settings.clip_weights
    is_file = weights is not None and Path(weights).is_file()
    config = build_init_config(
        settings.arch,
        clip_weights=weights if is_file else None,
        pretrained=None if is_file else weights,
        num_candidates=settings.num_candidates,
        top_k=settings.num_candidates,
        frame_agg="mean",
        zero_shot=True,
        quick_gelu=settings.quick_gelu,
    )
    config.max_text_len = settings.max_text_len
    config.validate()
    save_checkpoint(AdaCLIP(config), folder, kind="zero-shot")
    return str(folder)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
