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
from contextlib import nullcontext
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
from train.data import batch_captions, batch_frames, started, torch_batches
from train.datasets import sample_caption
from train.evaluate import evaluate_batches, evaluate_sharded
from train.selection import SelectionStats

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
    max_worker_batch: int | None = None  # bound on the per-worker batch (elastic shrinks)
    init_checkpoint: str | None = None  # local adaclip checkpoint folder to start from
    fail_at_epoch: int | None = None  # testing: rank 0 dies once, mid-epoch
    fail_marker: str | None = None  # file whose existence means "already failed once"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class BatchPlan:
    """Batch sizes and learning-rate scale of one worker group (one world size)."""

    world_size: int
    local_batch: int  # videos per worker and step
    global_batch: int  # local_batch * world_size: the contrastive loss's batch
    requested_batch: int  # --batch-size
    lr_scale: float  # sqrt(global_batch / requested_batch)
    steps: int  # optimiser steps per epoch

    def describe(self) -> str:
        return (
            f"world size {self.world_size}: {self.local_batch} videos per worker, global batch "
            f"{self.global_batch} (requested {self.requested_batch}), learning rates x"
            f"{self.lr_scale:.3f}, {self.steps} steps per epoch"
        )


def batch_plan(
    requested_batch: int, world_size: int, num_train_videos: int, max_worker_batch: int | None
) -> BatchPlan:
    """The batch rule for any world size, so an elastic shrink cannot run out of memory.

    Each worker takes ``requested_batch // world_size`` videos, never more than
    ``max_worker_batch``: per-GPU memory is bounded whatever the world size. When the bound
    cuts in, the global batch of the InfoNCE loss shrinks to ``local * world`` (gradient
    accumulation cannot keep it: a contrastive loss needs every negative of the batch in
    one forward) and both learning rates scale by ``sqrt(global / requested)``, the
    square-root rule for Adam-type optimisers. A world that grows back restores the
    requested batch and rates.
    """
    local = max(1, requested_batch // world_size)
    if max_worker_batch is not None:
        local = min(local, max_worker_batch)
    steps = (num_train_videos // world_size) // local
    if steps == 0:
        raise ValueError(
            f"{num_train_videos} training videos cannot fill one batch of {local} "
            f"on each of {world_size} workers; lower --batch-size"
        )
    global_batch = local * world_size
    return BatchPlan(
        world_size=world_size,
        local_batch=local,
        global_batch=global_batch,
        requested_batch=requested_batch,
        lr_scale=math.sqrt(global_batch / requested_batch),
        steps=steps,
    )


def seed_rank(seed: int, rank: int) -> None:
    """Seed this rank's torch RNGs (Gumbel noise): a different stream on every rank."""
    torch.manual_seed(seed * 1_000_003 + 7919 * (rank + 1))


def rng_state() -> dict[str, Tensor]:
    """This process's torch RNG states (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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
    """Set every group's learning rate to ``base_lr * factor``."""
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

    model = AdaCLIP(config, load_pretrained=False)
    load_model(model, str(Path(cfg.init_checkpoint) / "model.safetensors"))
    return model


# ------------------------------------------------------------------------ checkpoints
def save_epoch_checkpoint(
    model: AdaCLIP,
    state: dict[str, Any],
    out_dir: str,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    rng: list[dict[str, Tensor]] | None = None,
) -> None:
    """An adaclip checkpoint folder plus the training state and this epoch's metrics.

    ``train_state.pt`` holds tensors, numbers, strings, lists and dicts only, so it loads
    with ``torch.load(weights_only=True)``: optimiser, GradScaler, every rank's RNG state
    (by rank), the epoch and the history.
    """
    from adaclip.checkpoint import save_checkpoint

    last = state["history"][-1]
    save_checkpoint(model, out_dir, kind="train", epoch=last["epoch"], val=last.get("val", {}))
    train_state = {"epoch": state["epoch"], "history": json.dumps(state["history"])}
    if optimizer is not None:
        train_state["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        train_state["scaler"] = scaler.state_dict()
    if rng is not None:
        train_state["rng"] = rng
    torch.save(train_state, Path(out_dir) / STATE_FILE)
    history = json.dumps(state["history"], indent=2, sort_keys=True)
    (Path(out_dir) / HISTORY_FILE).write_text(history)


def load_epoch_checkpoint(model: AdaCLIP, folder: str) -> dict[str, Any]:
    """Load weights into ``model``; return the training state (``weights_only`` load)."""
    load_model_weights(model, folder)
    return load_train_state(folder)


def load_model_weights(model: AdaCLIP, folder: str) -> None:
    """Load an epoch checkpoint's weights into ``model``."""
    from safetensors.torch import load_model

    load_model(model, str(Path(folder) / "model.safetensors"))


def load_train_state(folder: str) -> dict[str, Any]:
    """An epoch checkpoint's training state: epoch, history, optimiser, GradScaler, RNG
    (``weights_only`` load)."""
    state: dict[str, Any] = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    state["history"] = json.loads(state["history"])
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
    plan = batch_plan(cfg.global_batch_size, world, cfg.num_train_videos, cfg.max_worker_batch)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else nullcontext() as folder:
        fresh: dict[str, Any] = {"epoch": 0, "history": []}
        state = load_train_state(folder) if folder else fresh
        first_epoch = int(state["epoch"])
        # the first epoch's data stream starts now and overlaps building the model
        first_batches: Iterable[dict[str, Any]] = (
            started(_epoch_batches(cfg, plan, first_epoch, rank, device))
            if first_epoch < cfg.num_epochs
            else ()
        )
        model = build_model(cfg)  # the same initial weights on every rank
        seed_rank(cfg.seed, rank)  # but each rank its own Gumbel noise
        if folder:
            load_model_weights(model, folder)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    restore_train_state(state, optimizer, scaler, rank, world)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False)

    if rank == 0:  # every (re)start of the worker group says what it runs with
        print(f"[adaclip train] epoch {state['epoch']}: {plan.describe()}", flush=True)
    node_ids = gather_node_ids()
    for epoch in range(first_epoch, cfg.num_epochs):
        start = time.perf_counter()
        tau = temperature_schedule(epoch)
        batches = (
            first_batches
            if epoch == first_epoch
            else _epoch_batches(cfg, plan, epoch, rank, device)
        )
        stats = _train_epoch(ddp, model, optimizer, scaler, cfg, epoch, tau, batches, plan, rank)
        record = _epoch_record(epoch, stats, tau, plan, start)
        record.update({"num_nodes": len(set(node_ids)), "node_ids": node_ids})
        rng = gather_rng_states()
        state = {"epoch": epoch + 1, "history": [*state["history"], record]}
        _report(model, optimizer, scaler, rng, state, rank, world, cfg.eval_batch_size)


def _epoch_batches(
    cfg: LoopConfig, plan: BatchPlan, epoch: int, rank: int, device: torch.device
) -> Iterable[dict[str, Any]]:
    """This rank's training batches of one epoch (its own shuffle order)."""
    import ray.train

    return torch_batches(
        ray.train.get_dataset_shard("train"),
        plan.local_batch,
        pin_memory=device.type == "cuda",
        prefetch=2,
        shuffle_seed=cfg.seed * 100_003 + epoch * 101 + rank,
    )


def restore_train_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    world: int,
) -> None:
    """Restore optimiser, GradScaler and this rank's RNG state from a checkpoint's state.

    The RNG states were saved by rank; a worker group of another size keeps the fresh
    per-rank seeds instead (``rng`` is popped either way).
    """
    if "optimizer" in state:
        optimizer.load_state_dict(state.pop("optimizer"))
    if "scaler" in state:
        scaler.load_state_dict(state.pop("scaler"))
    rng = state.pop("rng", None)
    if rng is not None and len(rng) == world:
        set_rng_state(rng[rank])


def gather_rng_states() -> list[dict[str, Tensor]]:
    """Every rank's RNG state, by rank (collective: every rank calls it)."""
    mine = rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [mine]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return list(gathered)


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
    epoch: int, stats: dict[str, Any], tau: float, plan: BatchPlan, start: float
) -> dict[str, Any]:
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch,
        **stats,
        "tau": tau,
        "world_size": plan.world_size,
        "local_batch_size": plan.local_batch,
        "global_batch_size": plan.global_batch,
        "lr_scale": plan.lr_scale,
        "steps": plan.steps,
        "train_seconds": seconds,
        "samples_per_second": plan.steps * plan.global_batch / seconds,
        "data_wait_fraction": stats["data_wait_seconds"] / seconds,
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
    plan = batch_plan(min(cfg.global_batch_size, num), 1, num, cfg.max_worker_batch)
    local_batch, steps = plan.local_batch, plan.steps
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.num_epochs):
        start = time.perf_counter()
        tau = temperature_schedule(epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(num)
        batches = (
            {k: v[order[i * local_batch : (i + 1) * local_batch]] for k, v in train_rows.items()}
            for i in range(steps)
        )
        stats = _train_epoch(model, model, optimizer, scaler, cfg, epoch, tau, batches, plan, 0)
        record = _epoch_record(epoch, stats, tau, plan, start)
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
    plan: BatchPlan,
    rank: int,
) -> dict[str, Any]:
    """One epoch of exactly ``plan.steps`` steps; returns loss, data wait, selection stats."""
    ddp.train()
    device = model.device
    total, count, waited = torch.zeros((), device=device), 0, 0.0
    selection = SelectionStats(model.config.num_candidates)
    iterator = iter(batches)
    while True:
        fetch = time.perf_counter()
        batch = next(iterator, None)
        waited += time.perf_counter() - fetch
        if batch is None:
            break
        if count >= plan.steps:
            continue  # drain the shard: every rank runs exactly `steps` collective steps
        _maybe_fail(cfg, epoch, count, rank)
        progress = (epoch + count / plan.steps) / cfg.num_epochs
        set_lr(optimizer, plan.lr_scale * lr_factor(progress, cfg.warmup_ratio))
        frames = batch_frames(batch).to(device, non_blocking=True)  # (B, N, S, S, 3)
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
        model.clamp_logit_scale()  # the parameter itself stays in [0, ln 100]
        selection.update(out.indices, out.logits)
        total += loss.detach().float()
        count += 1
    if count != plan.steps:
        raise RuntimeError(
            f"rank {rank} got {count} batches in epoch {epoch}, expected {plan.steps}"
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        total /= torch.distributed.get_world_size()
    selection.all_reduce()
    chosen = selection.summary()
    return {
        "loss": float(total.item()) / max(1, count),
        "data_wait_seconds": waited,
        "train_kept_position_histogram": chosen["kept_position_histogram"],
        "train_selection_entropy": chosen["selection_entropy"],
    }


def _maybe_fail(cfg: LoopConfig, epoch: int, step: int, rank: int) -> None:
    """Testing hook: rank 0 exits hard once, at the first step of ``fail_at_epoch``."""
    if cfg.fail_at_epoch != epoch or rank != 0 or step != 0 or cfg.fail_marker is None:
        return
    marker = Path(cfg.fail_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker killed at epoch {epoch}\n")
    time.sleep(2.0)  # let the asynchronous upload of the last checkpoint land first
    os._exit(1)


def _report(
    model: AdaCLIP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng: list[dict[str, Tensor]],
    state: dict[str, Any],
    rank: int,
    world: int,
    eval_batch_size: int,
) -> None:
    """Every rank evaluates its shard of the validation split; rank 0 scores the whole
    split, writes the checkpoint and reports it (uploaded asynchronously: the ranks go on
    training while it is copied to storage)."""
    import ray.train
    from ray.train import CheckpointUploadMode

    record = state["history"][-1]
    val_iter = ray.train.get_dataset_shard("val")
    batches = val_iter.iter_batches(batch_size=eval_batch_size, batch_format="numpy")
    val = evaluate_sharded(model, batches, rank, world)
    if rank != 0:
        ray.train.report({"epoch": record["epoch"]}, checkpoint=None)
        return
    assert val is not None
    record["val"] = val
    metrics = {k: v for k, v in record.items() if k not in ("val", "node_ids") and _is_scalar(v)}
    metrics.update({f"val_{k}": v for k, v in val.items() if _is_scalar(v)})
    folder = tempfile.mkdtemp(prefix="adaclip-ckpt-")  # deleted by Ray after the upload
    save_epoch_checkpoint(model, state, folder, optimizer=optimizer, scaler=scaler, rng=rng)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(folder),
        checkpoint_dir_name=f"epoch_{record['epoch']:04d}",
        checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
    )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) or value is None
