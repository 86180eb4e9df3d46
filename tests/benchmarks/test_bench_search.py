"""Pure functions of benchmarks/search_speed.py: the fast exact Q-Score and its helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaclip.aggregation import qscore_similarity
from benchmarks.search_speed import (
    build_index,
    caption_queries,
    chunk_sizes,
    chunked,
    recall_at,
    scores_fast,
    scores_inner,
    scores_paper,
    synth_frames,
    top_ids,
    two_stage,
)


def _index(v: int = 60, k: int = 12, d: int = 64, seed: int = 0):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    frames = 3.0 * torch.randn(v, k, d, generator=gen)
    frames *= 1.0 + 0.5 * torch.rand(v, k, 1, generator=gen)  # unequal frame norms
    queries = F.normalize(torch.randn(7, d, generator=gen), dim=-1)
    return build_index(frames, lambda: None), queries


def test_fast_exact_qscore_equals_paper_style() -> None:
    index, queries = _index()
    for temperature in (1.0, 0.1, 0.01):
        paper = scores_paper(index, queries, temperature)
        fast = scores_fast(index, queries, temperature)
        assert paper.shape == fast.shape == (7, 60)
        assert (paper - fast).abs().max().item() <= 1e-5


def test_fast_exact_qscore_matches_adaclip_qscore() -> None:
    index, queries = _index(seed=1)
    ref = qscore_similarity(queries, index.frames, 0.5)[0]
    assert torch.allclose(scores_fast(index, queries, 0.5), ref, atol=1e-5)


def test_paper_style_is_the_definition() -> None:
    """(b) builds v_q = normalize(sum_k w_k f_k) explicitly: check one pair by hand."""
    index, queries = _index(v=3, k=4, d=8, seed=2)
    q, f = queries[0], index.frames[2]
    w = torch.softmax(F.normalize(f, dim=-1) @ q / 1.0, dim=0)
    v = F.normalize((w[:, None] * f).sum(0), dim=0)
    assert abs(float(scores_paper(index, queries, 1.0)[0, 2]) - float(v @ q)) < 1e-6


def test_two_stage_with_all_candidates_is_the_full_ranking() -> None:
    index, queries = _index()
    ids, vals = two_stage(index, queries, candidates=60, top_k=10)
    full = scores_fast(index, queries)
    assert torch.equal(ids, top_ids(full, 10))
    assert torch.allclose(vals, full.gather(1, ids), atol=1e-6)
    ids_small, _ = two_stage(index, queries, candidates=20, top_k=5)
    first = scores_inner(index, queries).topk(20, dim=-1).indices
    for row, cand in zip(ids_small, first, strict=True):  # results come from the candidates
        assert set(row.tolist()) <= set(cand.tolist())


def test_recall_chunked_and_chunk_sizes() -> None:
    truth = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = torch.tensor([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall_at(found, truth) == 6 / 8
    index, queries = _index()
    whole = scores_fast(index, queries)
    assert torch.allclose(chunked(lambda q: scores_fast(index, q), queries, 3), whole, atol=1e-5)
    sizes = chunk_sizes(100_000, 12, 512)
    assert all(s >= 1 for s in sizes.values())


def test_synthetic_data_and_caption_queries_are_deterministic() -> None:
    small = synth_frames(1000, k=4, dim=16, seed=3)
    big = synth_frames(1500, k=4, dim=16, seed=3)
    assert torch.equal(small, big[:1000])  # the first 1000 videos match across V
    norms = small.norm(dim=-1)
    assert 5.0 < float(norms.mean()) < 15.0  # CLIP-like norm ~10
    video = F.normalize(small.mean(1), dim=-1)
    caps = ["a man is singing", "a cat plays piano", "a man is singing"]
    q1, q2 = caption_queries(caps, video), caption_queries(caps, video)
    assert torch.equal(q1, q2)
    assert torch.allclose(q1.norm(dim=-1), torch.ones(3))
    assert not torch.equal(q1[0], q1[2])  # same text, different ground-truth video
