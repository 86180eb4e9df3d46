"""Fidelity with real weights: activation, exact text trim, self-contained checkpoints.

Each test here guards a defect that changes retrieval results silently: the model still
runs, only its vectors are wrong.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from adaclip.checkpoint import load_checkpoint, read_checkpoint_config
from adaclip.clip_backbone import (
    build_clip,
    is_torchscript_archive,
    resolve_model_cfg,
)
from adaclip.commands import init_checkpoint_main
from adaclip.config import TINY_CLIP_CFG, AdaClipConfig, ClipConfig, tiny_config
from adaclip.model import AdaCLIP
from adaclip.text import encode_text_grouped, token_lengths, tokenize
from adaclip.topk import hard_topk, time_ordered
from train.loop import LoopConfig, build_model
from train.run import build_model_config
from train.settings import TrainSettings, parse_with_config


def activations(clip: nn.Module) -> set[type]:
    """The MLP activation classes of both CLIP towers."""
    return {type(m) for m in clip.modules() if isinstance(m, QuickGELU | nn.GELU)}


def random_frames(b: int, n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, size, size, 3), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------ 1. QuickGELU
def test_openai_tag_resolves_quick_gelu_without_weights() -> None:
    """open_clip builds GELU for `ViT-B-32` even with the openai tag; we must not."""
    openai = resolve_model_cfg(ClipConfig(arch="ViT-B-32", pretrained="openai"))
    laion = resolve_model_cfg(ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    named = resolve_model_cfg(ClipConfig(arch="ViT-B-32-quickgelu"))
    forced = resolve_model_cfg(ClipConfig(arch="ViT-B-32", pretrained="openai", quick_gelu=False))
    assert (openai["quick_gelu"], laion["quick_gelu"], named["quick_gelu"]) == (True, False, True)
    assert forced["quick_gelu"] is False  # an explicit choice wins


@pytest.fixture()
def quick_gelu_weights(tmp_path: Path) -> Path:
    """A tiny CLIP trained 'with QuickGELU', saved as an open_clip weights file."""
    torch.manual_seed(1)
    clip = build_clip({**copy.deepcopy(TINY_CLIP_CFG), "quick_gelu": True})
    path = tmp_path / "tiny-openai.pt"
    torch.save(clip.state_dict(), path)
    return path


def test_quick_gelu_weights_file_end_to_end(quick_gelu_weights: Path, tmp_path: Path) -> None:
    """--quick-gelu with a local file: init-checkpoint, training start, load_checkpoint."""
    out = tmp_path / "init"
    argv = [str(out), "--arch", "tiny", "--clip-weights", str(quick_gelu_weights)]
    assert init_checkpoint_main([*argv, "--quick-gelu"]) == 0
    config, _ = read_checkpoint_config(out)
    assert config.clip.quick_gelu is True and config.clip.model_cfg["quick_gelu"] is True
    assert activations(load_checkpoint(out).clip) == {QuickGELU}

    started = build_model(  # a training run that starts from that checkpoint
        LoopConfig(
            model_config=config.to_dict(),
            num_epochs=1,
            global_batch_size=2,
            num_train_videos=2,
            init_checkpoint=str(out),
        )
    )
    assert activations(started.clip) == {QuickGELU}

    settings = parse_with_config(  # a fresh training run from the weights file
        TrainSettings,
        ["--arch", "tiny", "--clip-weights", str(quick_gelu_weights), "--quick-gelu"],
        "t",
    )
    fresh_cfg = build_model_config(settings)
    fresh = build_model(
        LoopConfig(
            model_config=fresh_cfg.to_dict(), num_epochs=1, global_batch_size=2, num_train_videos=2
        )
    )
    assert activations(fresh.clip) == {QuickGELU}

    plain = tmp_path / "plain"  # without the flag a plain open_clip file stays GELU
    assert init_checkpoint_main([str(plain), *argv[1:]]) == 0
    assert activations(load_checkpoint(plain).clip) == {nn.GELU}


def test_pretrained_tag_with_quick_gelu_end_to_end(
    quick_gelu_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag whose open_clip pretrained config says QuickGELU gives QuickGELU, no flag."""
    import open_clip.factory
    import open_clip.pretrained

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "AdaTiny", copy.deepcopy(TINY_CLIP_CFG))
    tags = {"qg": {"file": str(quick_gelu_weights), "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "AdaTiny", tags)

    out = tmp_path / "init"
    argv = [str(out), "--arch", "AdaTiny", "--pretrained", "qg", "--num-candidates", "4"]
    assert init_checkpoint_main([*argv, "--top-k", "2"]) == 0
    config, _ = read_checkpoint_config(out)
    assert config.clip.model_cfg["quick_gelu"] is True
    loaded = load_checkpoint(out)
    assert activations(loaded.clip) == {QuickGELU}
    reference = build_clip({**copy.deepcopy(TINY_CLIP_CFG), "quick_gelu": True})
    reference.load_state_dict(torch.load(quick_gelu_weights, weights_only=True))
    tokens = tokenize(["a red circle moves left"], 77)
    with torch.no_grad():  # the weights were loaded, into the right activation
        torch.testing.assert_close(loaded.clip.encode_text(tokens), reference.encode_text(tokens))

    settings = parse_with_config(TrainSettings, ["--init-checkpoint", str(out)], "t")
    started = build_model(
        LoopConfig(
            model_config=build_model_config(settings).to_dict(),
            num_epochs=1,
            global_batch_size=2,
            num_train_videos=2,
            init_checkpoint=str(out),
        )
    )
    assert activations(started.clip) == {QuickGELU}


def test_openai_torchscript_file_loads_with_quick_gelu(tmp_path: Path) -> None:
    """OpenAI's own .pt releases are TorchScript archives: loadable, and QuickGELU."""
    torch.manual_seed(2)
    clip = build_clip({**copy.deepcopy(TINY_CLIP_CFG), "quick_gelu": True}).eval()
    scripted = torch.jit.script(clip)
    path = tmp_path / "ViT-tiny.pt"
    scripted.save(str(path))
    assert is_torchscript_archive(path) and not is_torchscript_archive(tmp_path / "missing.pt")

    model = AdaCLIP(tiny_config(clip=ClipConfig(arch="tiny", weights_file=str(path)))).eval()
    assert activations(model.clip) == {QuickGELU}
    tokens = tokenize(["a blue square"], 77)
    with torch.no_grad():
        torch.testing.assert_close(model.clip.encode_text(tokens), clip.encode_text(tokens))


# ------------------------------------------------------------------ 2. exact text trim
_PIECES = [
    "a", "man", "shouts", "hello!(", "and", "leaves", "!!!", "?!", "don't", "(x)", "[ok]",
    "\u00e9t\u00e9", "na\u00efve", "\u65e5\u672c\u8a9e\u306e\u6587", "\u043f\u0440\u0438\u0432\u0435\u0442",
    "\u0645\u0631\u062d\u0628\u0627", "\U0001f600", "\U0001f3c3\u200d\u2640\ufe0f", "\u2764\ufe0f",
    "#tag", "@user", "3.14", "100%", "--", "...", "a!b!c", "!", "\"quoted\"", "\t", "\n",
    "x" * 40, "supercalifragilistic", "&amp;", "<b>", "\u00a0",
]  # fmt: skip


def fuzzed_captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = ["", " ", "a man shouts hello!( and leaves", "!" * 100]
    while len(captions) < count:
        words = rng.choices(_PIECES, k=rng.choice([1, 2, 5, 10, 20, 60]))
        joiner = rng.choice([" ", "", "  "])
        captions.append(joiner.join(words))
    return captions


def test_token_lengths_stop_at_the_end_token() -> None:
    tokens = tokenize(["a man shouts hello!( and leaves", ""], 32)
    assert (tokens[0, :9] == 0).any()  # id 0 ("!") inside the caption ...
    assert token_lengths(tokens).tolist() == [10, 2]  # ... does not end it


@pytest.mark.parametrize("context_length", [32, 77])
def test_trimmed_grouped_text_equals_untrimmed_tower(context_length: int) -> None:
    torch.manual_seed(0)
    model = AdaCLIP(tiny_config(max_text_len=context_length)).eval()
    captions = fuzzed_captions(2000, seed=context_length)
    tokens = tokenize(captions, context_length)
    assert (tokens[:, -1] == 49407).any()  # some captions ran past the context length
    with torch.no_grad():
        padded = torch.nn.functional.pad(tokens, (0, 77 - context_length))  # (B, 77)
        reference = model.clip.encode_text(padded)  # the tower on all 77 padded tokens
        grouped = encode_text_grouped(model.clip, tokens, max_tokens=2048)
    diff = (grouped - reference).abs().max().item()
    assert diff <= 1e-5, diff


# ------------------------------------------------------------ 3. self-contained checkpoints
def test_checkpoint_loads_without_the_pretrained_files(
    quick_gelu_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    backbone = tmp_path / "mobilenet.pt"
    torch.save(mobilenet_v3_large(weights=None).state_dict(), backbone)
    clip_file = tmp_path / "clip.pt"
    shutil.copy(quick_gelu_weights, clip_file)
    out = tmp_path / "ckpt"
    argv = [str(out), "--arch", "tiny", "--clip-weights", str(clip_file)]
    assert init_checkpoint_main([*argv, "--policy-weights", str(backbone), "--quick-gelu"]) == 0
    config, _ = read_checkpoint_config(out)
    assert config.policy.feature_rescale is False  # real backbone weights: the paper's path
    frames = random_frames(2, 8)
    before = load_checkpoint(out).encode_video(frames)

    backbone.unlink()
    clip_file.unlink()

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a checkpoint asked open_clip for weights")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", no_hub)
    after = load_checkpoint(out).encode_video(frames)
    assert torch.equal(before.video, after.video) and torch.equal(before.indices, after.indices)


def test_policy_feature_rescale_is_recorded() -> None:
    assert AdaCLIP(tiny_config()).config.policy.feature_rescale is True  # random backbone
    legacy = tiny_config().to_dict()
    del legacy["policy"]["feature_rescale"]
    assert AdaClipConfig.from_dict(legacy).policy.feature_rescale is True  # old checkpoints


# ------------------------------------------------------------------ 6. smaller points
def test_model_does_not_mutate_the_callers_config() -> None:
    config = tiny_config(clip=ClipConfig(arch="tiny"))
    before = json.dumps(config.to_dict(), sort_keys=True)
    model = AdaCLIP(config)
    assert json.dumps(config.to_dict(), sort_keys=True) == before
    assert model.config.clip.model_cfg is not None and config.clip.model_cfg is None


def test_text_length_beyond_the_tower_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="context length"):
        AdaCLIP(tiny_config(max_text_len=78))


def test_transformer_aggregator_never_changes_its_head_count() -> None:
    with pytest.raises(ValueError, match="head count"):
        AdaCLIP(tiny_config(frame_agg="transformer", agg_heads=6))  # 6 does not divide 64
    model = AdaCLIP(tiny_config(frame_agg="transformer", agg_heads=4))
    assert model.aggregator is not None
    assert model.aggregator.scorer[0].self_attn.num_heads == 4


def test_training_selection_is_in_time_order_with_its_gradient() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, 10, requires_grad=True)
    picked = hard_topk(logits, 5, tau=1.0)
    ordered = time_ordered(picked)
    idx = ordered.argmax(-1)
    assert torch.equal(idx, idx.sort(-1).values)
    assert torch.equal(idx, picked.argmax(-1).sort(-1).values)
    weights = torch.randn(3, 5, 10)
    perm = picked.argmax(-1).argsort(-1)
    (grad_ordered,) = torch.autograd.grad((ordered * weights).sum(), logits, retain_graph=True)
    unpermuted = weights.gather(1, perm.argsort(-1).unsqueeze(-1).expand_as(weights))
    (grad_picked,) = torch.autograd.grad((picked * unpermuted).sum(), logits)
    torch.testing.assert_close(grad_ordered, grad_picked)


def test_training_forward_sees_frames_in_time_order() -> None:
    torch.manual_seed(5)
    model = AdaCLIP(tiny_config(num_candidates=8, top_k=4)).train()
    frames = random_frames(2, 8, seed=5)
    out = model(frames, model.tokenize(["a", "b"]), tau=1.0)
    with torch.no_grad():
        every = model.encode_images(frames.flatten(0, 1)).view(2, 8, -1)  # (B, N, D)
    dist = torch.cdist(out.frames.detach(), every)  # (B, K, N)
    kept = dist.argmin(-1)  # which candidate each training frame is
    assert torch.equal(kept, kept.sort(-1).values)


def test_logit_scale_parameter_is_clamped() -> None:
    model = AdaCLIP(tiny_config())
    with torch.no_grad():
        model.clip.logit_scale.fill_(9.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(np.log(100.0))


def test_median_rank_follows_the_published_convention() -> None:
    from adaclip.metrics import metrics_from_ranks

    assert metrics_from_ranks(np.array([0, 1, 2, 3]))["MdR"] == 2.5  # even: mean of the middle
    assert metrics_from_ranks(np.array([0, 0, 5]))["MdR"] == 1.0
