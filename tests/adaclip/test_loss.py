from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaclip.loss import MAX_LOGIT_SCALE, all_gather_with_grad, symmetric_infonce

WORLD = 2
LOCAL_B = 3
D_IN, D = 5, 4


def _reference_loss(text: torch.Tensor, video: torch.Tensor, logit_scale: float) -> float:
    """Symmetric InfoNCE written out with Python loops."""
    b = text.shape[0]
    q = [row / math.sqrt(float((row * row).sum())) for row in text.double()]
    v = [row / math.sqrt(float((row * row).sum())) for row in video.double()]
    scale = math.exp(min(logit_scale, math.log(100.0)))
    s = [[scale * float((q[i] * v[j]).sum()) for j in range(b)] for i in range(b)]
    t2v = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(b))) for i in range(b))
    v2t = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(b))) for j in range(b))
    return (t2v / b + v2t / b) / 2


def test_matches_hand_written_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    text, video = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    for log_scale in (0.0, math.log(1 / 0.07)):
        loss = symmetric_infonce(text, video, torch.tensor(log_scale))
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(_reference_loss(text, video, log_scale), rel=1e-5)


def test_perfect_alignment_with_large_scale_gives_small_loss() -> None:
    emb = torch.eye(4) * 3.0
    assert symmetric_infonce(emb, emb, torch.tensor(math.log(100.0))).item() < 1e-6


def test_logit_scale_is_clamped_at_ln_100() -> None:
    gen = torch.Generator().manual_seed(1)
    text, video = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    scale = torch.tensor(10.0, requires_grad=True)
    loss = symmetric_infonce(text, video, scale)
    at_max = symmetric_infonce(text, video, torch.tensor(MAX_LOGIT_SCALE))
    assert loss.item() == pytest.approx(at_max.item())
    assert loss.item() == pytest.approx(_reference_loss(text, video, 10.0), rel=1e-5)
    loss.backward()
    assert scale.grad is not None and scale.grad.item() == 0.0


def test_gradients_flow_to_embeddings_and_scale() -> None:
    gen = torch.Generator().manual_seed(2)
    text = torch.randn(4, 6, generator=gen, requires_grad=True)
    video = torch.randn(4, 6, generator=gen, requires_grad=True)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    symmetric_infonce(text, video, scale).backward()
    for t in (text, video, scale):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_half_precision_inputs_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    text, video = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    loss = symmetric_infonce(text.half(), video.half(), torch.tensor(2.0))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_reference_loss(text, video, 2.0), rel=1e-2)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        symmetric_infonce(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(0.0))


def test_all_gather_is_identity_without_process_group() -> None:
    assert not dist.is_initialized()
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x


def _global_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    n = WORLD * LOCAL_B
    return {
        "inp_t": torch.randn(n, D_IN, generator=gen, dtype=torch.float64),
        "inp_v": torch.randn(n, D_IN, generator=gen, dtype=torch.float64),
        "w_t": torch.randn(D_IN, D, generator=gen, dtype=torch.float64),
        "w_v": torch.randn(D_IN, D, generator=gen, dtype=torch.float64),
    }


def _forward_backward(rows: slice) -> dict[str, torch.Tensor]:
    """Tiny two-tower model on the given rows: loss and every gradient of interest."""
    g = _global_inputs()
    w_t = g["w_t"].requires_grad_(True)
    w_v = g["w_v"].requires_grad_(True)
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    text = g["inp_t"][rows] @ w_t  # (B, D)
    video = g["inp_v"][rows] @ w_v  # (B, D)
    text.retain_grad()
    video.retain_grad()
    loss = symmetric_infonce(text, video, scale)
    loss.backward()
    assert text.grad is not None and video.grad is not None
    assert w_t.grad is not None and w_v.grad is not None and scale.grad is not None
    return {
        "loss": loss.detach(),
        "text_grad": text.grad,
        "video_grad": video.grad,
        "w_t_grad": w_t.grad,
        "w_v_grad": w_v.grad,
        "scale_grad": scale.grad,
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = _forward_backward(slice(rank * LOCAL_B, (rank + 1) * LOCAL_B))
        try:  # unequal local batches are refused on every rank (no deadlock)
            all_gather_with_grad(torch.zeros(LOCAL_B + rank, D))
            out["unequal_refused"] = torch.tensor(False)
        except ValueError:
            out["unequal_refused"] = torch.tensor(True)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ref = _forward_backward(slice(None))  # single process, concatenated batch
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for r, out in enumerate(ranks):
        rows = slice(r * LOCAL_B, (r + 1) * LOCAL_B)
        # every rank computes the full global loss
        torch.testing.assert_close(out["loss"], ref["loss"])
        # local embeddings: the backward all-reduce sums W identical global-loss grads
        torch.testing.assert_close(out["text_grad"], WORLD * ref["text_grad"][rows])
        torch.testing.assert_close(out["video_grad"], WORLD * ref["video_grad"][rows])
        # logit_scale sits after the gather: each rank already has the full gradient
        torch.testing.assert_close(out["scale_grad"], ref["scale_grad"])
        assert bool(out["unequal_refused"])

    # DDP averages parameter grads over ranks; that average is the single-process grad
    for name in ("w_t_grad", "w_v_grad", "scale_grad"):
        ddp_avg = sum(out[name] for out in ranks) / WORLD
        torch.testing.assert_close(ddp_avg, ref[name])
