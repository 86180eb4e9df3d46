from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaclip.topk import hard_topk, sample_gumbel, temperature_schedule, topk_indices


def _assert_valid_selection(a: torch.Tensor, b: int, k: int, n: int) -> torch.Tensor:
    assert a.shape == (b, k, n)
    assert torch.all((a == 0) | (a == 1)), "rows must be exactly one-hot"
    assert torch.all(a.sum(-1) == 1)
    idx = a.argmax(-1)  # (B, K)
    for row in idx.tolist():
        assert len(set(row)) == k, f"indices repeat: {row}"
    return idx


@pytest.mark.parametrize(("n", "k"), [(4, 1), (5, 3), (8, 8), (16, 12), (16, 16)])
def test_training_rows_are_one_hot_and_distinct(n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + k)
    for trial in range(50):
        tau = [5.0, 1.0, 0.5, 1e-3][trial % 4]
        logits = torch.randn(3, n, generator=gen) * [0.1, 3.0, 30.0][trial % 3]
        a = hard_topk(logits, k, tau, generator=gen)
        _assert_valid_selection(a, 3, k, n)


def test_degenerate_logits_still_give_distinct_indices() -> None:
    # Equal logits, and one frame so dominant that p_1 is exactly one-hot in float32.
    logits = torch.tensor([[0.0] * 6, [1e4, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for tau in (5.0, 1e-4):
        a = hard_topk(logits, 6, tau, generator=torch.Generator().manual_seed(0))
        _assert_valid_selection(a, 2, 6, 6)


def test_gradient_reaches_logits_and_is_finite() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, k, tau in [(16, 4, 5.0), (16, 16, 0.5), (8, 3, 1e-2)]:
        logits = torch.randn(2, n, generator=gen, requires_grad=True)
        feats = torch.randn(2, n, 5, generator=gen)  # (B, N, D)
        weights = torch.randn(2, k, 5, generator=gen)
        a = hard_topk(logits, k, tau, generator=gen)
        ((a @ feats) * weights).sum().backward()
        assert logits.grad is not None
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0


def test_inference_equals_torch_topk_one_hot() -> None:
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    a = hard_topk(logits, 3, tau=1.0, training=False)
    expected = F.one_hot(torch.topk(logits, 3).indices, 10).float()
    assert torch.equal(a, expected)
    # rows ordered by descending logit
    picked = (a * logits[:, None, :]).sum(-1)  # (B, K)
    assert torch.all(picked[:, :-1] >= picked[:, 1:])


def test_inference_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.3, 0.7]])
    a = hard_topk(logits, 2, tau=1.0, training=False)
    assert torch.equal(a, torch.tensor([[[0.0, 1, 0, 0], [0, 0, 0, 1]]]))
    assert topk_indices(logits, 2).tolist() == [[1, 3]]  # time order, not score order


def test_topk_indices_time_order() -> None:
    logits = torch.randn(5, 12, generator=torch.Generator().manual_seed(2))
    idx = topk_indices(logits, 4)
    assert idx.dtype == torch.long
    assert torch.equal(idx, torch.topk(logits, 4).indices.sort(-1).values)
    assert torch.all(idx[:, 1:] > idx[:, :-1])


def test_generator_makes_results_reproducible() -> None:
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    a1 = hard_topk(logits, 5, 1.0, generator=torch.Generator().manual_seed(7))
    a2 = hard_topk(logits, 5, 1.0, generator=torch.Generator().manual_seed(7))
    a3 = hard_topk(logits, 5, 1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


def test_tiny_tau_selects_topk_of_perturbed_log_probs() -> None:
    # With tau -> 0 each p_j is one-hot on the best remaining frame, so the chosen
    # indices are the top-k of y = log_softmax(s) + g in descending order.
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
    a = hard_topk(logits, 6, 1e-4, generator=torch.Generator().manual_seed(9))
    g = sample_gumbel((4, 16), generator=torch.Generator().manual_seed(9))
    y = F.log_softmax(logits, -1).clamp(min=math.log(1e-8)) + g
    assert torch.equal(a.argmax(-1), torch.topk(y, 6).indices)


def test_gumbel_noise_is_finite_with_unit_mean_shift() -> None:
    g = sample_gumbel((200_000,), generator=torch.Generator().manual_seed(0))
    assert g.dtype == torch.float32
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni constant


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(dtype: torch.dtype) -> None:
    logits = (torch.randn(2, 16, generator=torch.Generator().manual_seed(5)) * 10).to(dtype)
    logits.requires_grad_(True)
    a = hard_topk(logits, 16, 0.5, generator=torch.Generator().manual_seed(0))
    assert a.dtype == dtype
    _assert_valid_selection(a.float(), 2, 16, 16)
    (a.float() * torch.randn(2, 16, 16)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("k", [0, 9, -1, 2.0, True])
def test_invalid_k_raises(k: object) -> None:
    with pytest.raises(ValueError):
        hard_topk(torch.zeros(2, 8), k, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        topk_indices(torch.zeros(2, 8), k)  # type: ignore[arg-type]


def test_invalid_shape_and_tau_raise() -> None:
    with pytest.raises(ValueError):
        hard_topk(torch.zeros(8), 2, 1.0)
    with pytest.raises(ValueError):
        hard_topk(torch.zeros(2, 8), 2, 0.0)


def test_temperature_schedule() -> None:
    assert temperature_schedule(0) == 5.0
    assert temperature_schedule(10) == pytest.approx(5.0 * math.exp(-0.45))
    assert temperature_schedule(1000) == 0.5
    # crossover: 5 exp(-0.045 e) = 0.5 at e = ln(10) / 0.045 ~ 51.2
    assert temperature_schedule(51) > 0.5
    assert temperature_schedule(52) == 0.5
    assert temperature_schedule(3, tau0=1.0, decay=0.1, tau_min=0.0) == pytest.approx(
        math.exp(-0.3)
    )
