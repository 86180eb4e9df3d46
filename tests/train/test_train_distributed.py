"""Two gloo processes run the workers' code: the Q-Score step through the all-gather, and
sharded evaluation, each against the single-process result on the whole batch or split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaclip.config import tiny_config
from adaclip.model import AdaCLIP
from train.evaluate import evaluate_batches, evaluate_sharded
from train.loop import LoopConfig, _train_epoch, batch_plan, build_optimizer

WORLD, LOCAL_B, N, K, S = 2, 2, 4, 2, 32


def qscore_model() -> AdaCLIP:
    """No policy (uniform K): no Gumbel noise, so ranks and one process see the same batch."""
    torch.manual_seed(0)
    config = tiny_config(num_candidates=N, top_k=K, frame_agg="qscore")
    config.policy.enabled = False
    return AdaCLIP(config)


def rows(num: int, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (num, N, S, S, 3), dtype=torch.uint8, generator=gen)
    captions = [json.dumps([f"clip {i} of a red ball", f"video number {i}"]) for i in range(num)]
    return {
        "video_id": np.array([f"v{i:02d}" for i in range(num)], dtype=object),
        "frames": frames.numpy(),
        "captions": np.array(captions, dtype=object),
    }


def one_step(model: AdaCLIP, ddp: torch.nn.Module, batch: dict[str, Any], world: int) -> float:
    cfg = LoopConfig(
        model_config={}, num_epochs=1, global_batch_size=WORLD * LOCAL_B, num_train_videos=8,
        lr=1e-2, clip_lr=1e-2, warmup_ratio=0.0, amp=False,
    )  # fmt: skip
    plan = batch_plan(cfg.global_batch_size, world, WORLD * LOCAL_B, None)
    assert plan.steps == 1
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    stats = _train_epoch(ddp, model, optimizer, scaler, cfg, 0, 1.0, [batch], plan, 0)
    return float(stats["loss"])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = qscore_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = rows(WORLD * LOCAL_B, seed=1)
        mine = {k: v[rank * LOCAL_B : (rank + 1) * LOCAL_B] for k, v in batch.items()}
        loss = one_step(model, ddp, mine, WORLD)
        val = rows(5, seed=2)
        shard = [0, 3] if rank == 0 else [4, 1, 2]  # uneven shards, any order
        batches = [
            {k: v[shard[:2]] for k, v in val.items()},
            {k: v[shard[2:]] for k, v in val.items()},
        ]
        metrics = evaluate_sharded(model, [b for b in batches if len(b["video_id"])], rank, WORLD)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        out = {"loss": loss, "grads": grads, "metrics": metrics}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_qscore_step_and_sharded_eval_on_two_ranks_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    model = qscore_model()
    loss = one_step(model, model, rows(WORLD * LOCAL_B, seed=1), 1)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("clip.") for n in grads)
    for out in ranks:  # the global-batch Q-Score loss and DDP-averaged gradients
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        assert out["grads"].keys() == grads.keys()
        for name, value in grads.items():
            torch.testing.assert_close(out["grads"][name], value, rtol=1e-3, atol=1e-7)

    val = rows(5, seed=2)
    single = evaluate_batches(model, [{k: v[i : i + 2] for k, v in val.items()} for i in (0, 2, 4)])
    sharded = ranks[0]["metrics"]
    assert ranks[1]["metrics"] is None  # only rank 0 scores
    assert sharded["num_videos"] == 5 and sharded["num_queries"] == 10
    for key, value in single.items():
        if key != "eval_seconds":
            assert sharded[key] == pytest.approx(value), key
    assert sum(sharded["kept_position_histogram"]) == 5 * K
