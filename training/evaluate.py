"""Evaluate a stereo model (our checkpoints, official ones, an exported ONNX file, or `sgbm`) on DATA.

Every model runs through the estimator the node runs (`stereo_depth_ros.inference.open_estimator`), so a
`.pth` and its ONNX export are scored on the same disparities (NaN where the estimator has no value). Metrics
(stereo_devkit.metrics: EPE, D1, bad-1/2/3, coverage) are pooled over the valid pixels of every pair, against
ground truth where DATA has it for every pair, else against the teacher's labels (--reference forces one).
`--compare TEACHER BEFORE` evaluates the teacher and the student before distillation on the same pairs and
writes a picture with the disparity and error maps side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_json
from stereo_depth_ros.model_names import MODEL_NAMES
from stereo_devkit.metrics import DisparityMetrics

from .cli import CliError
from .datasets import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint (.pth, ours or official), exported .onnx file, or 'sgbm' (OpenCV baseline)")
    parser.add_argument("--arch", choices=("auto",) + MODEL_NAMES, default="auto",
                        help="network of a .pth checkpoint (auto: its saved config, else try rt_igev then "
                             "selective_igev)")
    parser.add_argument("--data", required=True, help="DATA folder (any layout stereo_distill.datasets reads)")
    parser.add_argument("--labels", default=None, help="LABELS folder: the reference where DATA has no ground truth")
    parser.add_argument("--reference", choices=("auto", "ground_truth", "labels"), default="auto",
                        help="auto: ground truth when every pair has it, else labels")
    parser.add_argument("--iters", type=int, default=None, help="GRU iterations (default: the model's valid_iters)")
    parser.add_argument("--max-disp", type=int, default=None,
                        help="override the model's max_disp (torch models; sgbm: its search range, default 192)")
    parser.add_argument("--split", choices=("all", "val", "train"), default="all",
                        help="which pairs: all, or one side of train's seeded split (same --seed/--val-fraction)")
    parser.add_argument("--seed", type=int, default=666, help="split seed (as `train --seed`)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="split share (as `train --val-fraction`)")
    parser.add_argument("--max-pairs", type=int, default=0, help="evaluate at most N pairs (0 = all)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda (torch models; cpu also keeps onnxruntime on its CPU provider)")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here (atomically)")
    parser.add_argument("--compare", nargs=2, metavar=("TEACHER", "STUDENT_BEFORE"), default=None,
                        help="also evaluate these two (checkpoints, .onnx or sgbm) on the same pairs and write a "
                             "side-by-side picture")
    parser.add_argument("--teacher-iters", type=int, default=None, help="GRU iterations of the --compare teacher")
    parser.add_argument("--teacher-max-disp", type=int, default=None,
                        help="max_disp of the --compare teacher (--max-disp applies to the students only)")
    parser.add_argument("--report", default=None,
                        help="PNG of the side-by-side comparison (default: next to --out, else ./compare.png)")


# --------------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    description: str
    estimator: Any  # stereo_depth_ros.inference.StereoEstimator

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(left uint8 [H,W,3], right) -> float32 [H,W], NaN where the estimator has no value.

        CliError (one line, eval's advice) for images an ONNX export cannot take."""
        from stereo_depth_ros.inference.onnx_backend import OnnxInputSizeError

        try:
            return self.estimator.estimate(left, right).disparity
        except OnnxInputSizeError as error:
            height, width = error.image_size
            raise CliError(f"{error}: re-export the checkpoint for this data with `stereo-distill export "
                           f"--dynamic` (any size) or `--height {height} --width {width}`") from None


def load_predictor(path: str, arch: str = "auto", iters: int | None = None, max_disp: int | None = None,
                   device: str = "auto") -> LoadedModel:
    """The estimator `path` names, as the node would run it (CliError with one line when it cannot be opened)."""
    from stereo_depth_ros.inference import EstimatorSourceError, open_estimator, source_kind

    try:
        estimator = open_estimator(path, model=arch, device=device, iters=iters, max_disparity=max_disp,
                                   providers=["CPUExecutionProvider"] if device == "cpu" else None,
                                   with_confidence=False)
    except EstimatorSourceError as error:
        raise CliError(str(error)) from None
    kind = source_kind(path)
    name = getattr(getattr(estimator, "model", None), "name", None) or getattr(estimator, "model_name", None)
    if kind == "opencv_sgbm":  # the weight-free baseline (e.g. `make loop`'s teacher)
        return LoadedModel("opencv_sgbm", estimator)
    description = f"{'onnx' if kind == 'onnxruntime' else name}:{Path(path).name}"
    return LoadedModel(description, estimator)


# ----------------------------------------------------------------------------------------------- references
@dataclass
class EvalPair:
    name: str
    left: np.ndarray
    right: np.ndarray
    reference: np.ndarray  # float32 [H,W]
    valid: np.ndarray      # bool [H,W]


def collect_pairs(args) -> tuple[list[Any], str, Path | None]:
    """(samples, reference kind, labels root) after checking the inputs."""
    from .datasets import DatasetError, open_dataset, split_samples

    try:
        dataset = open_dataset(args.data)
    except DatasetError as error:
        raise CliError(str(error)) from None
    samples = list(dataset)
    if args.split != "all":
        train, val = split_samples(samples, args.val_fraction, args.seed)
        samples = val if args.split == "val" else train
    labels = Path(args.labels) if args.labels else None
    if labels is not None and not labels.is_dir():
        raise CliError(f"labels folder {labels} does not exist")
    if labels is not None:
        # With labels, only labelled pairs have a common reference for every model compared.
        labelled = [s for s in samples if (labels / s.name / "disparity.npy").is_file()]
    else:
        labelled = []
    all_gt = bool(samples) and all(s.has_disparity for s in samples)
    reference = args.reference
    if reference == "auto":
        reference = "ground_truth" if all_gt else "labels"
    if reference == "ground_truth":
        samples = [s for s in samples if s.has_disparity]
        if not samples:
            hint = "use --reference labels" if labels is not None else "pass --labels LABELS"
            raise CliError(f"no pair of {args.data} has ground truth; {hint}")
    else:
        if labels is None:
            raise CliError(f"{args.data} has no ground truth for every pair; pass --labels LABELS")
        samples = labelled
        if not samples:
            raise CliError(f"no pair of {args.data} (split {args.split}) has a label in {labels}")
    if args.max_pairs > 0:
        samples = samples[: args.max_pairs]
    return samples, reference, labels


def load_pair(sample, reference: str, labels: Path | None) -> EvalPair:
    from .label_files import read_label

    left, right = sample.load_pair()
    if reference == "ground_truth":
        ref = sample.load_disparity()
        valid = np.isfinite(ref) & (ref > 0)
    else:
        ref, valid = read_label(labels / sample.name)
    if ref.shape != left.shape[:2]:
        raise CliError(f"{sample.name}: reference {ref.shape} and image {left.shape[:2]} differ in size")
    return EvalPair(sample.name, left, right, ref.astype(np.float32), valid)


def evaluate_model(model: LoadedModel, pairs: list[EvalPair], reference: str, keep_predictions: int = 0,
                   progress: bool = True) -> tuple[dict[str, Any], list[np.ndarray]]:
    from tqdm import tqdm

    metrics = DisparityMetrics(reference=reference)
    kept: list[np.ndarray] = []
    per_pair: dict[str, dict[str, float]] = {}
    times: list[float] = []
    for pair in tqdm(pairs, desc=model.description, disable=not progress, unit="pair", file=sys.stderr):
        start = time.perf_counter()
        pred = np.asarray(model.predict(pair.left, pair.right), np.float32)
        times.append(time.perf_counter() - start)
        if pred.shape != pair.reference.shape:
            raise CliError(f"{model.description} returned {pred.shape} for {pair.name} of {pair.reference.shape}")
        per_pair[pair.name] = metrics.update(pred, pair.reference, pair.valid)
        if len(kept) < keep_predictions:
            kept.append(pred)
    result: dict[str, Any] = dict(metrics.result())
    result["model"] = model.description
    result["seconds_per_pair"] = float(np.median(times)) if times else float("nan")
    result["per_pair"] = per_pair
    return result, kept


# -------------------------------------------------------------------------------------------------- picture
def comparison_picture(pairs: list[EvalPair], columns: list[tuple[str, list[np.ndarray]]], max_error: float = 8.0
                       ) -> np.ndarray:
    """uint8 RGB grid, one row per pair: left | reference | each model's disparity | each model's error.

    Disparities share one colour scale per row (the reference's 99th percentile); errors run black (0 px) to
    white (>= max_error px); pixels without a reference are dark blue in the error maps.
    """
    import cv2

    from stereo_devkit.outputs import colourise

    rows = []
    for i, pair in enumerate(pairs):
        ref = np.where(pair.valid, pair.reference, np.nan)
        vmax = float(np.nanpercentile(ref, 99)) if np.isfinite(ref).any() else None
        tiles = [pair.left.astype(np.uint8), colourise(ref, 0.0, vmax)]
        errors = []
        for _, preds in columns:
            tiles.append(colourise(preds[i], 0.0, vmax))
            err = np.clip(np.abs(preds[i] - pair.reference) / max_error, 0, 1)
            err_img = np.repeat((np.nan_to_num(err, nan=1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)
            err_img[~pair.valid] = (20, 20, 80)
            errors.append(err_img)
        row = np.concatenate(tiles + errors, axis=1)
        rows.append(row)
    grid = np.concatenate(rows, axis=0) if rows else np.zeros((1, 1, 3), np.uint8)
    labels = ["left", "reference"] + [n for n, _ in columns] + [f"|err| {n}" for n, _ in columns]
    tile_w = pairs[0].left.shape[1] if pairs else 1
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    for j, text in enumerate(labels):
        cv2.putText(header, text, (j * tile_w + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, grid], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from stereo_depth_ros.dataset_layout import DatasetError, write_image

    try:
        write_image(path, rgb)
    except DatasetError as error:
        raise CliError(f"cannot write picture {path}: {error}") from None


# ------------------------------------------------------------------------------------------------------ run
def _clean(obj):
    """NaN -> None so that the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run(args) -> int:
    if args.iters is not None and args.iters < 1:
        raise CliError(f"--iters must be >= 1, got {args.iters}")
    samples, reference, labels = collect_pairs(args)
    pairs, unreadable = [], {}
    for sample in samples:
        try:
            pairs.append(load_pair(sample, reference, labels))
        except DatasetError as error:  # like `label`: the pair is left out, named, and the exit status says so
            print(f"eval: skipping {sample.name}: {error}", file=sys.stderr)
            unreadable[sample.name] = str(error)
    if not pairs:
        raise CliError(f"no pair of {args.data} could be read")
    model = load_predictor(args.model, args.arch, args.iters, args.max_disp, args.device)
    n_keep = min(len(pairs), 4) if args.compare else 0
    result, kept = evaluate_model(model, pairs, reference, keep_predictions=n_keep)
    if args.compare:
        teacher_path, before_path = args.compare
        teacher = load_predictor(teacher_path, "auto", args.teacher_iters, args.teacher_max_disp, args.device)
        before = load_predictor(before_path, args.arch, args.iters, args.max_disp, args.device)
        teacher_res, teacher_kept = evaluate_model(teacher, pairs, reference, n_keep)
        before_res, before_kept = evaluate_model(before, pairs, reference, n_keep)
        result["compare"] = {"teacher": teacher_res, "student_before": before_res}
        report = Path(args.report) if args.report else (
            Path(args.out).with_suffix(".png") if args.out else Path("compare.png"))
        _write_png(report, comparison_picture(
            pairs[:n_keep], [("teacher", teacher_kept), ("before", before_kept), ("after", kept)]))
        result["report"] = str(report)
        print(f"{'model':<28}{'EPE':>9}{'D1':>9}{'bad1':>9}{'bad3':>9}", file=sys.stderr)
        for label, res in (("teacher", teacher_res), ("student before", before_res), ("student after", result)):
            print(f"{label:<28}{res['epe']:>9.3f}{res['d1']:>9.4f}{res['bad1']:>9.4f}{res['bad3']:>9.4f}",
                  file=sys.stderr)
    if unreadable:
        result["unreadable"] = unreadable
    result = _clean(result)
    brief = {k: v for k, v in result.items() if k != "per_pair"}
    if "compare" in brief:
        brief["compare"] = {name: {k: v for k, v in res.items() if k != "per_pair"}
                            for name, res in brief["compare"].items()}
    print(json.dumps(brief, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    if unreadable:
        print(f"eval: {len(unreadable)} pair(s) could not be read and are not in the metrics: "
              f"{', '.join(unreadable)}", file=sys.stderr)
        return 1
    return 0
