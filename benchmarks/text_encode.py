"""Trimmed, length-grouped text encoding vs open_clip's default 77-token encode.

Runs the ViT-B-32 text tower (random weights: speed does not depend on them) on the
1000 MSR-VTT 1k-A test captions both ways in one run and checks the embeddings agree.

    .venv/bin/python benchmarks/text_encode.py [--batch-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from adaclip.clip_backbone import build_clip, resolve_model_cfg
from adaclip.config import ClipConfig
from adaclip.text import encode_text_grouped, encode_text_trimmed, tokenize
from benchmarks.common import machine, median_time, msrvtt_test_captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget per batch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    clip = build_clip(resolve_model_cfg(ClipConfig(arch=args.arch))).eval().to(args.device)
    captions = msrvtt_test_captions()
    tokens = tokenize(captions, 77).to(args.device)  # open_clip's default context
    bs = args.batch_size

    def default_encode() -> torch.Tensor:
        return torch.cat([clip.encode_text(tokens[i : i + bs]) for i in range(0, len(tokens), bs)])

    def trimmed_per_batch() -> torch.Tensor:
        return torch.cat(
            [encode_text_trimmed(clip, tokens[i : i + bs]) for i in range(0, len(tokens), bs)]
        )

    def grouped() -> torch.Tensor:
        return encode_text_grouped(clip, tokens, args.max_tokens)

    results: dict[str, torch.Tensor] = {}

    def timed(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            results[name] = fn()

        return run

    with torch.inference_mode():
        clip.encode_text(tokens[:8])  # warm-up of the kernels
        t_default = median_time(timed("default", default_encode), args.repeats, warmup=0)
        t_trim = median_time(timed("trim", trimmed_per_batch), args.repeats, warmup=0)
        t_group = median_time(timed("group", grouped), args.repeats, warmup=0)
    reference = results["default"]
    diff_trim = (results["trim"] - reference).abs().max().item()
    diff_group = (results["group"] - reference).abs().max().item()

    n = len(captions)
    print(f"machine: {machine()}")
    print(f"{n} MSR-VTT test captions, {args.arch} text tower, batch {bs}, device {args.device}")
    print(f"{'method':<34}{'captions/s':>12}{'speedup':>9}{'max|diff|':>12}")
    print(f"{'open_clip encode_text (77 tokens)':<34}{n / t_default:>12.0f}{1.0:>9.2f}{0.0:>12.1e}")
    print(f"{'trim each batch':<34}{n / t_trim:>12.0f}{t_default / t_trim:>9.2f}{diff_trim:>12.1e}")
    print(
        f"{'group by length + trim':<34}{n / t_group:>12.0f}{t_default / t_group:>9.2f}{diff_group:>12.1e}"
    )
    print(f"text_encode_speedup: {t_default / t_group:.2f} max_abs_diff: {diff_group:.2e}")


if __name__ == "__main__":
    main()
