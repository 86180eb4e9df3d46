"""The training step on one process: exact no-grad CLIP on unselected frames, parameter
groups, per-rank randomness."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adaclip.config import tiny_config
from adaclip.model import AdaCLIP
from train.loop import LoopConfig, build_optimizer, contrastive_loss

B, N, K, S = 3, 8, 3, 32


def tiny_model(policy: bool, agg: str = "mlp") -> AdaCLIP:
    torch.manual_seed(0)
    config = tiny_config(num_candidates=N, top_k=K, frame_agg=agg)
    config.policy.resolution = S
    config.policy.enabled = policy
    return AdaCLIP(config)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (B, N, S, S, 3), dtype=torch.uint8, generator=gen)
    tokens = torch.randint(1, 400, (B, 10), generator=gen)
    tokens[:, -1] = 0  # padding
    return frames, tokens


def loss_and_grads(
    model: AdaCLIP, grad_all_frames: bool
) -> tuple[float, dict[str, torch.Tensor], list[tuple[int, bool]]]:
    """One forward/backward with fixed Gumbel noise; records every CLIP image call."""
    frames, tokens = batch()
    calls: list[tuple[int, bool]] = []
    encode = model.encode_images

    def recording(x: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return encode(x)

    model.encode_images = recording  # type: ignore[method-assign]
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same Gumbel draw for both forwards
    out = model(frames, tokens, tau=1.5, grad_all_frames=grad_all_frames)
    loss = contrastive_loss(model, out)
    loss.backward()
    del model.encode_images
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, calls


@pytest.mark.parametrize(("policy", "agg"), [(True, "mlp"), (True, "qscore"), (False, "mlp")])
def test_no_grad_on_unselected_frames_gives_the_same_loss_and_gradients(
    policy: bool, agg: str
) -> None:
    model = tiny_model(policy, agg)
    ref_loss, ref_grads, ref_calls = loss_and_grads(model, grad_all_frames=True)
    loss, grads, calls = loss_and_grads(model, grad_all_frames=False)

    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)
    visual = [g for n, g in grads.items() if n.startswith("clip.visual.")]
    assert visual and any(g.abs().sum() > 0 for g in visual)  # CLIP does learn
    if policy:
        assert any(n.startswith("policy.") and g.abs().sum() > 0 for n, g in grads.items())
        assert ref_calls == [(B * N, True)]  # today's forward: all N frames in the graph
        assert sorted(calls) == [(B * K, True), (B * (N - K), False)]
    else:
        assert calls == ref_calls == [(B * K, True)]  # uniform K frames, nothing to save


def test_parameter_groups_get_their_learning_rates() -> None:
    model = tiny_model(policy=True)
    cfg = LoopConfig(model_config={}, num_epochs=1, global_batch_size=2, num_train_videos=2)
    cfg.lr, cfg.clip_lr = 1e-3, 1e-6
    optimizer = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in lr_of, f"frozen {name} is optimised"
        elif name.startswith("clip."):
            assert lr_of[id(param)] == cfg.clip_lr, name
        else:
            assert lr_of[id(param)] == cfg.lr, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"clip.visual.conv1.weight", "clip.token_embedding.weight"} <= frozen
    assert any(n.startswith("policy.") for n in lr_of_names(model, lr_of, cfg.lr))
    assert any(n.startswith("aggregator.") for n in lr_of_names(model, lr_of, cfg.lr))
    assert any(n.startswith("clip.transformer.") for n in lr_of_names(model, lr_of, cfg.clip_lr))


def lr_of_names(model: AdaCLIP, lr_of: dict[int, Any], lr: float) -> list[str]:
    return [n for n, p in model.named_parameters() if lr_of.get(id(p)) == lr]


def test_each_rank_draws_its_own_gumbel_noise() -> None:
    from adaclip.topk import sample_gumbel
    from train.loop import seed_rank

    draws = {}
    for rank in (0, 1, 0):
        seed_rank(5, rank)
        draws.setdefault(rank, []).append(sample_gumbel((4, 8)))
    torch.testing.assert_close(draws[0][0], draws[0][1])  # a rank is reproducible
    assert not torch.equal(draws[0][0], draws[1][0])  # ranks differ


@pytest.mark.parametrize(
    ("world", "bound", "local", "global_batch"),
    [(3, 64, 64, 192), (2, 64, 64, 128), (4, 64, 48, 192), (2, None, 96, 192), (1, 64, 64, 64)],
)
def test_batch_plan_bounds_the_worker_batch_when_the_world_shrinks(
    world: int, bound: int | None, local: int, global_batch: int
) -> None:
    from train.loop import batch_plan

    plan = batch_plan(192, world, 10_000, bound)
    assert (plan.local_batch, plan.global_batch) == (local, global_batch)
    assert plan.lr_scale == pytest.approx((global_batch / 192) ** 0.5)
    assert plan.steps == (10_000 // world) // local
    assert f"{local} videos per worker" in plan.describe()
    with pytest.raises(ValueError, match="lower --batch-size"):
        batch_plan(192, world, local * world - 1, bound)


def test_train_state_round_trips_with_weights_only(tmp_path: Any) -> None:
    from train.loop import (
        STATE_FILE,
        load_epoch_checkpoint,
        restore_train_state,
        rng_state,
        save_epoch_checkpoint,
    )

    model = tiny_model(policy=True)
    cfg = LoopConfig(model_config={}, num_epochs=1, global_batch_size=2, num_train_videos=2)
    optimizer = build_optimizer(model, cfg)
    loss_and_grads(model, grad_all_frames=False)
    optimizer.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    scaler_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                    "growth_interval": 100, "_growth_tracker": 7}  # fmt: skip
    torch.manual_seed(11)
    rng = [rng_state(), rng_state()]
    expected = torch.rand(3)
    history = [{"epoch": 0, "loss": 1.5, "val": {"t2v_R1": 10.0}, "node_ids": ["a"]}]
    state = {"epoch": 1, "history": history}

    class FixedScaler:  # a GradScaler's state as a GPU run saves it
        def state_dict(self) -> dict[str, Any]:
            return dict(scaler_state)

    save_epoch_checkpoint(
        model,
        state,
        str(tmp_path),
        optimizer=optimizer,
        scaler=FixedScaler(),
        rng=rng,  # type: ignore[arg-type]
    )
    torch.load(tmp_path / STATE_FILE, weights_only=True)  # no pickled objects in it
    fresh = tiny_model(policy=True)
    loaded = load_epoch_checkpoint(fresh, str(tmp_path))
    assert loaded["epoch"] == 1 and loaded["history"] == history
    assert loaded["scaler"] == scaler_state
    new_opt = build_optimizer(fresh, cfg)
    torch.manual_seed(99)
    restore_train_state(loaded, new_opt, scaler, rank=1, world=2)
    torch.testing.assert_close(torch.rand(3), expected)  # rank 1's stream continues
    assert new_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_init_checkpoint_starts_from_its_weights(tmp_path: Any) -> None:
    from adaclip.checkpoint import save_checkpoint
    from train.loop import build_model

    source = tiny_model(policy=True)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    save_checkpoint(source, str(tmp_path / "init"))
    cfg = LoopConfig(
        model_config=source.config.to_dict(),
        num_epochs=1,
        global_batch_size=2,
        num_train_videos=2,
        init_checkpoint=str(tmp_path / "init"),
    )
    model = build_model(cfg)
    for (name, a), b in zip(model.named_parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_embeddings_travel_as_rows_and_merge_in_canonical_order() -> None:
    import numpy as np

    from train.evaluate import Embeddings, embeddings_to_rows, merge_embeddings, rows_to_embeddings

    def part(ids: list[str], captions: list[int], seed: int) -> Embeddings:
        gen = torch.Generator().manual_seed(seed)
        q2v = np.concatenate([np.full(c, i) for i, c in enumerate(captions)])
        return Embeddings(
            video_ids=ids,
            videos=torch.randn(len(ids), 4, generator=gen),
            frames=torch.randn(len(ids), 2, 4, generator=gen),
            texts=torch.randn(len(q2v), 4, generator=gen),
            query_to_video=q2v,
            kept=torch.randint(0, 8, (len(ids), 2), generator=gen),
            entropy=torch.rand(len(ids), generator=gen),
        )

    a, b = part(["v3", "v1"], [2, 1], 0), part(["v2"], [3], 1)
    back = [rows_to_embeddings(embeddings_to_rows(p)) for p in (b, a)]
    merged, direct = merge_embeddings(back), merge_embeddings([a, b])
    assert merged.video_ids == direct.video_ids == ["v1", "v2", "v3"]
    assert merged.query_to_video.tolist() == [0, 1, 1, 1, 2, 2]
    for field in ("videos", "frames", "texts", "kept", "entropy"):
        torch.testing.assert_close(getattr(merged, field), getattr(direct, field))
    torch.testing.assert_close(merged.texts[0], a.texts[2])  # v1's caption


def test_first_batch_is_fetched_while_the_caller_builds_the_model() -> None:
    import threading

    from train.data import started

    fetched = threading.Event()

    def stream() -> Any:
        fetched.set()  # Ray Data's executor starting, the first block arriving
        yield from range(3)

    batches = started(stream())
    assert fetched.wait(5)  # began before anything iterated
    assert list(batches) == [0, 1, 2]
    assert list(started(iter(()))) == []

    def broken() -> Any:
        raise OSError("shard unreadable")
        yield  # a generator

    later = started(broken())  # the error surfaces where the epoch asks for data
    with pytest.raises(OSError, match="shard unreadable"):
        next(later)
