"""``adaclip eval CHECKPOINT`` (and ``adaclip train --do-inference``): test a checkpoint.

Decodes the split with the same Ray Data stage as training (N from the checkpoint), runs
the inference path of the model (policy top-k, CLIP on the K kept frames) in the driver
and writes ``<output>/reports/<split>_<model_id>.json``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.data import decode_options, decode_split
from train.evaluate import evaluate_batches, format_metrics, write_report
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
    with tempfile.TemporaryDirectory(prefix="adaclip-eval-") as tmp:
        local = _local_checkpoint(checkpoint, Path(tmp), settings.s3_endpoint_url)
        model = load_checkpoint(local)
    options = decode_options(settings, model.config.num_candidates)
    decoded = decode_split(
        settings.annotations_dir, split, settings.dataset, settings.videos_root, options
    )
    batches = decoded.dataset.iter_batches(
        batch_size=settings.eval_batch_size, batch_format="numpy"
    )
    metrics = evaluate_batches(model, batches)
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


def compute_cost(model: Any, frame_size: int) -> dict[str, float]:
    """GFLOPs one video costs (policy on N + CLIP on K + aggregation), counted on the
    real model, next to the paper's no-policy figure (CLIP on all N)."""
    from adaclip.flops import video_gflops

    counted = video_gflops(model, frame_size)
    keys = ("policy", "clip_k", "aggregation", "total", "no_policy_clip_n")
    return {key: round(float(counted[key]), 4) for key in keys}


def _local_checkpoint(checkpoint: str, tmp: Path, s3_endpoint_url: str | None) -> str:
    if not checkpoint.startswith("s3://"):
        return checkpoint
    from pipelines.sources import download_folder

    download_folder(checkpoint, tmp, s3_endpoint_url=s3_endpoint_url)
    return str(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adaclip eval`` and ``python -m train.inference``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = parse_with_config(EvalSettings, argv, "adaclip eval")
    report = run_inference(settings, settings.checkpoint, settings.split or settings.test_split)
    print(f"{settings.checkpoint} on {report['split']}: {format_metrics(report['metrics'])}")
    print(f"report: {report['report']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
