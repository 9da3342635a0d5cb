"""Pseudo-label DATA with the Selective-IGEV teacher: LABELS/<sample>/disparity.npy, valid.png, manifest.json.

The teacher runs on each pair and on the mirrored, swapped pair (which gives the right view's disparity); a
pixel is trusted (valid.png = 255) when the two views agree within --lr-threshold pixels and its disparity lies
in the valid range. Defaults are upstream's Middlebury settings (80 iterations, max disparity 768).

Every file is written atomically and a sample is complete once its label.json exists, so re-running the same
command resumes. LABELS refuses a different teacher checkpoint, model config or thresholds. Under torchrun
(WORLD_SIZE > 1) the samples are split across ranks and rank 0 writes the merged manifest.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write, atomic_write_json
from .cli import CliError
from .provenance import sha256_file, software_versions

MANIFEST = "manifest.json"
RECORD = "label.json"  # written last: marks a sample complete
FAILURE = "failure.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Thresholds:
    """Validity rules, recorded in the manifest.

    lr_threshold: largest |d_left(x) - d_right(x - d_left(x))| in pixels for a trusted pixel.
    min_disp, max_disp: trusted disparities lie in (min_disp, max_disp]; max_disp None = the teacher's max_disp.
    """

    lr_threshold: float = 1.0
    min_disp: float = 0.0
    max_disp: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA", help="stereo pairs (any layout stereo_distill.datasets reads)")
    parser.add_argument("--teacher", type=Path, required=True, metavar="CKPT",
                        help="teacher checkpoint (official Selective-IGEV state_dict or ours)")
    parser.add_argument("--out", type=Path, required=True, metavar="LABELS", help="output folder")
    parser.add_argument("--model", default="selective_igev", help="registered teacher network (default: selective_igev)")
    parser.add_argument("--iters", type=int, default=80, help="GRU iterations (default: 80, upstream's Middlebury)")
    parser.add_argument("--max-disp", type=int, default=768, help="cost volume range in pixels (default: 768)")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per forward pass; same-size pairs only")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision on CUDA; the fragile parts stay float32; CPU always runs fp32")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--lr-threshold", type=float, default=Thresholds.lr_threshold,
                        help="left-right consistency threshold in pixels (default: 1.0)")
    parser.add_argument("--min-valid-disp", type=float, default=Thresholds.min_disp,
                        help="disparities at or below this are not trusted (default: 0)")
    parser.add_argument("--max-valid-disp", type=float, default=None,
                        help="disparities above this are not trusted (default: --max-disp)")


# ----------------------------------------------------------------------------------------------- the label itself
def consistency_mask(disp_left, disp_right, thresholds: Thresholds, max_disp: float):
    """Trusted pixels of the left view.

    disp_left, disp_right: [B, H, W] torch tensors, positive disparities of the left and right views.
    Each left pixel x is warped to x - d_left(x) in the right view, where d_right is read by linear
    interpolation; pixels warping outside the right image cannot be checked and are not trusted.
    Returns bool [B, H, W].
    """
    import torch

    width = disp_left.shape[-1]
    xs = torch.arange(width, device=disp_left.device, dtype=disp_left.dtype).expand_as(disp_left)
    # A non-finite teacher value (fp16 overflow) must not become an out-of-range gather index: it is sent outside
    # the image, so the pixel is simply not trusted.
    x_right = torch.nan_to_num(xs - disp_left, nan=-1.0, posinf=-1.0, neginf=-1.0)
    inside = (x_right >= 0) & (x_right <= width - 1)
    x_clamped = x_right.clamp(0, width - 1)
    x0 = x_clamped.floor()
    weight = x_clamped - x0
    i0 = x0.long()
    i1 = (i0 + 1).clamp(max=width - 1)
    warped = (1 - weight) * disp_right.gather(-1, i0) + weight * disp_right.gather(-1, i1)
    upper = max_disp if thresholds.max_disp is None else thresholds.max_disp
    return (
        inside
        & torch.isfinite(disp_left)
        & ((disp_left - warped).abs() <= thresholds.lr_threshold)
        & (disp_left > thresholds.min_disp)
        & (disp_left <= upper)
    )


def label_batch(model, left, right, iters: int | None, thresholds: Thresholds):
    """Teacher disparity and validity for a batch.

    left, right: float32 [B, 3, H, W] RGB 0..255 on the model's device. Returns (disparity float32 [B, H, W],
    valid bool [B, H, W]) as numpy. The right view's disparity is the teacher's output on the pair mirrored
    left-right with the views swapped (positive disparities again), mirrored back. The two passes run separately
    so that the left-view labels are exactly `model.predict(left, right)`.
    """
    import torch

    disp_left = model.predict(left, right, iters=iters)[:, 0].float()
    mirrored = model.predict(torch.flip(right, dims=[-1]), torch.flip(left, dims=[-1]), iters=iters)
    disp_right = torch.flip(mirrored[:, 0].float(), dims=[-1])
    valid = consistency_mask(disp_left, disp_right, thresholds, float(model.config.max_disp))
    return disp_left.cpu().numpy(), valid.cpu().numpy()


# ------------------------------------------------------------------------------------------------ bookkeeping
def settings_of(model, checkpoint: Path, checkpoint_sha: str, thresholds: Thresholds) -> dict:
    """What makes labels comparable: LABELS holds labels of exactly one of these.

    Normalised through JSON (tuples become lists) so that it compares equal to what a manifest holds.
    """
    return json.loads(json.dumps({
        "teacher": {"model": model.name, "checkpoint": str(checkpoint), "sha256": checkpoint_sha,
                    "config": dataclasses.asdict(model.config)},
        "thresholds": dataclasses.asdict(thresholds),
    }))


def check_compatible(manifest_path: Path, settings: dict) -> None:
    """Refuse an existing LABELS made with another teacher, config or thresholds."""
    if not manifest_path.is_file():
        return
    try:
        existing = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CliError(f"{manifest_path} is unreadable ({error}); move it away to start over") from None
    problems = []
    old_teacher, new_teacher = existing.get("teacher", {}), settings["teacher"]
    if old_teacher.get("model") != new_teacher["model"]:
        problems.append(f"teacher model {old_teacher.get('model')} vs {new_teacher['model']}")
    if old_teacher.get("sha256") != new_teacher["sha256"]:
        problems.append(f"teacher checkpoint sha256 {str(old_teacher.get('sha256'))[:12]}... vs "
                        f"{new_teacher['sha256'][:12]}...")
    old_config, new_config = old_teacher.get("config", {}), new_teacher["config"]
    changed = sorted(k for k in set(old_config) | set(new_config) if old_config.get(k) != new_config.get(k))
    if changed:
        problems.append("config " + ", ".join(f"{k} {old_config.get(k)!r} vs {new_config.get(k)!r}" for k in changed))
    old_thr, new_thr = existing.get("thresholds", {}), settings["thresholds"]
    changed = sorted(k for k in set(old_thr) | set(new_thr) if old_thr.get(k) != new_thr.get(k))
    if changed:
        problems.append("thresholds " + ", ".join(f"{k} {old_thr.get(k)!r} vs {new_thr.get(k)!r}" for k in changed))
    if problems:
        raise CliError(f"{manifest_path.parent} holds labels made with different settings ({'; '.join(problems)}); "
                       "use another --out folder rather than mixing labels")


def sample_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("disparity.npy", "valid.png", RECORD))


def remove_partials(folder: Path) -> None:
    """Temporary files a killed run left behind (atomic_io's `.<stem>.*.partial.*`); only this rank writes here."""
    if folder.is_dir():
        for stale in folder.glob(".*.partial*"):
            stale.unlink(missing_ok=True)


def write_label(folder: Path, disparity: np.ndarray, valid: np.ndarray) -> dict:
    from .datasets import write_image

    atomic_write(folder / "disparity.npy", lambda handle: np.save(handle, disparity.astype(np.float32)))
    write_image(folder / "valid.png", np.where(valid, 255, 0).astype(np.uint8))
    record = {"height": int(disparity.shape[0]), "width": int(disparity.shape[1]),
              "valid_share": round(float(valid.mean()), 6)}
    (folder / FAILURE).unlink(missing_ok=True)
    atomic_write_json(folder / RECORD, record)
    return record


def write_manifest(out: Path, settings: dict, names: Sequence[str], extra: dict) -> dict:
    """Merge the per-sample records of `names` found under `out` into LABELS/manifest.json (atomically)."""
    samples, failures = {}, {}
    for name in names:
        folder = out / name
        if sample_complete(folder):
            samples[name] = json.loads((folder / RECORD).read_text())
        elif (folder / FAILURE).is_file():
            failures[name] = json.loads((folder / FAILURE).read_text())["error"]
    shares = [s["valid_share"] for s in samples.values()]
    manifest = {
        "format": MANIFEST_FORMAT,
        **settings,
        **extra,
        "software": software_versions(),
        "samples": samples,
        "failures": failures,
        "summary": {"samples": len(names), "labelled": len(samples), "failed": len(failures),
                    "pending": len(names) - len(samples) - len(failures),
                    "mean_valid_share": round(float(np.mean(shares)), 6) if shares else None},
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------- batching
def plan_batches(samples, batch_size: int) -> list[list]:
    """Same-size samples in batches of at most batch_size, ordered by their first sample's name.

    The plan depends only on the dataset and batch_size, so a resumed run or another world size computes each
    sample in the same batch as an uninterrupted single-process run (identical numerics).
    """
    if batch_size == 1:
        return [[sample] for sample in samples]
    from PIL import Image  # reads only the header; decoding every image to learn its size would double the I/O

    groups: dict[tuple[int, int], list] = {}
    for sample in samples:
        try:
            with Image.open(sample.left) as image:
                size = image.size
        except OSError:
            size = (-1, -1)  # unreadable: its own batch, where it fails and is recorded
        groups.setdefault(size, []).append(sample)
    batches = [group[i: i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
    return sorted(batches, key=lambda batch: batch[0].name)


# ------------------------------------------------------------------------------------------------------ runner
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device_arg: str | None) -> tuple[Distributed, str]:
    """torchrun's environment -> process group (nccl on CUDA, gloo on CPU) and this rank's device."""
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # NCCL collectives run on the current device
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return Distributed(rank, world_size, local_rank), device


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .datasets import DatasetError, open_dataset

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.iters < 1:
        raise CliError(f"--iters must be >= 1, got {args.iters}")
    if not args.teacher.is_file():
        raise CliError(f"teacher checkpoint {args.teacher} does not exist")
    try:
        dataset = open_dataset(args.data)
    except DatasetError as error:
        raise CliError(str(error)) from None
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    thresholds = Thresholds(args.lr_threshold, args.min_valid_disp, args.max_valid_disp)
    if thresholds.lr_threshold < 0:
        raise CliError(f"--lr-threshold must be >= 0, got {thresholds.lr_threshold}")

    dist_info, device = init_distributed(args.device)
    try:
        return _label_all(args, dataset, out, thresholds, dist_info, device, torch, tqdm)
    finally:
        if dist_info.active:
            import torch.distributed as dist

            dist.destroy_process_group()


def _label_all(args, dataset, out: Path, thresholds: Thresholds, dist_info: Distributed, device: str, torch, tqdm):
    from stereo_depth_ros.models import load_model

    from .datasets import DatasetError

    started = time.monotonic()
    try:
        model = load_model(args.model, checkpoint=str(args.teacher), device=device, precision=args.precision,
                           valid_iters=args.iters, max_disp=args.max_disp)
    except (ValueError, RuntimeError, OSError) as error:
        raise CliError(f"cannot load teacher {args.teacher}: {' '.join(str(error).split())}") from None
    model.eval()
    if thresholds.max_disp is None:
        thresholds = dataclasses.replace(thresholds, max_disp=float(model.config.max_disp))
    settings = settings_of(model, args.teacher.resolve(), sha256_file(args.teacher), thresholds)
    check_compatible(out / MANIFEST, settings)  # every rank checks, so every rank stops on a mismatch
    names = dataset.names()
    extra = {"data": str(Path(args.data).resolve())}
    if dist_info.rank == 0:
        remove_partials(out)
    if dist_info.rank == 0 and not (out / MANIFEST).is_file():
        # Written before the first label so that an interrupted run is still locked to these settings.
        write_manifest(out, settings, names, extra)
    dist_info.barrier()

    batches = plan_batches(list(dataset), args.batch_size)[dist_info.rank:: dist_info.world_size]
    todo = [batch for batch in batches if not all(sample_complete(out / s.name) for s in batch)]
    progress = tqdm(total=sum(len(b) for b in todo), desc=f"label[{dist_info.rank}]" if dist_info.active else "label",
                    unit="pair", disable=None, file=sys.stderr, position=dist_info.rank)
    labelled = 0
    for batch in todo:
        lefts, rights, members = [], [], []
        for sample in batch:
            remove_partials(out / sample.name)
            try:
                left, right = sample.load_pair()
            except DatasetError as error:
                _record_failure(out, sample.name, str(error))
                progress.update(1)
                continue
            lefts.append(left)
            rights.append(right)
            members.append(sample)
        if not members:
            continue
        left_t = torch.from_numpy(np.stack(lefts)).permute(0, 3, 1, 2).float().to(device)
        right_t = torch.from_numpy(np.stack(rights)).permute(0, 3, 1, 2).float().to(device)
        disparity, valid = label_batch(model, left_t, right_t, None, thresholds)
        for k, sample in enumerate(members):
            if not sample_complete(out / sample.name):
                write_label(out / sample.name, disparity[k], valid[k])
                labelled += 1
            progress.update(1)
    progress.close()

    dist_info.barrier()
    if dist_info.rank == 0:
        manifest = write_manifest(out, settings, names, extra)
        summary = manifest["summary"]
        print(f"label: {labelled} labelled now, {summary['labelled']}/{summary['samples']} complete, "
              f"{summary['failed']} failed, mean valid share {summary['mean_valid_share']}, "
              f"{time.monotonic() - started:.1f} s -> {out}", file=sys.stderr)
        for name, error in manifest["failures"].items():
            print(f"label: failed {name}: {error}", file=sys.stderr)
        return 1 if manifest["failures"] else 0
    # Rank 0 reports every rank's failures; a non-zero exit here could make torchrun stop rank 0 before it has
    # written the manifest.
    return 0


def _record_failure(out: Path, name: str, error: str) -> None:
    print(f"label: skipping {name}: {error}", file=sys.stderr)
    atomic_write_json(out / name / FAILURE, {"error": error})


__all__ = ["Thresholds", "add_arguments", "consistency_mask", "label_batch", "plan_batches", "run"]
