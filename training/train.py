"""Distil the RT-IGEV student on the teacher's pseudo-labels (resumable; single process or torchrun).

Re-running the same command continues from RUN/checkpoints/last.pth with the same optimizer, schedule, RNG and
data position, so an interrupted run ends with the weights an uninterrupted one would have had (CPU float32).
Under torchrun every rank takes its share of the same global batch (gloo on CPU, NCCL on GPU); rank 0 writes.
Several machines (torchrun --nnodes N) give the same parameters as one machine with the same global batch; RUN must
be on a filesystem they share (checked at start), and after a node dies re-running on every node resumes.
The pieces: train_data (pairs, split, data plan), train_state (checkpoints, resume), validation, distributed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from stereo_depth_ros.atomic_io import atomic_write_json

from .augment import AugmentConfig
from .cli import CliError, WorkError
from .distributed import Distributed, agree, check_shared_folder, digest, distributed
from .losses import LossConfig, distillation_loss
from .train_data import LOAD_ERROR, DataPlan, StepBatches, StepRange, check_crop, collect_items, split_items
from .train_state import TrainState, build_state, resume, run_signature, save_training_checkpoint
from .validation import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="DATA folder (any layout stereo_distill.datasets reads)")
    parser.add_argument("--labels", required=True, help="LABELS folder written by `stereo-distill label`")
    parser.add_argument("--student", required=True,
                        help="initial RT-IGEV checkpoint (official or ours), or 'none' for a seeded random init")
    parser.add_argument("--out", required=True, help="RUN folder: checkpoints/, tb/, run.json")
    parser.add_argument("--steps", type=int, default=20000, help="optimizer steps in total (default 20000)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per rank per micro-batch (default 4)")
    parser.add_argument("--accumulate", type=int, default=1,
                        help="micro-batches per optimizer step (gradient accumulation; default 1)")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=(320, 768),
                        help="training crop (default 320 768, upstream's; multiples of 32)")
    parser.add_argument("--save-every", type=int, default=1000, help="checkpoint period in steps (default 1000)")
    parser.add_argument("--keep-checkpoints", type=int, default=0,
                        help="keep only the newest N step_*.pth files (0 = keep all)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="mixed precision on CUDA (the model's autocast); fp16 adds a GradScaler (default fp32)")
    parser.add_argument("--seed", type=int, default=666, help="seed of init, split, data order, augmentation")
    parser.add_argument("--lr", type=float, default=2e-4, help="OneCycle peak learning rate (upstream 2e-4)")
    parser.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (upstream 1e-5)")
    parser.add_argument("--train-iters", type=int, default=22, help="GRU iterations in training (upstream 22)")
    parser.add_argument("--valid-iters", type=int, default=None,
                        help="GRU iterations for validation (default: the model config's valid_iters)")
    parser.add_argument("--max-range", type=float, default=192.0,
                        help="ignore label pixels with |d| >= this (upstream's 192 rule)")
    parser.add_argument("--gt-weight", type=float, default=0.0,
                        help="weight of an extra loss against ground truth where DATA has it (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out share (seeded by name hash)")
    parser.add_argument("--val-every", type=int, default=1000, help="validation period in steps (0 = only at end)")
    parser.add_argument("--val-max-pairs", type=int, default=50, help="validate on at most this many pairs")
    parser.add_argument("--log-every", type=int, default=10, help="TensorBoard scalar period in steps")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="stereo-safe augmentation (default on)")
    parser.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"), default=(-0.2, 0.4),
                        help="random scale 2**U(MIN, MAX) (default -0.2 0.4)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: the local GPU)")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes per rank (default 2)")


def validate_args(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1 or args.accumulate < 1:
        raise CliError("--batch-size and --accumulate must be >= 1")
    h, w = args.crop
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise CliError(f"--crop {h} {w}: both sides must be multiples of 32 (the network downsamples by 32)")
    if args.save_every < 1:
        raise CliError(f"--save-every must be >= 1, got {args.save_every}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise CliError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not Path(args.data).is_dir():
        raise CliError(f"data folder {args.data} does not exist")
    if args.student != "none" and not Path(args.student).is_file():
        raise CliError(f"student checkpoint {args.student} does not exist (or pass --student none)")


def load_student(args: argparse.Namespace, device: torch.device) -> Any:
    from stereo_depth_ros.models import load_model

    torch.manual_seed(args.seed)
    if args.precision != "fp32" and device.type != "cuda":
        print(f"note: --precision {args.precision} applies on CUDA only; on {device.type} the student trains in "
              "float32", file=sys.stderr)
    try:
        return load_model("rt_igev", checkpoint=None if args.student == "none" else args.student, device=str(device),
                          precision=args.precision)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise CliError(f"cannot load student {args.student}: {str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------------- steps
def train_step(net: torch.nn.Module, state: TrainState, batches: Iterator[dict[str, Any]], args: argparse.Namespace,
               dist_info: Distributed, loss_cfg: LossConfig) -> tuple[dict[str, float], float]:
    """One optimizer step over `args.accumulate` micro-batches; returns (losses averaged over ranks, grad norm)."""
    logs: dict[str, float] = {}
    for micro in range(args.accumulate):
        raw = next(batches)
        if LOAD_ERROR in raw:  # found part-way: exit status 1, the checkpoints so far are kept
            raise WorkError(raw[LOAD_ERROR])
        batch = {k: v.to(dist_info.device, non_blocking=True) for k, v in raw.items()}
        last_micro = micro == args.accumulate - 1
        sync = nullcontext() if (last_micro or not dist_info.active) else net.no_sync()  # type: ignore[operator]
        with sync:
            # Mixed precision is the model's own (config.precision, CUDA only), as upstream's.
            init_disp, preds = net(batch["left"], batch["right"], iters=args.train_iters, test_mode=False)
            loss, metrics = distillation_loss(
                init_disp, preds, batch["disp"], batch["valid"], batch["gt_disp"], batch["gt_valid"], loss_cfg,
            )
            state.scaler.scale(loss / args.accumulate).backward()
        for k, v in metrics.items():
            logs[k] = logs.get(k, 0.0) + float(v) / args.accumulate
    state.scaler.unscale_(state.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0))
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if dist_info.active:
        keys = sorted(logs)
        packed = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=dist_info.device)
        dist.all_reduce(packed)
        logs = {k: float(v) / dist_info.world_size for k, v in zip(keys, packed.tolist(), strict=True)}
    return logs, grad_norm


class StepLogger:
    """TensorBoard scalars/images and the progress bar of rank 0 (the other ranks log nothing)."""

    def __init__(self, run_dir: Path, start_step: int, total: int, args: argparse.Namespace, enabled: bool):
        from tqdm import tqdm

        self.args, self.enabled = args, enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
        self.bar = tqdm(total=total, initial=start_step, disable=not enabled, unit="step", dynamic_ncols=True)
        self.t0, self.window_steps = time.perf_counter(), 0

    def step(self, done: int, logs: dict[str, float], lr: float, grad_norm: float) -> None:
        self.window_steps += 1
        if self.writer is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", epe=f"{logs.get('label_epe', float('nan')):.2f}")
        if done % self.args.log_every == 0 or done == self.args.steps:
            elapsed = time.perf_counter() - self.t0
            for k, v in logs.items():
                self.writer.add_scalar(f"train/{k}", v, done)
            self.writer.add_scalar("train/lr", lr, done)
            self.writer.add_scalar("train/grad_norm", grad_norm, done)
            self.writer.add_scalar("train/steps_per_s", self.window_steps / max(elapsed, 1e-9), done)
            self.t0, self.window_steps = time.perf_counter(), 0

    def validation(self, done: int, metrics: dict[str, Any], visuals: list[np.ndarray]) -> None:
        if self.writer is None:
            return
        for k in ("epe", "d1", "bad1", "bad2", "bad3", "coverage"):
            self.writer.add_scalar(f"val/{k}", metrics[k], done)
        for i, picture in enumerate(visuals):
            self.writer.add_image(f"val/pair{i}_left_label_pred", picture, done, dataformats="HWC")
        self.bar.write(f"step {done}: val EPE {metrics['epe']:.3f} px, D1 {metrics['d1']:.4f} "
                       f"({metrics['pairs']} pairs)", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    validate_args(args)
    with distributed(args.device) as dist_info:
        return train(args, dist_info)


def train(args: argparse.Namespace, dist_info: Distributed) -> int:
    run_dir = Path(args.out)
    crop = (int(args.crop[0]), int(args.crop[1]))
    # Several nodes: one RUN folder for all (rank 0 writes, every rank resumes from it) and the same pairs on each.
    check_shared_folder(dist_info, run_dir, "--out")
    items = collect_items(args.data, args.labels)
    agree(dist_info, digest(item.sample.name for item in items), f"the labelled pairs of {args.data} and {args.labels}")
    train_items, val_items = split_items(items, args.val_fraction, args.seed)
    check_crop(train_items, crop)
    plan = DataPlan(len(train_items), args.batch_size, dist_info.world_size, args.accumulate, args.seed)
    if plan.steps_per_epoch < 1:
        raise CliError(
            f"{len(train_items)} training pairs cannot fill one global batch of {plan.global_batch} "
            f"(batch size {args.batch_size} x {dist_info.world_size} ranks x accumulate {args.accumulate})"
        )

    model = load_student(args, dist_info.device)
    model.train()  # upstream's training configuration (freeze_bn)
    state = build_state(model, args, dist_info.device)
    start_step = resume(run_dir, state, args, plan, announce=dist_info.is_main)
    if start_step == 0 and dist_info.is_main:
        print(f"training {len(train_items)} pairs, validating on {len(val_items)}; global batch {plan.global_batch}",
              file=sys.stderr)
    if start_step >= args.steps:
        if dist_info.is_main:
            print(f"{run_dir} is complete ({start_step} steps)", file=sys.stderr)
        return 0
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "run.json", {"args": run_signature(args), "world_size": dist_info.world_size,
                                                 "train_pairs": [i.sample.name for i in train_items],
                                                 "val_pairs": [i.sample.name for i in val_items]})

    net: torch.nn.Module = model
    if dist_info.active:
        # Some parameters (e.g. test-path-only layers) get no gradient in the training forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    aug = None
    if args.augment:
        aug = AugmentConfig(crop=crop, min_scale=args.scale_range[0], max_scale=args.scale_range[1])
    loader = torch.utils.data.DataLoader(
        StepBatches(train_items, plan, dist_info.rank, aug, crop), batch_size=None,
        sampler=StepRange(start_step * args.accumulate, args.steps * args.accumulate),
        num_workers=args.workers, pin_memory=dist_info.device.type == "cuda", persistent_workers=False,
    )
    loss_cfg = LossConfig(max_range=args.max_range, gt_weight=args.gt_weight)
    logger = StepLogger(run_dir, start_step, args.steps, args, enabled=dist_info.is_main)
    batches = iter(loader)
    logs: dict[str, float] = {}
    try:
        for step in range(start_step, args.steps):
            logs, grad_norm = train_step(net, state, batches, args, dist_info, loss_cfg)
            lr = state.scheduler.get_last_lr()[0]
            state.scheduler.step()
            done = step + 1
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"loss is {logs['loss']} at step {done}; lower --lr or use fp32")
            logger.step(done, logs, lr, grad_norm)
            if val_items and ((args.val_every and done % args.val_every == 0) or done == args.steps):
                if dist_info.is_main:
                    logger.validation(done, *validate(model, val_items, args.valid_iters, dist_info.device,
                                                      args.val_max_pairs))
                dist_info.barrier()
            if done % args.save_every == 0 or done == args.steps:
                if dist_info.is_main:
                    save_training_checkpoint(run_dir, state, done, plan, args, args.keep_checkpoints)
                dist_info.barrier()
    finally:
        logger.close()
    if dist_info.is_main:
        print(json.dumps({"run": str(run_dir), "steps": args.steps, "last_loss": logs["loss"]}))
    return 0
