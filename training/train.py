"""Distil the RT-IGEV student on the teacher's pseudo-labels (resumable; single process or torchrun).

Re-running the same command continues from RUN/checkpoints/last.pth with the same optimizer, schedule, RNG and
data position, so an interrupted run ends with the weights an uninterrupted one would have had (CPU float32).
Under torchrun every rank takes its share of the same global batch (gloo on CPU, NCCL on GPU); rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from stereo_depth_ros.atomic_io import atomic_write_json
from .augment import AugmentConfig, augment, center_crop
from .cli import CliError
from .losses import LossConfig, distillation_loss
from .metrics import DisparityMetrics

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pth"
# Arguments that define the run: resuming with a different value would silently train something else.
RUN_DEFINING_ARGS = (
    "data", "labels", "student", "steps", "batch_size", "accumulate", "crop", "precision", "seed", "lr",
    "weight_decay", "train_iters", "max_range", "gt_weight", "val_fraction", "augment", "scale_range",
)


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


# ----------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainItem:
    """One labelled pair: the dataset sample and its label folder."""

    sample: Any  # stereo_distill.datasets.StereoSample
    label_dir: Path


def read_label(label_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(disparity float32 [H,W], valid bool [H,W]) of LABELS/<sample>/; raises CliError naming a broken file."""
    import cv2

    try:
        disp = np.load(label_dir / "disparity.npy").astype(np.float32)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read label {label_dir / 'disparity.npy'}: {error}") from None
    valid_png = cv2.imread(str(label_dir / "valid.png"), cv2.IMREAD_UNCHANGED)
    if valid_png is None:
        raise CliError(f"cannot read label mask {label_dir / 'valid.png'}")
    if valid_png.shape[:2] != disp.shape:
        raise CliError(f"label {label_dir}: valid.png {valid_png.shape[:2]} and disparity.npy {disp.shape} differ")
    valid = (valid_png > 127) & np.isfinite(disp)
    return disp, valid


def load_item(item: TrainItem) -> dict[str, np.ndarray]:
    """The arrays augmentation works on (see stereo_distill.augment); ground truth only where DATA has it."""
    left, right = item.sample.load_pair()
    disp, valid = read_label(item.label_dir)
    if disp.shape != left.shape[:2]:
        raise CliError(f"label of {item.sample.name} is {disp.shape}, image is {left.shape[:2]}")
    out = {"left": left, "right": right, "disp": disp, "valid": valid}
    gt = item.sample.load_disparity()
    if gt is not None:
        out["gt_disp"] = np.nan_to_num(gt, nan=0.0).astype(np.float32)
        out["gt_valid"] = np.isfinite(gt) & (gt > 0)
    return out


def collect_items(data: str, labels: str) -> list[TrainItem]:
    """DATA samples that have a label folder; CliError for a missing folder or no labelled pair at all."""
    from .datasets import DatasetError, open_dataset

    labels_root = Path(labels)
    if not labels_root.is_dir():
        raise CliError(f"labels folder {labels_root} does not exist (run `stereo-distill label` first)")
    try:
        dataset = open_dataset(data)
    except DatasetError as error:
        raise CliError(str(error)) from None
    items = [TrainItem(s, labels_root / s.name) for s in dataset
             if (labels_root / s.name / "disparity.npy").is_file() and (labels_root / s.name / "valid.png").is_file()]
    if not items:
        raise CliError(f"no sample of {data} has a label in {labels_root} (expected <sample>/disparity.npy + valid.png)")
    return items


def split_items(items: list[TrainItem], val_fraction: float, seed: int) -> tuple[list[TrainItem], list[TrainItem]]:
    """The held-out split of `datasets.split_samples` (the one `eval --split val` uses too), on training items."""
    from .datasets import split_samples

    by_name = {item.sample.name: item for item in items}
    train_s, val_s = split_samples([item.sample for item in items], val_fraction, seed)
    train = [by_name[s.name] for s in train_s]
    val = [by_name[s.name] for s in val_s]
    return train, val


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """Permutation of the training items for one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass(frozen=True)
class DataPlan:
    """Which items every (step, micro-batch, rank) gets.

    A step consumes one global batch of batch_size x world x accumulate consecutive entries of the epoch's
    order; the entry for micro-batch k, rank r, slot b sits at (k * world + r) * batch_size + b. So one process
    accumulating K micro-batches of B sees exactly what K ranks with B each see, and the assignment depends
    only on (seed, epoch, step): resuming needs nothing but the step.
    """

    n_items: int
    batch_size: int
    world: int
    accumulate: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        return self.n_items // self.global_batch

    def position(self, step: int) -> dict[str, int]:
        return {"step": step, "epoch": step // self.steps_per_epoch, "index_in_epoch": step % self.steps_per_epoch,
                "global_batch": self.global_batch, "seed": self.seed}

    def indices(self, step: int, micro: int, rank: int) -> list[tuple[int, int, int]]:
        """[(item index, epoch, position in epoch)] for one micro-batch of one rank."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.seed, epoch, self.n_items)
        base = in_epoch * self.global_batch + (micro * self.world + rank) * self.batch_size
        return [(order[base + b], epoch, base + b) for b in range(self.batch_size)]


class StepBatches(torch.utils.data.Dataset):
    """Micro-batch i (counted from step 0) of this rank, augmented; a pure function of i (so workers are safe)."""

    def __init__(self, items: list[TrainItem], plan: DataPlan, rank: int, aug: AugmentConfig | None,
                 crop: tuple[int, int]):
        self.items, self.plan, self.rank, self.aug, self.crop = items, plan, rank, aug, tuple(crop)

    def __len__(self) -> int:  # only used by samplers we do not use
        return sys.maxsize

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step, micro = divmod(i, self.plan.accumulate)
        samples = []
        for index, epoch, pos in self.plan.indices(step, micro, self.rank):
            raw = load_item(self.items[index])
            if self.aug is not None:
                rng = np.random.default_rng([self.plan.seed, epoch, pos])
                samples.append(augment(raw, rng, self.aug))
            else:
                samples.append(_fit_crop(raw, self.crop))
        return collate(samples)


def _fit_crop(raw: dict[str, np.ndarray], crop: tuple[int, int]) -> dict[str, np.ndarray]:
    out = center_crop(raw, crop)
    if out["left"].shape[:2] != tuple(crop):
        raise CliError(f"image {raw['left'].shape[:2]} is smaller than the crop {crop}; use --augment or a smaller crop")
    return out


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    def stack(key: str, fill: float = 0.0) -> torch.Tensor:
        arrays = [s[key] if key in s else np.full(samples[0]["disp"].shape, fill, np.float32) for s in samples]
        return torch.from_numpy(np.stack([np.asarray(a, np.float32) for a in arrays]))

    return {
        "left": torch.from_numpy(np.stack([s["left"] for s in samples]).astype(np.float32)).permute(0, 3, 1, 2),
        "right": torch.from_numpy(np.stack([s["right"] for s in samples]).astype(np.float32)).permute(0, 3, 1, 2),
        "disp": stack("disp").unsqueeze(1),
        "valid": stack("valid").unsqueeze(1),
        "gt_disp": stack("gt_disp").unsqueeze(1),
        "gt_valid": stack("gt_valid").unsqueeze(1),
    }


class _Range(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


# ------------------------------------------------------------------------------------------------ runtime
@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device_arg: str) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {device_arg}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, local_rank, device)


def rng_state() -> dict[str, Any]:
    """Every global RNG, as plain tensors/ints so that `torch.load(weights_only=True)` reads the checkpoint."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: torch.nn.Module, args) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW + linear OneCycle as upstream (total_steps = steps + 100, pct_start 0.01, no momentum cycling)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.steps + 100, pct_start=0.01,
        cycle_momentum=False, anneal_strategy="linear",
    )
    return optimizer, scheduler


def run_signature(args) -> dict[str, Any]:
    sig = {}
    for key in RUN_DEFINING_ARGS:
        value = getattr(args, key)
        sig[key] = list(value) if isinstance(value, (tuple, list)) else value
    for key in ("data", "labels", "student"):
        if sig[key] != "none":
            sig[key] = str(Path(sig[key]).resolve())
    return sig


def _validate_args(args) -> None:
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


def load_student(args, device: torch.device):
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


def checkpoint_paths(run: Path, step: int) -> tuple[Path, Path]:
    folder = run / CHECKPOINT_DIR
    return folder / f"step_{step:08d}.pth", folder / LAST


def save_training_checkpoint(run: Path, model, optimizer, scheduler, scaler, step: int, plan: DataPlan,
                             args, keep: int) -> None:
    from stereo_depth_ros.models.checkpoint import save_checkpoint

    extra = dict(
        step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state(),
        data_position=plan.position(step), run=run_signature(args),
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
    )
    step_path, last_path = checkpoint_paths(run, step)
    save_checkpoint(step_path, model, **extra)
    save_checkpoint(last_path, model, **extra)
    if keep > 0:
        for old in sorted(step_path.parent.glob("step_*.pth"))[:-keep]:
            old.unlink(missing_ok=True)


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint with the highest step: last.pth, or a step file when a crash came between the two writes."""
    folder = run / CHECKPOINT_DIR
    steps = sorted(folder.glob("step_*.pth"))
    last = folder / LAST
    if not last.is_file():
        return steps[-1] if steps else None
    if steps:
        last_step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["step"])
        if int(steps[-1].stem.split("_")[1]) > last_step:
            return steps[-1]
    return last


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, items: list[TrainItem], iters: int | None, device: torch.device, max_pairs: int
             ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """EPE/D1/bad-N of the eval-mode student against the labels on held-out pairs (full images).

    Returns (metrics, a few visual samples). Puts the model back into training mode (freeze_bn) afterwards.
    """
    net = _unwrap(model)
    net.eval()
    metrics = DisparityMetrics(reference="labels")
    visuals = []
    try:
        for item in items[:max_pairs]:
            left, right = item.sample.load_pair()
            disp, valid = read_label(item.label_dir)
            to_t = lambda a: torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None].to(device)  # noqa: E731
            pred = net.predict(to_t(left), to_t(right), iters=iters)
            pred = pred.float()[0, 0].cpu().numpy()
            metrics.update(pred, disp, valid)
            if len(visuals) < 2:
                visuals.append({"left": left, "label": np.where(valid, disp, np.nan), "pred": pred})
    finally:
        net.train()
    return metrics.result(), visuals


def colorize(disp: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """uint8 [H,W,3] RGB turbo colour map of a disparity (NaN black), for TensorBoard and reports."""
    import cv2

    finite = np.isfinite(disp)
    if vmax is None:
        vmax = float(np.percentile(disp[finite], 99)) if finite.any() else 1.0
    scaled = np.clip(np.nan_to_num(disp, nan=0.0) / max(vmax, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~finite] = 0
    return rgb


# ---------------------------------------------------------------------------------------------------- main
def run(args) -> int:
    _validate_args(args)
    rt = setup_runtime(args.device)
    try:
        return _train(args, rt)
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, rt: Runtime) -> int:
    run_dir = Path(args.out)
    items = collect_items(args.data, args.labels)
    train_items, val_items = split_items(items, args.val_fraction, args.seed)
    plan = DataPlan(len(train_items), args.batch_size, rt.world, args.accumulate, args.seed)
    if plan.steps_per_epoch < 1:
        raise CliError(
            f"{len(train_items)} training pairs cannot fill one global batch of {plan.global_batch} "
            f"(batch size {args.batch_size} x {rt.world} ranks x accumulate {args.accumulate})"
        )

    model = load_student(args, rt.device)
    model.train()  # upstream's training configuration (freeze_bn)
    optimizer, scheduler = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=args.precision == "fp16")

    start_step = 0
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True)
        if ckpt.get("run") != run_signature(args):
            theirs, ours = ckpt.get("run") or {}, run_signature(args)
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise CliError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); use a new --out")
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_step = int(ckpt["step"])
        if rt.is_main:
            print(f"resuming {run_dir} at step {start_step} ({latest.name})", file=sys.stderr)
        del ckpt
    elif rt.is_main:
        print(f"training {len(train_items)} pairs, validating on {len(val_items)}; global batch {plan.global_batch}",
              file=sys.stderr)
    if start_step >= args.steps:
        if rt.is_main:
            print(f"{run_dir} is complete ({start_step} steps)", file=sys.stderr)
        return 0

    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "run.json", {"args": run_signature(args), "world_size": rt.world,
                                                 "train_pairs": [i.sample.name for i in train_items],
                                                 "val_pairs": [i.sample.name for i in val_items]})

    net = model
    if rt.distributed:
        # Some parameters (e.g. test-path-only layers) get no gradient in the training forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, find_unused_parameters=True,
        )

    aug = None
    if args.augment:
        aug = AugmentConfig(crop=tuple(args.crop), min_scale=args.scale_range[0], max_scale=args.scale_range[1])
    batches = StepBatches(train_items, plan, rt.rank, aug, tuple(args.crop))
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=_Range(start_step * args.accumulate, args.steps * args.accumulate),
        num_workers=args.workers, pin_memory=rt.device.type == "cuda", persistent_workers=False,
    )
    loss_cfg = LossConfig(max_range=args.max_range, gt_weight=args.gt_weight)

    writer = None
    if rt.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=start_step, disable=not rt.is_main, unit="step", dynamic_ncols=True)
    batch_iter = iter(loader)
    t0, window_steps = time.perf_counter(), 0
    try:
        for step in range(start_step, args.steps):
            logs: dict[str, float] = {}
            for micro in range(args.accumulate):
                batch = {k: v.to(rt.device, non_blocking=True) for k, v in next(batch_iter).items()}
                sync = nullcontext() if (micro == args.accumulate - 1 or not rt.distributed) else net.no_sync()
                with sync:
                    # Mixed precision is the model's own (config.precision, CUDA only), as upstream's.
                    init_disp, preds = net(batch["left"], batch["right"], iters=args.train_iters, test_mode=False)
                    loss, metrics = distillation_loss(
                        init_disp, preds, batch["disp"], batch["valid"], batch["gt_disp"], batch["gt_valid"], loss_cfg,
                    )
                    scaler.scale(loss / args.accumulate).backward()
                for k, v in metrics.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / args.accumulate
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            done = step + 1
            window_steps += 1

            if rt.distributed:
                keys = sorted(logs)
                packed = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=rt.device)
                dist.all_reduce(packed)
                logs = {k: float(v) / rt.world for k, v in zip(keys, packed.tolist())}
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"loss is {logs['loss']} at step {done}; lower --lr or use fp32")
            if rt.is_main:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", epe=f"{logs.get('label_epe', float('nan')):.2f}")
                if done % args.log_every == 0 or done == args.steps:
                    elapsed = time.perf_counter() - t0
                    for k, v in logs.items():
                        writer.add_scalar(f"train/{k}", v, done)
                    writer.add_scalar("train/lr", lr, done)
                    writer.add_scalar("train/grad_norm", float(grad_norm), done)
                    writer.add_scalar("train/steps_per_s", window_steps / max(elapsed, 1e-9), done)
                    t0, window_steps = time.perf_counter(), 0

            if val_items and ((args.val_every and done % args.val_every == 0) or done == args.steps):
                if rt.is_main:
                    val, visuals = validate(model, val_items, args.valid_iters, rt.device, args.val_max_pairs)
                    for k in ("epe", "d1", "bad1", "bad2", "bad3"):
                        writer.add_scalar(f"val/{k}", val[k], done)
                    for i, vis in enumerate(visuals):
                        vmax = float(np.nanpercentile(vis["label"], 99)) if np.isfinite(vis["label"]).any() else None
                        row = np.concatenate([vis["left"], colorize(vis["label"], vmax), colorize(vis["pred"], vmax)], 1)
                        writer.add_image(f"val/pair{i}_left_label_pred", row, done, dataformats="HWC")
                    tqdm.write(f"step {done}: val EPE {val['epe']:.3f} px, D1 {val['d1']:.4f} "
                               f"({val['pairs']} pairs)", file=sys.stderr)
                if rt.distributed:
                    dist.barrier()

            if done % args.save_every == 0 or done == args.steps:
                if rt.is_main:
                    save_training_checkpoint(run_dir, model, optimizer, scheduler, scaler, done, plan, args,
                                             args.keep_checkpoints)
                if rt.distributed:
                    dist.barrier()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if rt.is_main:
        print(json.dumps({"run": str(run_dir), "steps": args.steps, "last_loss": logs["loss"]}))
    return 0
