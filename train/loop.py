"""The per-worker training loop of Ray Train (METHOD.md sections 7 and 8).

Each worker builds the model, restores the latest checkpoint when Ray Train hands one over
(a restarted worker group or a restarted run), wraps the model in DDP (gloo on CPU, NCCL
on GPU) and trains on its shard of the decoded frames: one caption drawn per video per
epoch, global-batch InfoNCE through the all-gather, AdamW with two learning rates,
warm-up + cosine, gradient clipping, the Hard-Top-k temperature schedule, AMP on GPU.
After every epoch rank 0 evaluates the validation split and reports the metrics with a
checkpoint folder that is also a regular ``adaclip`` checkpoint (``config.json`` +
``model.safetensors``) plus ``train_state.pt`` (optimiser, epoch, history). Each epoch
record also holds the Ray node id of every worker (``node_ids``, by rank) and ``num_nodes``.
:func:`train_in_process` runs the same step on one process without Ray (experiments, tests).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaclip.aggregation import qscore_similarity
from adaclip.config import AdaClipConfig
from adaclip.loss import MAX_LOGIT_SCALE, all_gather_with_grad, symmetric_infonce
from adaclip.model import AdaCLIP, TrainOutput
from adaclip.topk import temperature_schedule
from train.data import batch_captions, batch_frames
from train.datasets import sample_caption
from train.evaluate import evaluate_batches

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"  # every epoch so far: loss, timings, validation metrics


@dataclass
class LoopConfig:
    """Everything a worker needs; built by the driver, shipped to every worker."""

    model_config: dict[str, Any]  # AdaClipConfig.to_dict()
    num_epochs: int
    global_batch_size: int
    num_train_videos: int
    lr: float = 1e-4
    clip_lr: float = 1e-7
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    amp: bool = True
    eval_batch_size: int = 32
    init_checkpoint: str | None = None  # local adaclip checkpoint folder to start from
    fail_at_epoch: int | None = None  # testing: rank 0 dies once, mid-epoch
    fail_marker: str | None = None  # file whose existence means "already failed once"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- pure parts
def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of training, then cosine decay to 0 (progress in [0,1])."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    rest = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, rest))))


def build_optimizer(model: AdaCLIP, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW over four groups: {new, clip} x {decay (matrices), no decay (gains, biases)}."""
    groups = []
    for name, params in model.parameter_groups().items():
        lr = cfg.lr if name == "new" else cfg.clip_lr
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for subset, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if subset:
                groups.append({"params": subset, "lr": lr, "base_lr": lr, "weight_decay": wd})
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def contrastive_loss(model: AdaCLIP, out: TrainOutput) -> Tensor:
    """Global-batch symmetric InfoNCE; Q-Score scores every gathered (text, video) pair."""
    if out.video is not None:
        return symmetric_infonce(out.text, out.video, model.logit_scale)
    text = all_gather_with_grad(F.normalize(out.text.float(), dim=-1))  # (W*B, D)
    frames = all_gather_with_grad(out.frames.float().contiguous())  # (W*B, K, D)
    sim = qscore_similarity(text, frames, model.config.agg_temperature)[0]  # (W*B, W*B)
    sim = model.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp() * sim
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2


def epoch_captions(batch: dict[str, Any], seed: int, epoch: int) -> list[str]:
    """One caption per video of the batch, re-drawn every epoch."""
    return [
        sample_caption(caps, seed, epoch, str(vid))
        for vid, caps in zip(batch["video_id"], batch_captions(batch), strict=True)
    ]


def build_model(cfg: LoopConfig) -> AdaCLIP:
    """The model of this run: fresh (same seed on every rank) or from ``init_checkpoint``."""
    torch.manual_seed(cfg.seed)
    config = AdaClipConfig.from_dict(cfg.model_config)
    if cfg.init_checkpoint is None:
        return AdaCLIP(config)
    from safetensors.torch import load_model

    model = AdaCLIP(config, load_clip_weights=False)
    load_model(model, str(Path(cfg.init_checkpoint) / "model.safetensors"))
    return model


# ------------------------------------------------------------------------ checkpoints
def save_epoch_checkpoint(
    model: AdaCLIP, optimizer: torch.optim.Optimizer, state: dict[str, Any], out_dir: str
) -> None:
    """An adaclip checkpoint folder plus the training state and this epoch's metrics."""
    from adaclip.checkpoint import save_checkpoint

    last = state["history"][-1]
    save_checkpoint(model, out_dir, kind="train", epoch=last["epoch"], val=last.get("val", {}))
    torch.save({**state, "optimizer": optimizer.state_dict()}, Path(out_dir) / STATE_FILE)
    history = json.dumps(state["history"], indent=2, sort_keys=True)
    (Path(out_dir) / HISTORY_FILE).write_text(history)


def load_epoch_checkpoint(model: AdaCLIP, folder: str) -> dict[str, Any]:
    """Load weights into ``model``; return the training state (optimizer, epoch, history)."""
    from safetensors.torch import load_model

    load_model(model, str(Path(folder) / "model.safetensors"))
    state: dict[str, Any] = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    return state


# ------------------------------------------------------------------------- the loop
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (one call per worker)."""
    import ray.train
    import ray.train.torch

    cfg = LoopConfig(**loop_config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model = build_model(cfg)

    state: dict[str, Any] = {"epoch": 0, "history": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_epoch_checkpoint(model, folder)
        optimizer_state = state.pop("optimizer", None)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    local_batch = max(1, cfg.global_batch_size // world)
    steps = (cfg.num_train_videos // world) // local_batch
    if steps == 0:
        raise ValueError(
            f"{cfg.num_train_videos} training videos cannot fill one batch of {local_batch} "
            f"on each of {world} workers; lower --batch-size"
        )
    node_ids = gather_node_ids()
    for epoch in range(int(state["epoch"]), cfg.num_epochs):
        start = time.perf_counter()
        tau = temperature_schedule(epoch)
        shard = ray.train.get_dataset_shard("train")
        batches = shard.iter_batches(
            batch_size=local_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(2 * local_batch, 64),
            local_shuffle_seed=cfg.seed * 100_003 + epoch * 101 + rank,
        )
        loss = _train_epoch(ddp, model, optimizer, scaler, cfg, epoch, tau, batches, steps, rank)
        record = _epoch_record(epoch, loss, tau, world, local_batch, steps, start)
        record.update({"num_nodes": len(set(node_ids)), "node_ids": node_ids})
        state = {"epoch": epoch + 1, "history": [*state["history"], record]}
        _report(model, optimizer, state, rank, cfg.eval_batch_size)


def gather_node_ids() -> list[str]:
    """The Ray node id of every worker, by world rank (collective: every rank calls it)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [node_id]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, node_id)
    return [str(n) for n in gathered]


def _epoch_record(
    epoch: int, loss: float, tau: float, world: int, local_batch: int, steps: int, start: float
) -> dict[str, Any]:
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch,
        "loss": loss,
        "tau": tau,
        "world_size": world,
        "local_batch_size": local_batch,
        "steps": steps,
        "train_seconds": seconds,
        "samples_per_second": steps * local_batch * world / seconds,
    }


def train_in_process(
    cfg: LoopConfig,
    train_rows: dict[str, np.ndarray],
    val_rows: dict[str, np.ndarray],
    *,
    validate_every: int = 1,
    model: AdaCLIP | None = None,
    on_epoch: Callable[[AdaCLIP, dict[str, Any]], None] | None = None,
) -> tuple[AdaCLIP, list[dict[str, Any]]]:
    """Train on this process, without Ray: one worker, CPU, the Ray workers' exact step.

    Same model, optimiser groups, warm-up + cosine schedule, Hard-Top-k temperature,
    caption sampling, loss and validation as :func:`train_loop_per_worker`; the data are
    in-memory decoded columns (``video_id``, ``frames``, ``captions``) shuffled per epoch.
    Validation runs every ``validate_every`` epochs and after the last one. ``model``
    (default: built from ``cfg``) is trained in place. For small experiments and tests;
    returns the trained model and the epoch history.
    """
    if model is None:
        model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    num = len(train_rows["video_id"])
    local_batch = min(cfg.global_batch_size, num)
    steps = num // local_batch
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.num_epochs):
        start = time.perf_counter()
        tau = temperature_schedule(epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(num)
        batches = (
            {k: v[order[i * local_batch : (i + 1) * local_batch]] for k, v in train_rows.items()}
            for i in range(steps)
        )
        loss = _train_epoch(model, model, optimizer, scaler, cfg, epoch, tau, batches, steps, 0)
        record = _epoch_record(epoch, loss, tau, 1, local_batch, steps, start)
        if (epoch + 1) % validate_every == 0 or epoch + 1 == cfg.num_epochs:
            chunks = range(0, len(val_rows["video_id"]), cfg.eval_batch_size)
            val = ({k: v[i : i + cfg.eval_batch_size] for k, v in val_rows.items()} for i in chunks)
            record["val"] = evaluate_batches(model, val)
        history.append(record)
        if on_epoch is not None:
            on_epoch(model, record)
    return model, history


def _train_epoch(
    ddp: nn.Module,
    model: AdaCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: LoopConfig,
    epoch: int,
    tau: float,
    batches: Iterable[dict[str, Any]],
    steps: int,
    rank: int,
) -> float:
    ddp.train()
    device = model.device
    total, count = torch.zeros((), device=device), 0
    for step, batch in enumerate(batches):
        if step >= steps:
            continue  # drain the shard: every rank runs exactly `steps` collective steps
        _maybe_fail(cfg, epoch, step, rank)
        set_lr(optimizer, lr_factor((epoch + step / steps) / cfg.num_epochs, cfg.warmup_ratio))
        frames = batch_frames(batch).to(device)  # (B, N, S, S, 3)
        tokens = model.tokenize(epoch_captions(batch, cfg.seed, epoch)).to(device)  # (B, L)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
            out = ddp(frames, tokens, tau)
            loss = contrastive_loss(model, out)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().float()
        count += 1
    if count != steps:
        raise RuntimeError(f"rank {rank} got {count} batches in epoch {epoch}, expected {steps}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        total /= torch.distributed.get_world_size()
    return float(total.item()) / max(1, count)


def _maybe_fail(cfg: LoopConfig, epoch: int, step: int, rank: int) -> None:
    """Testing hook: rank 0 exits hard once, at the first step of ``fail_at_epoch``."""
    if cfg.fail_at_epoch != epoch or rank != 0 or step != 0 or cfg.fail_marker is None:
        return
    marker = Path(cfg.fail_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker killed at epoch {epoch}\n")
    os._exit(1)


def _report(
    model: AdaCLIP,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank: int,
    eval_batch_size: int,
) -> None:
    """Rank 0 validates, writes the checkpoint and reports; the others only report."""
    import ray.train

    record = state["history"][-1]
    if rank != 0:
        ray.train.report({"epoch": record["epoch"]}, checkpoint=None)
        return
    val_iter = ray.train.get_dataset_shard("val")
    batches = val_iter.iter_batches(batch_size=eval_batch_size, batch_format="numpy")
    val = evaluate_batches(model, batches)
    record["val"] = val
    metrics = {k: v for k, v in record.items() if k not in ("val", "node_ids")}
    metrics.update({f"val_{k}": v for k, v in val.items()})
    with tempfile.TemporaryDirectory(prefix="adaclip-ckpt-") as tmp:
        save_epoch_checkpoint(model, optimizer, state, tmp)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"epoch_{record['epoch']:04d}",
        )
