"""Pseudo-label DATA with a teacher: LABELS/<sample>/disparity.npy, valid.png, manifest.json, report, contact sheet.

The teacher (--teacher): a checkpoint of either network (default Selective-IGEV settings: upstream's Middlebury
80 iterations, max disparity 768), one of our ONNX exports, or `sgbm` (OpenCV semi-global matching). It runs on
each pair and on the mirrored, swapped pair (which gives the right view's disparity); a pixel is trusted
(valid.png = 255) when the two views agree within --lr-threshold pixels and its disparity lies in the valid range.
Beside the manifest: report.json (per-sample valid share and left-right disagreement) and contact_sheet.png
(left | teacher disparity | valid mask), to look at before training.

Every file is written atomically and a sample is complete once its label.json exists, so re-running the same
command resumes. LABELS refuses a different teacher (kind, file, settings) or thresholds. Under torchrun
(WORLD_SIZE > 1, one machine or several) the ranks take batches on demand (label_shards.claim) and rank 0 writes
the merged manifest and the report; the labels are byte-identical to one process's. Several machines need DATA
and LABELS at the same path on each (LABELS on a shared filesystem): checked before any work starts.
Each rank's throughput is printed at the end (pairs/s through the teacher, start-up apart).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write, atomic_write_json

from .cli import CliError
from .provenance import software_versions

MANIFEST = "manifest.json"
RECORD = "label.json"  # written last: marks a sample complete
FAILURE = "failure.json"
MANIFEST_FORMAT = 2  # 2: the teacher entry is {kind, model, checkpoint, sha256, settings} (any estimator)


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
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="stereo pairs (any layout stereo_distill.datasets reads)")
    parser.add_argument("--teacher", required=True, metavar="TEACHER",
                        help="a checkpoint of either network (official state_dict or ours), an ONNX export "
                             "(stereo-distill export), or 'sgbm' (OpenCV semi-global matching)")
    parser.add_argument("--out", type=Path, required=True, metavar="LABELS", help="output folder")
    parser.add_argument("--model", default="auto",
                        help="network of a checkpoint teacher (default auto: recognised by its keys)")
    parser.add_argument("--iters", type=int, default=None,
                        help="GRU iterations of a checkpoint (default: 80, upstream's Middlebury); an ONNX export's "
                             "are fixed; sgbm has none")
    parser.add_argument("--max-disp", type=int, default=None,
                        help="disparity range in pixels (default: 768 for a checkpoint, 192 for sgbm; fixed in an "
                             "ONNX export)")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per forward pass; same-size pairs only")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="checkpoint teachers: autocast precision on CUDA; the fragile parts stay float32; "
                             "CPU always runs fp32")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--lr-threshold", type=float, default=Thresholds.lr_threshold,
                        help="left-right consistency threshold in pixels (default: 1.0)")
    parser.add_argument("--min-valid-disp", type=float, default=Thresholds.min_disp,
                        help="disparities at or below this are not trusted (default: 0)")
    parser.add_argument("--max-valid-disp", type=float, default=None,
                        help="disparities above this are not trusted (default: the teacher's range)")
    parser.add_argument("--sheet-rows", type=int, default=32,
                        help="at most this many samples on contact_sheet.png (default 32; see docs/data.md)")


# ----------------------------------------------------------------------------------------------- the label itself
def left_right_disagreement(disp_left, disp_right):
    """(|d_left(x) - d_right(x - d_left(x))|, checkable) for [B, H, W] torch tensors of both views' disparities.

    Each left pixel x is warped to x - d_left(x) in the right view, where d_right is read by linear
    interpolation; pixels warping outside the right image cannot be checked (checkable False). NaN (no value
    in either view) gives a NaN disagreement.
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
    return (disp_left - warped).abs(), inside


def consistency_mask(disp_left, disp_right, thresholds: Thresholds, max_disp: float):
    """Trusted pixels of the left view: checkable, within thresholds.lr_threshold of the right view, and in
    (min_disp, max_disp]. disp_left, disp_right: [B, H, W] torch tensors. Returns bool [B, H, W]."""
    import torch

    disagreement, inside = left_right_disagreement(disp_left, disp_right)
    upper = max_disp if thresholds.max_disp is None else thresholds.max_disp
    return (
        inside
        & torch.isfinite(disp_left)
        & (disagreement <= thresholds.lr_threshold)
        & (disp_left > thresholds.min_disp)
        & (disp_left <= upper)
    )


def label_batch(estimator, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray], thresholds: Thresholds,
                max_disp: float) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Teacher disparity, validity and left-right statistics for same-size pairs (uint8 RGB [H, W, 3]).

    Returns (disparity float32 [B, H, W], 0 where the teacher has no value; valid bool [B, H, W]; one dict of
    left-right statistics per pair). The right view's disparity is the teacher's output on the pair mirrored
    left-right with the views swapped (positive disparities again), mirrored back; the two passes run
    separately, so the left-view labels are exactly what `estimator.estimate` gives.
    """
    import torch

    def flip(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])

    left_view = estimator.estimate_batch(list(lefts), list(rights))
    mirrored = estimator.estimate_batch([flip(right) for right in rights], [flip(left) for left in lefts])
    disp_left = torch.from_numpy(np.stack([e.disparity for e in left_view]).astype(np.float32))
    disp_right = torch.from_numpy(np.stack([flip(e.disparity) for e in mirrored]).astype(np.float32))
    valid = consistency_mask(disp_left, disp_right, thresholds, max_disp)
    disagreement, inside = left_right_disagreement(disp_left, disp_right)
    checked = inside & torch.isfinite(disagreement)
    stats = []
    for k in range(disp_left.shape[0]):
        values = disagreement[k][checked[k]]
        stats.append({
            "lr_checked_share": round(float(checked[k].float().mean()), 6),
            "lr_mean_px": round(float(values.mean()), 6) if values.numel() else None,
            "lr_inconsistent_share": (round(float((values > thresholds.lr_threshold).float().mean()), 6)
                                      if values.numel() else None),
        })
    return torch.nan_to_num(disp_left, nan=0.0).numpy(), valid.numpy(), stats


# ------------------------------------------------------------------------------------------------ bookkeeping
def sample_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("disparity.npy", "valid.png", RECORD))


def remove_partials(folder: Path) -> None:
    """Temporary files a killed run left behind (atomic_io's `.<stem>.*.partial.*`); only this rank writes here."""
    if folder.is_dir():
        for stale in folder.glob(".*.partial*"):
            stale.unlink(missing_ok=True)


def write_label(folder: Path, disparity: np.ndarray, valid: np.ndarray, stats: dict | None = None) -> dict:
    from stereo_depth_ros.dataset_layout import write_image

    atomic_write(folder / "disparity.npy", lambda handle: np.save(handle, disparity.astype(np.float32)))
    write_image(folder / "valid.png", np.where(valid, 255, 0).astype(np.uint8))
    record = {"height": int(disparity.shape[0]), "width": int(disparity.shape[1]),
              "valid_share": round(float(valid.mean()), 6), **(stats or {})}
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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stereo_depth_ros.inference import source_kind

    from .datasets import DatasetError, open_dataset
    from .distributed import distributed

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag, value in (("--iters", args.iters), ("--max-disp", args.max_disp)):
        if value is not None and value < 1:
            raise CliError(f"{flag} must be >= 1, got {value}")
    if args.sheet_rows < 0:
        raise CliError(f"--sheet-rows must be >= 0, got {args.sheet_rows}")
    if source_kind(args.teacher) != "opencv_sgbm" and not Path(args.teacher).is_file():
        raise CliError(f"teacher {args.teacher} does not exist (a checkpoint, an .onnx export, or 'sgbm')")
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

    with distributed(args.device) as dist_info:
        return _label_all(args, dataset, out, thresholds, dist_info, str(dist_info.device), tqdm)


def _label_all(args, dataset, out: Path, thresholds: Thresholds, dist_info, device: str, tqdm):
    from .datasets import DatasetError
    from .distributed import agree, check_shared_folder, digest
    from .label_report import SHEET, write_report
    from .label_shards import claim, plan_batches
    from .label_teacher import check_compatible, open_teacher

    started = time.monotonic()
    # Before anything is read or written: every rank must see one LABELS folder and the same DATA.
    check_shared_folder(dist_info, out, "--out")
    names = dataset.names()
    agree(dist_info, digest(names), f"DATA {args.data} (its samples)")
    teacher = open_teacher(args.teacher, args.model, args.iters, args.max_disp, args.precision, device)
    if thresholds.max_disp is None:
        thresholds = dataclasses.replace(thresholds, max_disp=teacher.max_disp)
    # Normalised through JSON (tuples become lists) so that it compares equal to what a manifest holds.
    settings = json.loads(json.dumps({"teacher": teacher.description, "thresholds": dataclasses.asdict(thresholds)}))
    agree(dist_info, settings, f"the teacher {args.teacher} (its sha256) or a setting")
    check_compatible(out / MANIFEST, settings)  # every rank checks, so every rank stops on a mismatch
    extra = {"data": str(Path(args.data).resolve())}
    if dist_info.rank == 0:
        remove_partials(out)
    if dist_info.rank == 0 and not (out / MANIFEST).is_file():
        # Written before the first label so that an interrupted run is still locked to these settings.
        write_manifest(out, settings, names, extra)
    batches = plan_batches(list(dataset), args.batch_size)
    # Rank 0 decides what is left (the others would look while it already writes) and every rank gets its list.
    todo = None
    if dist_info.is_main:
        todo = [i for i, batch in enumerate(batches) if not all(sample_complete(out / s.name) for s in batch)]
    todo = dist_info.broadcast(todo)
    progress = tqdm(total=sum(len(batches[i]) for i in todo) if not dist_info.active else None,
                    desc=f"label[{dist_info.rank}]" if dist_info.active else "label",
                    unit="pair", disable=None, file=sys.stderr, position=dist_info.rank)
    labelled = 0
    work_started = time.monotonic()
    for index in claim(todo, dist_info):
        batch = batches[index]
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
        try:
            disparity, valid, stats = label_batch(teacher.estimator, lefts, rights, thresholds, teacher.max_disp)
        except ValueError as teacher_error:  # e.g. a fixed-size ONNX teacher given pairs of another size
            for sample in members:
                _record_failure(out, sample.name, f"teacher: {' '.join(str(teacher_error).split())}")
                progress.update(1)
            continue
        for k, sample in enumerate(members):
            if not sample_complete(out / sample.name):
                write_label(out / sample.name, disparity[k], valid[k], stats[k])
                labelled += 1
            progress.update(1)
    progress.close()
    # Every rank's throughput (pairs through the teacher, from its first batch to its last; start-up apart).
    throughput = dist_info.gather((socket.gethostname(), labelled, time.monotonic() - work_started,
                                   work_started - started))

    if dist_info.rank == 0:
        manifest = write_manifest(out, settings, names, extra)
        summary = manifest["summary"]
        print(f"label: {labelled} labelled now, {summary['labelled']}/{summary['samples']} complete, "
              f"{summary['failed']} failed, mean valid share {summary['mean_valid_share']}, "
              f"{time.monotonic() - started:.1f} s -> {out}", file=sys.stderr)
        _print_throughput(throughput)
        for name, message in manifest["failures"].items():
            print(f"label: failed {name}: {message}", file=sys.stderr)
        report = write_report(out, manifest, dataset, args.sheet_rows)
        sheet = out / SHEET if report["contact_sheet"] else "(no labelled sample)"
        print(f"label: teacher {teacher.description['model']} ({teacher.description['kind']}); look at {sheet} "
              f"and {out / 'report.json'} before training", file=sys.stderr)
        return 1 if manifest["failures"] else 0
    # Rank 0 reports every rank's failures; a non-zero exit here could make torchrun stop rank 0 before it has
    # written the manifest.
    return 0


def _print_throughput(per_rank: list[tuple[str, int, float, float]]) -> None:
    """One line per rank (pairs/s through the teacher; bench/label.py reads these) and, for several, the sum."""
    for rank, (host, pairs, seconds, startup) in enumerate(per_rank):
        print(f"label: rank {rank} on {host}: {pairs} pairs in {seconds:.2f} s, "
              f"{pairs / seconds if pairs and seconds > 0 else 0.0:.4f} pairs/s (start-up {startup:.1f} s)",
              file=sys.stderr)
    if len(per_rank) > 1:
        total = sum(p for _, p, _, _ in per_rank)
        slowest = max(s for _, _, s, _ in per_rank)
        print(f"label: {len(per_rank)} ranks together: {total} pairs in {slowest:.2f} s, "
              f"{total / slowest if total and slowest > 0 else 0.0:.4f} pairs/s", file=sys.stderr)


def _record_failure(out: Path, name: str, error: str) -> None:
    print(f"label: skipping {name}: {error}", file=sys.stderr)
    atomic_write_json(out / name / FAILURE, {"error": error})


__all__ = ["Thresholds", "add_arguments", "consistency_mask", "label_batch", "left_right_disagreement", "run"]
