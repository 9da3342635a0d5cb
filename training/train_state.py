"""Everything a resumed `train` needs: RUN/checkpoints/step_<N>.pth + last.pth, the RNGs, and the run's settings.

A checkpoint holds the model (in load_model's format), optimizer, scheduler, grad scaler, every global RNG, the
data position and the arguments that define the run. Resuming refuses other settings, and falls back to the
newest intact step checkpoint when a crash or a full disk left last.pth unreadable: the unreadable file is set
aside (renamed NAME.corrupt-<UTC time>, kept for a post-mortem), last.pth is rewritten from the checkpoint resumed
from (eval, export and the loop read last.pth), and one line says so. The number of ranks is not part of the run,
the global batch is (batch size x ranks x accumulate): a run may continue on fewer or more machines with
--accumulate keeping the global batch (the same pairs per step, see train_data.DataPlan).
"""
from __future__ import annotations

import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli import CliError
from .train_data import DataPlan

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pth"
# Arguments that define the run: resuming with a different value would silently train something else. Not
# --accumulate: it trades against the number of ranks, and the global batch they make is checked on resume.
RUN_DEFINING_ARGS = (
    "data", "labels", "student", "steps", "batch_size", "crop", "precision", "seed", "lr",
    "weight_decay", "train_iters", "max_range", "gt_weight", "val_fraction", "augment", "scale_range",
)


def run_signature(args: Any) -> dict[str, Any]:
    sig = {}
    for key in RUN_DEFINING_ARGS:
        value = getattr(args, key)
        sig[key] = list(value) if isinstance(value, (tuple, list)) else value
    for key in ("data", "labels", "student"):
        if sig[key] != "none":
            sig[key] = str(Path(str(sig[key])).resolve())
    return sig


# --------------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every global RNG, as plain tensors/ints so that `torch.load(weights_only=True)` reads the checkpoint."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))  # (kind, keys, pos, has_gauss, gauss)
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


# ------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """The objects a checkpoint saves and restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler


def build_state(model: torch.nn.Module, args: Any, device: torch.device) -> TrainState:
    """AdamW + linear OneCycle as upstream (total_steps = steps + 100, pct_start 0.01, no momentum cycling)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.steps + 100, pct_start=0.01,
        cycle_momentum=False, anneal_strategy="linear",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    return TrainState(model, optimizer, scheduler, scaler)


def checkpoint_paths(run: Path, step: int) -> tuple[Path, Path]:
    folder = run / CHECKPOINT_DIR
    return folder / f"step_{step:08d}.pth", folder / LAST


def save_training_checkpoint(run: Path, state: TrainState, step: int, plan: DataPlan, args: Any, keep: int) -> None:
    from stereo_depth_ros.models.checkpoint import save_checkpoint

    extra = dict(
        step=step, optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(), rng=rng_state(),
        data_position=plan.position(step), run=run_signature(args),
        scaler=state.scaler.state_dict() if state.scaler.is_enabled() else None,
    )
    step_path, last_path = checkpoint_paths(run, step)
    save_checkpoint(step_path, state.model, **extra)
    save_checkpoint(last_path, state.model, **extra)
    if keep > 0:
        for old in sorted(step_path.parent.glob("step_*.pth"))[:-keep]:
            old.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any]:
    """A checkpoint as saved by `save_training_checkpoint`; ValueError (one line) if it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        text = str(error).strip().splitlines()
        raise ValueError(text[0] if text else type(error).__name__) from None
    if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
        raise ValueError("not a training checkpoint")
    return ckpt


def load_latest_checkpoint(run: Path, announce: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint with the highest step, loaded: last.pth, or a step file when a crash came between the two
    writes. An unreadable file (truncated by a crash or a full disk) is skipped with a warning in favour of the
    newest intact one; CliError naming the file when none is intact. None for a new run."""
    folder = run / CHECKPOINT_DIR
    last = folder / LAST
    candidates = ([last] if last.is_file() else []) + sorted(folder.glob("step_*.pth"), reverse=True)
    best: tuple[int, Path, dict[str, Any]] | None = None
    broken: list[tuple[Path, str]] = []
    for path in candidates:
        if best is not None and path != last and int(path.stem.split("_")[1]) <= best[0]:
            break  # older than the one we have
        try:
            ckpt = _read(path)
        except ValueError as error:
            broken.append((path, str(error)))
            continue
        if best is None or int(ckpt["step"]) > best[0]:
            best = (int(ckpt["step"]), path, ckpt)
        if path != last:
            break  # the newest intact step file
    if best is None:
        if broken:
            path, why = broken[0]
            raise CliError(f"cannot resume {run}: {path} is unreadable ({why}) and no intact checkpoint is left; "
                           "use a new --out")
        return None
    for path, why in broken if announce else []:  # rank 0 only under torchrun: one process renames
        aside = _set_aside(path)
        restored = ""
        if path == last and best[1] != last:
            _restore(best[1], last)
            restored = f", rewritten as {LAST}"
        print(f"warning: {path} is unreadable ({why}); set aside as {aside.name}; resuming from {best[1].name} "
              f"(step {best[0]}){restored}", file=sys.stderr)
    return best[1], best[2]


def _set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to NAME.corrupt-<UTC time> (no longer a candidate, kept for inspection)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for attempt in range(1, 100):
        if not aside.exists():
            break
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{attempt}")
    path.rename(aside)
    return aside


def _restore(source: Path, target: Path) -> None:
    """`target` as an atomic copy of the intact checkpoint `source`."""
    from stereo_depth_ros.atomic_io import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def resume(run: Path, state: TrainState, args: Any, plan: DataPlan, announce: bool = True) -> int:
    """Restore `state` from the run's latest checkpoint; returns the step to continue from (0 for a new run).
    plan: this launch's data plan (its global batch must be the run's). `announce`: print what was resumed (rank 0
    only under torchrun)."""
    latest = load_latest_checkpoint(run, announce)
    if latest is None:
        return 0
    path, ckpt = latest
    theirs, ours = ckpt.get("run") or {}, run_signature(args)
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise CliError(f"{run} holds a run with other settings ({', '.join(differ)}); use a new --out")
    saved_batch = int((ckpt.get("data_position") or {}).get("global_batch", plan.global_batch))
    if saved_batch != plan.global_batch:
        per_micro = plan.batch_size * plan.world
        fits = (f"on {plan.world} rank(s) resume with --accumulate {saved_batch // per_micro}"
                if saved_batch % per_micro == 0
                else f"use a number of ranks that divides {saved_batch // plan.batch_size}")
        raise CliError(f"{run} was trained with a global batch of {saved_batch} pairs; this launch makes "
                       f"{plan.global_batch} (batch size {plan.batch_size} x {plan.world} rank(s) x accumulate "
                       f"{plan.accumulate}): {fits}, or use a new --out")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and state.scaler.is_enabled():
        state.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    if announce:
        print(f"resuming {run} at step {int(ckpt['step'])} ({path.name})", file=sys.stderr)
    return int(ckpt["step"])
