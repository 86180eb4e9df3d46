from __future__ import annotations

import numpy as np
import pytest
import torch

from adaclip.metrics import (
    metrics_from_ranks,
    retrieval_metrics,
    t2v_v2t_metrics,
    text_to_video_ranks,
    video_to_text_metrics,
    video_to_text_ranks,
)

# Square: query i belongs to video i. Ranks worked out by hand in the comments.
SQUARE = np.array(
    [
        [0.9, 0.1, 0.2, 0.3],  # gt 0.9: nothing higher                  -> 0
        [0.8, 0.5, 0.7, 0.1],  # gt 0.5: 0.8, 0.7 higher                 -> 2
        [0.3, 0.3, 0.3, 0.3],  # gt 0.3: all tied  -> optimistic 0, pessimistic 3
        [0.4, 0.6, 0.4, 0.5],  # gt 0.5: 0.6 higher                      -> 1
    ]
)
# Columns (video -> text): col0 gt 0.9 -> 0; col1 [.1 .5 .3 .6] gt .5 -> 1;
# col2 [.2 .7 .3 .4] gt .3 -> 2; col3 [.3 .1 .3 .5] gt .5 -> 0. No ties at the gt.

# Five captions for three videos.
MULTI = np.array(
    [
        [0.9, 0.5, 0.1],  # c0 -> v0: gt 0.9                          -> 0
        [0.3, 0.6, 0.4],  # c1 -> v0: gt 0.3, 0.6 and 0.4 higher      -> 2
        [0.5, 0.5, 0.2],  # c2 -> v1: gt 0.5 tied with v0 -> opt 0, pess 1
        [0.1, 0.2, 0.8],  # c3 -> v2: gt 0.8                          -> 0
        [0.7, 0.3, 0.6],  # c4 -> v2: gt 0.6, 0.7 higher              -> 1
    ]
)
MULTI_MAP = [0, 0, 1, 2, 2]
# Video -> text, over all 5 captions, rank of the best own caption:
# v0 col [.9 .3 .5 .1 .7], own {c0, c1}, best .9                      -> 0
# v1 col [.5 .6 .5 .2 .3], own {c2} = .5: .6 higher; c0 ties -> opt 1, pess 2
# v2 col [.1 .4 .2 .8 .6], own {c3, c4}, best .8                      -> 0


def test_square_ranks_by_hand() -> None:
    assert text_to_video_ranks(SQUARE).tolist() == [0, 2, 0, 1]
    assert text_to_video_ranks(SQUARE, ties="pessimistic").tolist() == [0, 2, 3, 1]
    assert video_to_text_ranks(SQUARE).tolist() == [0, 1, 2, 0]
    assert video_to_text_ranks(SQUARE, ties="pessimistic").tolist() == [0, 1, 2, 0]


def test_square_metrics_by_hand() -> None:
    m = retrieval_metrics(SQUARE)
    assert set(m) == {"R1", "R5", "R10", "R50", "MdR", "MnR"}
    assert m == pytest.approx(
        {"R1": 50.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.5, "MnR": 1.75}
    )
    p = retrieval_metrics(SQUARE, ties="pessimistic")
    assert p == pytest.approx(
        {"R1": 25.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 2.5, "MnR": 2.5}
    )
    v = video_to_text_metrics(SQUARE)
    assert v == pytest.approx(
        {"R1": 50.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.5, "MnR": 1.75}
    )


def test_recall_thresholds_and_median() -> None:
    m = metrics_from_ranks(np.array([0, 4, 5, 9, 10, 49, 50, 99]))
    assert m == pytest.approx(
        {"R1": 12.5, "R5": 25.0, "R10": 50.0, "R50": 75.0, "MdR": 10.5, "MnR": 29.25}
    )


def test_constant_matrix_tie_policies() -> None:
    sim = np.zeros((5, 5))
    assert retrieval_metrics(sim)["R1"] == 100.0
    p = retrieval_metrics(sim, ties="pessimistic")
    assert p["R1"] == 0.0 and p["MdR"] == 5.0 and p["MnR"] == 5.0


def test_multi_caption_by_hand() -> None:
    assert text_to_video_ranks(MULTI, MULTI_MAP).tolist() == [0, 2, 0, 0, 1]
    assert text_to_video_ranks(MULTI, MULTI_MAP, "pessimistic").tolist() == [0, 2, 1, 0, 1]
    assert video_to_text_ranks(MULTI, MULTI_MAP).tolist() == [0, 1, 0]
    assert video_to_text_ranks(MULTI, MULTI_MAP, "pessimistic").tolist() == [0, 2, 0]

    t2v = retrieval_metrics(MULTI, np.array(MULTI_MAP))
    assert t2v == pytest.approx(
        {"R1": 60.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.0, "MnR": 1.6}
    )
    assert retrieval_metrics(MULTI, MULTI_MAP, "pessimistic") == pytest.approx(
        {"R1": 40.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 2.0, "MnR": 1.8}
    )
    v2t = video_to_text_metrics(MULTI, MULTI_MAP)
    assert v2t == pytest.approx(
        {"R1": 200 / 3, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.0, "MnR": 4 / 3}
    )
    assert video_to_text_metrics(MULTI, MULTI_MAP, "pessimistic")["MnR"] == pytest.approx(5 / 3)


def test_both_directions_prefixed() -> None:
    both = t2v_v2t_metrics(torch.tensor(MULTI), MULTI_MAP)
    assert both["t2v_R1"] == pytest.approx(60.0)
    assert both["v2t_R1"] == pytest.approx(200 / 3)
    assert set(both) == {f"{d}_{k}" for d in ("t2v", "v2t") for k in retrieval_metrics(SQUARE)}


def test_square_v2t_equals_transposed_t2v() -> None:
    rng = np.random.default_rng(0)
    sim = np.round(rng.normal(size=(60, 60)), 1)  # rounding creates ties
    for ties in ("optimistic", "pessimistic"):
        assert video_to_text_metrics(sim, ties=ties) == retrieval_metrics(sim.T, ties=ties)


def test_torch_input_matches_numpy() -> None:
    sim = torch.randn(20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float16)
    assert retrieval_metrics(sim) == retrieval_metrics(sim.float().numpy())


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 2)), [0, 1, 2])  # video index out of range
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])  # wrong length
    with pytest.raises(ValueError):
        retrieval_metrics(np.array([[np.nan]]))
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 2)), ties="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="caption"):
        video_to_text_metrics(np.zeros((2, 3)), [0, 0])  # videos 1, 2 have no caption
