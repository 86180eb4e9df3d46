from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adaclip.aggregation import MeanAggregator
from adaclip.checkpoint import CheckpointError, load_checkpoint, model_id_of, save_checkpoint
from adaclip.config import AdaClipConfig, ClipConfig, tiny_config
from adaclip.model import AdaCLIP
from adaclip.text import encode_text_grouped, encode_text_trimmed, tokenize


@pytest.fixture(scope="module")
def model() -> AdaCLIP:
    torch.manual_seed(0)
    return AdaCLIP(tiny_config(frame_agg="mlp")).eval()


def _frames(b: int = 3, n: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, size, size, 3), dtype=torch.uint8, generator=g)


def test_encode_video_runs_image_tower_on_k_frames_only(model: AdaCLIP) -> None:
    seen: list[int] = []
    hook = model.clip.visual.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    try:
        enc = model.encode_video(_frames(b=3))
    finally:
        hook.remove()
    k = model.config.top_k
    assert sum(seen) == 3 * k  # N = 8 candidates each, only K = 4 encoded
    assert enc.video.shape == (3, model.embed_dim)
    assert enc.frames.shape == (3, k, model.embed_dim)
    assert torch.allclose(enc.video.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.all(enc.indices[:, 1:] > enc.indices[:, :-1])  # time order, distinct
    assert torch.allclose(enc.weights.sum(-1), torch.ones(3), atol=1e-5)


def test_encode_video_keeps_policy_top_logits(model: AdaCLIP) -> None:
    frames = _frames(b=2, seed=1)
    enc = model.encode_video(frames)
    assert model.policy is not None
    with torch.no_grad():
        logits = model.policy(frames)
    expected = torch.topk(logits, model.config.top_k, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(enc.indices, expected)
    # the video vector is the aggregation of exactly those frames' embeddings
    rows = torch.arange(2).unsqueeze(1)
    feats = model.encode_images(frames[rows, expected].flatten(0, 1)).view(2, -1, model.embed_dim)
    assert torch.allclose(feats, enc.frames, atol=1e-5)


def test_zero_shot_is_uniform_and_mean_pooled() -> None:
    torch.manual_seed(0)
    zs = AdaCLIP(tiny_config(zero_shot=True, num_candidates=8, top_k=4)).eval()
    assert zs.policy is None and isinstance(zs.aggregator, MeanAggregator)
    enc = zs.encode_video(_frames(b=2))
    assert enc.indices.tolist() == [[0, 2, 5, 7], [0, 2, 5, 7]]
    expected = F.normalize(F.normalize(enc.frames, dim=-1).mean(1), dim=-1)
    assert torch.allclose(enc.video, expected, atol=1e-6)


@pytest.mark.parametrize("agg", ["mean", "mlp", "transformer", "qscore"])
def test_training_forward_gradients_reach_policy_and_aggregator(agg: str) -> None:
    torch.manual_seed(0)
    model = AdaCLIP(tiny_config(frame_agg=agg)).train()
    frames = _frames(b=4)
    tokens = model.tokenize(["a red circle", "a blue square", "green stars", "black"])
    out = model(frames, tokens, tau=1.0)
    sim = model.similarity(out.text, out.video, out.frames)  # (4, 4)
    loss = F.cross_entropy(sim * 10, torch.arange(4))
    loss.backward()
    assert model.policy is not None
    grad = model.policy.scorer[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    frozen = model.policy.backbone.head[0].weight
    assert frozen.grad is None  # --freeze-cnn default
    assert model.clip.token_embedding.weight.grad is None  # frozen by the recipe
    if agg in ("mlp", "transformer"):
        assert model.aggregator is not None
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in model.aggregator.parameters()
        )


def test_trimmed_text_encoding_equals_full(model: AdaCLIP) -> None:
    texts = ["a man is singing", "a cat plays the piano on a small wooden stage at night", "x"]
    full_tokens = tokenize(texts, 77)
    with torch.no_grad():
        full = model.clip.encode_text(full_tokens)
        trimmed = encode_text_trimmed(model.clip, full_tokens)
        grouped = encode_text_grouped(model.clip, full_tokens, max_tokens=40, max_batch=2)
    assert (trimmed - full).abs().max() <= 1e-5
    assert (grouped - full).abs().max() <= 1e-5
    assert tokenize(texts, 32).shape == (3, 32)


def test_checkpoint_round_trip_identical_embeddings(model: AdaCLIP, tmp_path: Path) -> None:
    model_id = save_checkpoint(model, tmp_path / "ck", epoch=3)
    assert model_id == model_id_of(tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model_id == model_id
    frames = _frames(b=2, seed=5)
    a, b = model.encode_video(frames), loaded.encode_video(frames)
    assert torch.equal(a.video, b.video) and torch.equal(a.indices, b.indices)
    assert torch.equal(model.encode_text(["hello"]), loaded.encode_text(["hello"]))
    # another save of the same weights gives the same id; changed weights a new one
    assert save_checkpoint(loaded, tmp_path / "ck2", epoch=3) == model_id
    with torch.no_grad():
        loaded.clip.logit_scale.add_(1.0)
    assert save_checkpoint(loaded, tmp_path / "ck3", epoch=3) != model_id


def test_checkpoint_refuses_unknown_format(model: AdaCLIP, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path / "ck")
    cfg_path = tmp_path / "ck" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["format_version"] = 99
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_clip_from_local_weights_file(model: AdaCLIP, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    state = {k: v.contiguous() for k, v in model.clip.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    cfg = tiny_config()
    cfg.clip = ClipConfig(arch="tiny", weights_file=str(path))
    other = AdaCLIP(cfg).eval()
    assert torch.equal(other.encode_text(["a dog"]), model.encode_text(["a dog"]))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="top_k"):
        tiny_config(top_k=9, num_candidates=8)
    with pytest.raises(ValueError, match="frame_agg"):
        tiny_config(frame_agg="max")
    with pytest.raises(ValueError, match="unknown AdaClipConfig keys"):
        AdaClipConfig.from_dict({"nope": 1})
    cfg = tiny_config()
    assert AdaClipConfig.from_dict(cfg.to_dict()) == cfg


def test_importing_adaclip_loads_no_forbidden_packages() -> None:
    code = (
        "import sys, adaclip, adaclip.model, adaclip.checkpoint, adaclip.cli, adaclip.commands,"
        " adaclip.metrics, adaclip.loss, adaclip.topk, adaclip.text, adaclip.aggregation;"
        "bad = [m for m in ('ray', 'qdrant_client', 'boto3', 'botocore', 'fastapi', 'starlette')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_length_grouped_batches_cover_all_and_respect_budget() -> None:
    from adaclip.text import length_grouped_batches

    lengths = torch.tensor([5, 30, 7, 7, 12, 3, 30, 9])
    batches = length_grouped_batches(lengths, max_tokens=40, max_batch=3)
    flat = torch.cat(batches).tolist()
    assert sorted(flat) == list(range(8))
    for b in batches:
        assert len(b) <= 3 and len(b) * int(lengths[b].max()) <= 40 or len(b) == 1
