"""Distillation training throughput: optimizer steps/s and pairs/s of the real training step.

One step = the student's training forward (init disparity + every GRU prediction), the distillation loss against
labels, backward, gradient clipping, AdamW and OneCycle steps: the body of `stereo-distill train` on a fixed batch
of Motorcycle crops (data loading excluded; it runs in DataLoader workers during real training).

    python bench/train.py                          # CPU: 64x128 crop, batch 1, 4 iterations, fp32
    python bench/train.py --device cuda --crop 320 768 --batch-size 8 --train-iters 22 --precision fp32 bf16

Prints one JSON line per (precision) setting. On CPU, bf16/fp16 run float32 (the model's autocast is CUDA-only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stereo_distill.augment import AugmentConfig, augment  # noqa: E402
from stereo_distill.losses import distillation_loss  # noqa: E402
from stereo_distill.toy import motorcycle_crops  # noqa: E402
from stereo_distill.train import collate  # noqa: E402

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity" / "rt_igev" / "weights.pth"


def make_batch(crop: tuple[int, int], batch_size: int) -> dict[str, torch.Tensor]:
    """Augmented Motorcycle crops with its ground truth as the 'labels' (the values do not affect speed)."""
    h, w = crop
    scale = max(h / 500, w / 741) * 1.05
    pairs = motorcycle_crops((h, w), scales=(max(scale, 0.25),), crops_per_scale=batch_size, seed=0)
    rng = np.random.default_rng(0)
    samples = [augment({"left": p.left, "right": p.right, "disp": np.nan_to_num(p.disp),
                        "valid": np.isfinite(p.disp)}, rng, AugmentConfig(crop=crop, scale_prob=0.0))
               for p in pairs]
    return collate(samples)


def bench(args, precision: str) -> dict:
    from stereo_depth_ros.models import load_model

    device = torch.device(args.device)
    checkpoint = str(PARITY) if PARITY.is_file() else None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("rt_igev", checkpoint=checkpoint, device=str(device), precision=precision)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-5, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-4, total_steps=args.warmup + args.steps + 100,
                                                    pct_start=0.01, cycle_momentum=False, anneal_strategy="linear")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    batch = {k: v.to(device) for k, v in make_batch(tuple(args.crop), args.batch_size).items()}

    def step() -> float:
        init, preds = model(batch["left"], batch["right"], iters=args.train_iters, test_mode=False)
        loss, _ = distillation_loss(init, preds, batch["disp"], batch["valid"])
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'x86_64'})",
        "threads": torch.get_num_threads(), "precision": precision if device.type == "cuda" else f"{precision} (runs fp32)",
        "crop": list(args.crop), "batch_size": args.batch_size, "train_iters": args.train_iters,
        "steps_per_s": round(1.0 / median, 4), "pairs_per_s": round(args.batch_size / median, 3),
        "median_step_s": round(median, 4), "steps_timed": args.steps,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 320 768 on CUDA (upstream's), 64 128 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on CUDA (upstream's), 1 on CPU")
    parser.add_argument("--train-iters", type=int, default=None, help="default 22 on CUDA (upstream's), 4 on CPU")
    parser.add_argument("--precision", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default fp32 bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 CUDA, 1 CPU)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.crop = args.crop or ([320, 768] if cuda else [64, 128])
    args.batch_size = args.batch_size or (8 if cuda else 1)
    args.train_iters = args.train_iters or (22 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    for precision in args.precision or (["fp32", "bf16"] if cuda else ["fp32"]):
        print(json.dumps(bench(args, precision)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
