"""``adaclip eval CHECKPOINT`` (and ``adaclip train --do-inference``): test a checkpoint.

``adaclip eval --zero-shot --arch ViT-B-32 --clip-weights FILE`` tests plain CLIP instead.

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
    from pipelines.checkpoints import fetch_checkpoint

    model = load_checkpoint(fetch_checkpoint(checkpoint, settings.s3_endpoint_url))
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
