"""Per-video image-tower compute: AdaCLIP vs the paper's code path vs no policy.

For each (N candidates, K kept) pair and a CLIP ViT-B/32 image tower with random weights
(the weights do not change the cost), times the encoding of one video's N decoded frames:

  * AdaCLIP (this project's ``AdaCLIP.encode_video``): the policy (MobileNetV3-Large +
    temporal block + scorer) on all N frames at 224 or 112 px, then CLIP on the K kept
    frames only, MLP-Score aggregation;
  * the paper's code path: the policy on N (224 px), CLIP on ALL N, then the K selected
    rows (what the public code does at inference), MLP-Score aggregation;
  * no policy: CLIP on all N frames, mean pooling (the paper's baseline).

Forwards per video are counted with hooks on the towers (not assumed). The image tower's
FLOPs come from torch's FlopCounterMode; its achieved GFLOP/s (no-policy path) is printed
next to this machine's measured fp32 matmul peak (a large torch.mm).

    python -m benchmarks.compute                 # N/K = 16/12, 32/16, 64/32 on the CPU
    python -m benchmarks.compute --device cuda --videos 8
    python -m benchmarks.compute --smoke         # tiny CLIP, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from adaclip.aggregation import MeanAggregator
from adaclip.clip_backbone import resolve_model_cfg
from adaclip.config import TINY_CLIP_CFG, AdaClipConfig, ClipConfig, PolicyConfig
from adaclip.model import AdaCLIP
from adaclip.topk import topk_indices
from benchmarks.common import load_average, machine, print_table

PAIRS: tuple[tuple[int, int], ...] = ((16, 12), (32, 16), (64, 32))
RESOLUTIONS: tuple[int, ...] = (224, 112)
POLICY_OVERHEAD = 0.15  # target: AdaCLIP time <= (K/N + 0.15) x no-policy time


# ------------------------------------------------------------------------ helpers
def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call, counted by torch's FlopCounterMode.

    Runs with autograd on: in no-grad eval mode nn.MultiheadAttention takes a fused fast
    path (``_native_multi_head_attention``) whose projections the counter does not see.
    """
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_gflops(
    device: str, size: int = 4096, repeats: int = 3, cpu_clock: bool = False
) -> float:
    """This machine's fp32 matmul peak: the best of `repeats` size^3 torch.mm.

    With ``cpu_clock`` the time is the process CPU time (per-thread peak on a shared CPU).
    """
    clock = time.process_time if cpu_clock else time.perf_counter
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    sync = device_sync(device)
    (a @ b).sum().item()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = clock()
        a @ b
        sync()
        times.append(clock() - start)
    return 2 * size**3 / min(times) / 1e9


def device_sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


class ForwardCounter:
    """Counts the images that go through a module (sum of input batch sizes)."""

    def __init__(self, module: nn.Module) -> None:
        self.images = 0
        module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        self.images += int(inputs[0].shape[0])


@dataclass
class Path:
    """One timed way of encoding the videos."""

    name: str
    policy_px: str
    run: Callable[[Tensor], object]
    clip_counter: ForwardCounter
    policy_counter: ForwardCounter | None
    times: list[float] = field(default_factory=list)  # seconds per video (primary clock)
    wall: list[float] = field(default_factory=list)  # wall seconds per video
    clip_per_video: float = 0.0
    policy_per_video: float = 0.0


def build_models(
    n: int,
    k: int,
    clip_cfg: dict[str, Any],
    policy: PolicyConfig,
    resolutions: Sequence[int],
    device: str,
) -> dict[int, AdaCLIP]:
    """One AdaCLIP per policy resolution, all sharing one CLIP (random weights)."""
    models: dict[int, AdaCLIP] = {}
    shared: nn.Module | None = None
    for res in resolutions:
        cfg = AdaClipConfig(
            clip=ClipConfig(arch="bench", model_cfg=copy.deepcopy(clip_cfg)),
            policy=dataclasses.replace(policy, resolution=res),
            num_candidates=n,
            top_k=k,
            frame_agg="mlp",
        )
        model = AdaCLIP(cfg, load_pretrained=False)
        if shared is None:
            shared = model.clip
        else:
            model.clip = shared
        models[res] = model.eval().to(device)
    return models


def paper_code_path(model: AdaCLIP) -> Callable[[Tensor], Tensor]:
    """Policy on N, CLIP on ALL N, then select the K rows (the paper's public code)."""

    @torch.no_grad()
    def run(frames: Tensor) -> Tensor:
        b, n = frames.shape[:2]
        logits = model.policy(frames) if model.policy is not None else None  # (B, N)
        feats = model.encode_images(frames.flatten(0, 1)).view(b, n, -1)  # (B, N, D)
        assert logits is not None
        idx = topk_indices(logits, model.config.top_k)  # (B, K)
        kept = feats.gather(1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))  # (B, K, D)
        return model.aggregate(kept)[0]

    return run


def no_policy_path(model: AdaCLIP) -> Callable[[Tensor], Tensor]:
    """CLIP on all N frames, mean pooling (the baseline)."""
    mean = MeanAggregator()

    @torch.no_grad()
    def run(frames: Tensor) -> Tensor:
        b, n = frames.shape[:2]
        feats = model.encode_images(frames.flatten(0, 1)).view(b, n, -1)
        return mean(feats)[0]

    return run


def time_paths(
    paths: list[Path],
    frames: Tensor,
    reps: int,
    sync: Callable[[], None],
    videos: int,
    cpu_clock: bool = False,
) -> None:
    """One warm-up of every path (excluded; also counts forwards), then interleaved repeats.

    The primary clock is the process CPU time when ``cpu_clock``, wall time otherwise.
    """
    for p in paths:
        before_clip = p.clip_counter.images
        before_pol = p.policy_counter.images if p.policy_counter else 0
        p.run(frames)
        sync()
        p.clip_per_video = (p.clip_counter.images - before_clip) / videos
        if p.policy_counter is not None:
            p.policy_per_video = (p.policy_counter.images - before_pol) / videos
    for rep in range(reps):
        shift = rep % len(paths)
        for p in paths[shift:] + paths[:shift]:
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            p.run(frames)
            sync()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            p.times.append((cpu if cpu_clock else wall) / videos)
            p.wall.append(wall / videos)


def ms(p: Path, wall: bool = False) -> float:
    return 1e3 * statistics.median(p.wall if wall else p.times)


# -------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--videos", type=int, default=1, help="videos encoded per call")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repeats (after a warm-up)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: CPU time then equals the time on one dedicated core)",
    )
    ap.add_argument("--frame-size", type=int, default=224, help="decoded frame side (pixels)")
    ap.add_argument("--smoke", action="store_true", help="tiny CLIP and policy: checks it runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, sync = args.device, device_sync(args.device)
    cpu_clock = not device.startswith("cuda")
    pairs: Sequence[tuple[int, int]] = PAIRS
    policy = PolicyConfig(resolution=224)
    resolutions: Sequence[int] = RESOLUTIONS
    if args.smoke:
        clip_cfg, arch = copy.deepcopy(TINY_CLIP_CFG), "tiny (smoke)"
        policy = PolicyConfig(resolution=64, hidden_dim=64, num_heads=4, scorer_hidden=128)
        pairs, args.reps, args.frame_size, resolutions = ((8, 4), (32, 16)), 1, 64, (64, 32)
    else:
        clip_cfg, arch = resolve_model_cfg(ClipConfig(arch="ViT-B-32")), "ViT-B-32"
    started = time.perf_counter()
    print(f"# compute  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}; device {device}; {load_average()} at start")
    print(
        f"command: python -m benchmarks.compute {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print(
        f"CLIP image tower {arch}, random weights, fp32; policy MobileNetV3-Large (random "
        f"weights) + temporal block + scorer; {args.videos} video(s) of N uint8 "
        f"{args.frame_size}x{args.frame_size} frames per call; {args.reps} interleaved "
        "repeats after one warm-up; median time per video (preprocessing included); "
        + (
            f"ms/video, ratios and GFLOP/s use the process CPU time ({args.threads} thread): "
            "the machine is shared and oversubscribed, wall time (also shown) mostly measures "
            "the other processes"
            if cpu_clock
            else "wall time with CUDA synchronisation"
        )
    )
    peak_before = matmul_peak_gflops(device, cpu_clock=cpu_clock)

    rows: list[dict[str, str]] = []
    perf_rows: list[dict[str, str]] = []
    ratios: dict[int, dict[str, float]] = {}
    clip_gflop = pol_gflop = 0.0
    pol_gflops: dict[int, float] = {}
    for n, k in pairs:
        models = build_models(n, k, clip_cfg, policy, resolutions, device)
        base_res = max(models)
        main_model = models[base_res]
        clip_counter = ForwardCounter(main_model.clip.visual)
        pol_counters = {
            r: ForwardCounter(m.policy.backbone) for r, m in models.items() if m.policy is not None
        }
        if not clip_gflop:
            px = torch.randn(1, 3, main_model.image_size, main_model.image_size, device=device)
            with torch.no_grad():
                clip_gflop = count_flops(functools.partial(main_model.clip.encode_image, px)) / 1e9
        with torch.no_grad():
            for r, m in models.items():
                one = torch.randint(0, 256, (1, n, r, r, 3), dtype=torch.uint8, device=device)
                assert m.policy is not None
                pol = m.policy
                pol_gflops[r] = count_flops(functools.partial(pol, one)) / 1e9 / n
        pol_gflop = pol_gflops[base_res]
        gen = torch.Generator().manual_seed(n)
        size = args.frame_size
        frames = torch.randint(
            0, 256, (args.videos, n, size, size, 3), dtype=torch.uint8, generator=gen
        ).to(device)
        paths = [
            Path(
                "AdaCLIP (policy on N, CLIP on K)",
                str(r),
                m.encode_video,
                clip_counter,
                pol_counters[r],
            )
            for r, m in sorted(models.items(), reverse=True)
        ]
        paths.append(
            Path(
                "paper's code (policy, CLIP on N, select)",
                str(base_res),
                paper_code_path(main_model),
                clip_counter,
                pol_counters[base_res],
            )
        )
        paths.append(
            Path("no policy (CLIP on N, mean)", "-", no_policy_path(main_model), clip_counter, None)
        )
        policy_only = {
            r: Path(f"policy alone {r}", str(r), m.policy, clip_counter, pol_counters[r])
            for r, m in models.items()
            if m.policy is not None
        }
        with torch.no_grad():
            time_paths(
                paths + list(policy_only.values()),
                frames,
                args.reps,
                sync,
                args.videos,
                cpu_clock,
            )
        base = ms(paths[-1])
        ratios[n] = {}
        for p in paths:
            t = ms(p)
            pol_ms = ms(policy_only[int(p.policy_px)]) if p.policy_px != "-" else 0.0
            target = ""
            if p.name.startswith("AdaCLIP"):
                ratios[n][p.policy_px] = t / base
                target = f"<= {k / n + POLICY_OVERHEAD:.2f}"
            rows.append(
                {
                    "N": str(n),
                    "K": str(k),
                    "path": p.name,
                    "policy px": p.policy_px,
                    "CLIP fwd/video": f"{p.clip_per_video:g}",
                    "policy fwd/video": f"{p.policy_per_video:g}",
                    "policy ms": f"{pol_ms:.0f}" if p.policy_px != "-" else "-",
                    "ms/video": f"{t:.0f}" if t >= 10 else f"{t:.2f}",
                    "x no policy": f"{t / base:.3f}",
                    "wall ms/video": f"{ms(p, wall=True):.0f}",
                    "wall x no policy": f"{ms(p, wall=True) / ms(paths[-1], wall=True):.3f}",
                    "target": target,
                }
            )
        clip_ms_frame = base / n
        perf_rows.append(
            {
                "N": str(n),
                "CLIP ms/frame": f"{clip_ms_frame:.1f}",
                "CLIP GFLOP/frame": f"{clip_gflop:.2f}",
                "achieved GFLOP/s": f"{clip_gflop / clip_ms_frame * 1e3:.1f}",
                "matmul peak GFLOP/s": f"{peak_before:.1f}",
                "% of peak": f"{100 * clip_gflop / clip_ms_frame * 1e3 / peak_before:.0f}",
            }
        )
        paths.clear()
        policy_only.clear()
        models.clear()  # free this pair's models before the next pair is built
        print(f"... N={n} done at {time.perf_counter() - started:.0f} s", flush=True)
    peak_after = matmul_peak_gflops(device, cpu_clock=cpu_clock)

    print()
    print_table(rows)
    print()
    print_table(perf_rows)
    print(
        f"fp32 matmul peak (4096^3 torch.mm, best of 3): {peak_before:.1f} GFLOP/s before, "
        f"{peak_after:.1f} after the run"
    )
    per_res = ", ".join(f"{r} px {g:.3f}" for r, g in sorted(pol_gflops.items(), reverse=True))
    print(
        f"FLOPs per frame: CLIP image tower {clip_gflop:.2f} GFLOP; policy {per_res} GFLOP "
        f"(= {pol_gflop / clip_gflop:.3f} of a CLIP forward at {max(pol_gflops)} px)"
    )
    ref_n = 32 if 32 in ratios else sorted(ratios)[len(ratios) // 2]
    ref_k = dict(pairs)[ref_n]
    limit = ref_k / ref_n + POLICY_OVERHEAD
    for res, ratio in sorted(ratios[ref_n].items(), key=lambda x: -int(x[0])):
        ok = "MET" if ratio <= limit else "NOT MET"
        print(
            f"target at N={ref_n}, K={ref_k}, policy {res} px: AdaCLIP / no policy = {ratio:.3f} "
            f"<= K/N + {POLICY_OVERHEAD} = {limit:.2f}: {ok}"
        )
    print(f"runtime: {time.perf_counter() - started:.0f} s; {load_average()} at the end")
    low = min(ratios[ref_n], key=int)
    print(f"image_tower_time_ratio_n{ref_n}_policy{low}: {ratios[ref_n][low]:.3f}")
    high = max(ratios[ref_n], key=int)
    print(f"image_tower_time_ratio_n{ref_n}: {ratios[ref_n][high]:.3f}")
    return {f"ratio_{res}": r for res, r in ratios[ref_n].items()}


if __name__ == "__main__":
    main()
