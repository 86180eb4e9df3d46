"""Model-side subcommands of the ``adaclip`` program: ``init-checkpoint`` and ``synth``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from adaclip.config import FRAME_AGGS, AdaClipConfig, ClipConfig, PolicyConfig, tiny_config


def build_init_config(
    arch: str,
    clip_weights: str | None = None,
    pretrained: str | None = None,
    num_candidates: int | None = None,
    top_k: int | None = None,
    frame_agg: str = "mlp",
    policy_weights: str | None = None,
    zero_shot: bool = False,
    quick_gelu: bool | None = None,
) -> AdaClipConfig:
    """The configuration ``init-checkpoint`` writes (``tiny`` or an open_clip architecture).

    ``quick_gelu`` None lets the weights decide the activation (see
    ``adaclip.clip_backbone.resolve_quick_gelu``).
    """
    overrides: dict[str, object] = {"frame_agg": frame_agg, "zero_shot": zero_shot}
    if num_candidates is not None:
        overrides["num_candidates"] = num_candidates
    if top_k is not None:
        overrides["top_k"] = top_k
    if arch == "tiny":
        cfg = tiny_config(**overrides)
        cfg.clip.weights_file = clip_weights
        cfg.clip.quick_gelu = quick_gelu
        cfg.policy.backbone_weights = policy_weights
        return cfg
    return AdaClipConfig(
        clip=ClipConfig(
            arch=arch, pretrained=pretrained, weights_file=clip_weights, quick_gelu=quick_gelu
        ),
        policy=PolicyConfig(backbone_weights=policy_weights),
        **overrides,  # type: ignore[arg-type]
    )


def init_checkpoint_main(argv: Sequence[str] | None = None) -> int:
    """``adaclip init-checkpoint OUT --arch tiny|ViT-B-32 [--clip-weights FILE]``."""
    parser = argparse.ArgumentParser(
        prog="adaclip init-checkpoint",
        description="Write a checkpoint folder with untrained AdaCLIP modules (policy and "
        "aggregation) on top of CLIP weights: for smoke runs, benchmarks and trying the "
        "pipeline before training.",
    )
    parser.add_argument("out", help="checkpoint folder to write")
    parser.add_argument("--arch", default="tiny", help="'tiny' or an open_clip architecture")
    parser.add_argument("--clip-weights", help="local CLIP weights file (.pt or .safetensors)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag (needs network)")
    parser.add_argument("--policy-weights", help="local MobileNetV3-Large state dict")
    parser.add_argument("--num-candidates", type=int, help="N candidate frames per video")
    parser.add_argument("--top-k", type=int, help="K frames kept per video")
    parser.add_argument("--frame-agg", choices=FRAME_AGGS, default="mlp")
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="QuickGELU activation, as OpenAI's weights need (default: follow the weights: "
        "the tag's open_clip config, a -quickgelu arch, an OpenAI TorchScript file)",
    )
    parser.add_argument(
        "--zero-shot", action="store_true", help="no policy: uniform K frames, mean pooling"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init")
    args = parser.parse_args(argv)

    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.model import AdaCLIP

    torch.manual_seed(args.seed)
    config = build_init_config(
        args.arch,
        clip_weights=args.clip_weights,
        pretrained=args.pretrained,
        num_candidates=args.num_candidates,
        top_k=args.top_k,
        frame_agg=args.frame_agg,
        policy_weights=args.policy_weights,
        zero_shot=args.zero_shot,
        quick_gelu=args.quick_gelu,
    )
    model = AdaCLIP(config)
    model_id = save_checkpoint(model, args.out, kind="init", seed=args.seed)
    print(f"wrote {args.out} (model_id {model_id}, {model.describe()})")
    return 0


def synth_main(argv: Sequence[str] | None = None) -> int:
    """``adaclip synth OUT --videos N --seed S``: a synthetic captioned video set."""
    parser = argparse.ArgumentParser(
        prog="adaclip synth",
        description="Write N small mp4 clips (a coloured shape moving, with blank and noise "
        "cuts) and train/val/test annotation files in the paper's schema.",
    )
    parser.add_argument("out", help="folder to write (acts as the bucket)")
    parser.add_argument("--videos", type=int, default=64, help="number of videos")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--fps", type=int, default=8, help="frames per second")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels")
    parser.add_argument(
        "--concepts",
        type=int,
        default=None,
        help="distinct (colour, shape, motion) triples; val/test then show triples seen in "
        "train (default: every clip a new triple)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.5,
        help="share of uninformative stretches that are grey noise rather than black",
    )
    args = parser.parse_args(argv)

    from adaclip.synth import generate_dataset

    try:
        files = generate_dataset(
            args.out, args.videos, args.seed, frames_per_video=args.frames, fps=args.fps,
            size=args.size, concepts=args.concepts, noise=args.noise,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    for split, path in files.items():
        print(f"{split}: {path}")
    return 0
