"""``adaclip demo``: the whole product on one machine, on synthetic videos, in minutes.

1. synthesise a captioned video set into a local folder that acts as the bucket;
2. train a small model with Ray Train (2 CPU workers);
3. evaluate the trained and the untrained model on the held-out test split;
4. index the test videos with the ingestion job into the embedded Qdrant;
5. start the search API and run caption queries against it over HTTP.

Each stage reuses what an earlier run left in ``--workdir``, so the demo can be stopped
and run again. The demo sits above the four packages (it drives them all), which is why it
is its own package rather than part of any of them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from pipelines.settings import JobSettings, parse_settings

SYNTH_CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "synthetic.json"


class DemoSettings(JobSettings):
    """``adaclip demo``: synthesise, train, evaluate, index and search, end to end."""

    workdir: str = Field("./.adaclip/demo", description="folder for everything the demo makes")
    videos: int = Field(96, description="synthetic videos to generate (80/10/10 split)")
    seed: int = Field(0, description="seed of the synthetic data and the model")
    num_epochs: int = Field(30, description="training epochs")
    num_workers: int = Field(2, description="Ray Train workers (CPU)")
    queries: int = Field(5, description="caption queries to run against the API")
    port: int = Field(8000, description="HTTP port of the search API")
    keep_serving: bool = Field(False, description="keep the search API up until Ctrl-C")


def stage(number: int, title: str) -> None:
    print(f"\n[{number}/5] {title}", flush=True)


def synthesise(settings: DemoSettings, bucket: Path) -> dict[str, Any]:
    """The video set (reused when an earlier run wrote it)."""
    from adaclip.synth import generate_dataset

    if not (bucket / "test.json").is_file():
        generate_dataset(bucket, settings.videos, settings.seed)
    splits = {s: json.loads((bucket / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"    {sum(len(v) for v in splits.values())} videos in {bucket} ({counts})")
    return splits


def train_settings(settings: DemoSettings, work: Path, bucket: Path) -> Any:
    from train.settings import TrainSettings, parse_with_config

    argv = [
        "--config", str(SYNTH_CONFIG), "--videos-root", str(bucket), "--annotations", str(bucket),
        "--num-epochs", str(settings.num_epochs), "--num-workers", str(settings.num_workers),
        "--seed", str(settings.seed), "--storage-path", str((work / "ray_results").resolve()),
        "--output", str(work / "train"), "--name", "adaclip-demo",
    ]  # fmt: skip
    return parse_with_config(TrainSettings, argv, "adaclip demo")


def train(settings: DemoSettings, work: Path, bucket: Path) -> str:
    """Train with Ray Train; return the best-by-validation checkpoint folder."""
    from train.run import run_exists, run_training

    best = work / "train" / "best"
    if (best / "config.json").is_file():
        print(f"    reusing {best}")
        return str(best)
    cfg = train_settings(settings, work, bucket)
    if run_exists(cfg):  # an interrupted earlier run: pick it up where it stopped
        cfg = cfg.model_copy(update={"resume": True})
    result = run_training(cfg)
    print(f"    best epoch {result.best_epoch} by validation R@1 -> {result.best_checkpoint}")
    return result.best_checkpoint


def untrained_checkpoint(settings: DemoSettings, work: Path, bucket: Path) -> str:
    """The model training starts from (same configuration, same seed), saved untrained: the
    baseline the demo compares the trained model with on the same split."""
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.model import AdaCLIP
    from train.run import build_model_config

    out = work / "untrained"
    if not (out / "config.json").is_file():
        torch.manual_seed(settings.seed)
        save_checkpoint(AdaCLIP(build_model_config(train_settings(settings, work, bucket))), out)
    return str(out)


def evaluate(
    settings: DemoSettings, work: Path, bucket: Path, checkpoints: dict[str, str]
) -> dict[str, dict[str, float]]:
    from train.inference import run_inference

    cfg = train_settings(settings, work, bucket).model_copy(update={"output": str(work / "eval")})
    table: dict[str, dict[str, float]] = {}
    for name, path in checkpoints.items():
        report = run_inference(cfg, path, "test")
        table[name] = {k: float(report["metrics"][f"t2v_{k}"]) for k in ("R1", "R5", "R10")}
    print(f"    {'test split, text-to-video':<28}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    for name, m in table.items():
        print(f"    {name:<28}{m['R1']:>8.1f}{m['R5']:>8.1f}{m['R10']:>8.1f}")
    return table


def index(work: Path, bucket: Path, checkpoint: str, test_ids: Sequence[str]) -> dict[str, Any]:
    from dataclasses import asdict

    from pipelines.index import run_index
    from pipelines.settings import IndexSettings

    manifest = work / "test_videos.txt"
    manifest.write_text("".join(f"{(bucket / f'{vid}.mp4').resolve()}\n" for vid in test_ids))
    summary = run_index(
        IndexSettings(
            source=str(manifest),
            checkpoint=checkpoint,
            qdrant_path=str(work / "qdrant"),
            collection="demo",
            output=str(work / "index"),
            frame_size=64,
            decode_batch_size=4,
            model_batch_size=8,
        )
    )
    print(
        f"    listed {summary.listed}, indexed {summary.indexed}, skipped {summary.skipped} "
        f"(already indexed), failed {summary.failed}; {summary.gflops_per_video:.2f} GFLOPs/video "
        f"vs {summary.gflops_per_video_no_policy:.2f} encoding all N frames"
    )
    return asdict(summary)


def query(url: str, text: str, top_k: int = 3) -> dict[str, Any]:
    body = json.dumps({"query": text, "top_k": top_k, "rerank": True}).encode()
    req = urllib.request.Request(
        f"{url}/search", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def serve_and_query(
    settings: DemoSettings, work: Path, bucket: Path, checkpoint: str, test: dict[str, Any]
) -> list[dict[str, Any]]:
    """Start the search API, send caption queries over HTTP, print the top results."""
    from ray import serve

    from serve.cli import start_server, wait_ready
    from serve.settings import ServeSettings

    serve_settings = ServeSettings(
        checkpoint=checkpoint,
        collection="demo",
        qdrant_path=str(work / "qdrant"),
        port=settings.port,
        media_root=str(bucket),
        min_replicas=1,
        max_replicas=1,
    )
    url = start_server(serve_settings)
    wait_ready(url)
    answers = []
    for video_id, entry in list(test.items())[: settings.queries]:
        caption = entry["sentences"][0]
        result = query(url, caption)
        top = result["results"]
        mark = "hit " if top and top[0]["video_id"] == video_id else "miss"
        print(f'    [{mark}] "{caption}" (video {video_id})')
        for rank, hit in enumerate(top, 1):
            print(
                f"           {rank}. {hit['video_id']}  score {hit['score']:.3f}  "
                f"best moment {hit['best_moment_s']:.2f}s"
            )
        answers.append({"video_id": video_id, "caption": caption, "results": top})
    print(f"\n    Search page: {url}/   API docs: {url}/docs")
    if settings.keep_serving:
        print("    serving until Ctrl-C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print(
            f"    (the demo stops the server now; to keep it: adaclip serve --checkpoint "
            f"{checkpoint} --collection demo --qdrant-path {work / 'qdrant'} --media-root {bucket})"
        )
    serve.delete(serve_settings.app_name)
    return answers


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """All five stages; returns what each produced (also written to ``demo.json``)."""
    import ray

    start = time.monotonic()
    work = Path(settings.workdir)
    bucket = work / "bucket"
    work.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    stage(1, "synthesising a captioned video set (the 'bucket')")
    splits = synthesise(settings, bucket)
    stage(2, f"training with Ray Train ({settings.num_workers} CPU workers)")
    best = train(settings, work, bucket)
    stage(3, "evaluating on the held-out test split: trained vs untrained")
    metrics = evaluate(
        settings,
        work,
        bucket,
        {"untrained": untrained_checkpoint(settings, work, bucket), "trained": best},
    )
    stage(4, "indexing the test videos into the embedded Qdrant (Ray Data job)")
    summary = index(work, bucket, best, list(splits["test"]))
    stage(5, "starting the search API and querying it over HTTP")
    answers = serve_and_query(settings, work, bucket, best, splits["test"])
    report = {
        "checkpoint": best,
        "metrics": metrics,
        "index": summary,
        "queries": answers,
        "elapsed_s": round(time.monotonic() - start, 1),
    }
    (work / "demo.json").write_text(json.dumps(report, indent=2))
    print(f"\nDone in {report['elapsed_s']:.0f}s. Everything is in {work}/ (demo.json).")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_demo(parse_settings(DemoSettings, argv, "adaclip demo"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
