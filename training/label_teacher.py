"""Which teacher labels DATA: any estimator `open_estimator` opens, described well enough to lock LABELS to it.

`stereo-distill label --teacher` takes a checkpoint of either registered network (the default teacher is
Selective-IGEV's `middlebury_finetune.pth`; a distilled student works too), one of our ONNX exports, or `sgbm`
(OpenCV semi-global matching with its own left-right check). All three run through the one estimator interface
(`stereo_depth_ros.inference.open_estimator`), the same one the node and `eval` use.

The manifest records the teacher as {kind, model, checkpoint, sha256, settings}; a later run into the same LABELS
must name the same kind, file contents (sha256) and settings, or it is refused.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import CliError
from .provenance import sha256_file

# Defaults for a checkpoint teacher: upstream's Middlebury evaluation settings for Selective-IGEV.
CHECKPOINT_ITERS, CHECKPOINT_MAX_DISP = 80, 768
SGBM_MAX_DISP = 192


@dataclass
class Teacher:
    estimator: Any       # stereo_depth_ros.inference.StereoEstimator
    description: dict    # what the manifest records (JSON-normalised)
    max_disp: float      # the largest disparity the teacher can report (the default upper validity bound)


def open_teacher(source: str, model: str, iters: int | None, max_disp: int | None, precision: str,
                 device: str) -> Teacher:
    """The estimator `source` names, with label's defaults per kind; CliError (one line) for bad combinations."""
    from stereo_depth_ros.inference import EstimatorSourceError, open_estimator, source_kind

    kind = source_kind(source)
    if kind != "torch" and precision != "fp32":
        raise CliError(f"--precision {precision} applies to checkpoint teachers only ({source} is {kind})")
    if kind == "opencv_sgbm" and iters is not None:
        raise CliError("--iters does not apply to the sgbm teacher (it has no iterations)")
    if kind == "onnxruntime" and max_disp is not None:
        raise CliError(f"--max-disp does not apply to an ONNX teacher: {source} has its range fixed at export")
    if kind == "torch":
        iters = CHECKPOINT_ITERS if iters is None else iters
        max_disp = CHECKPOINT_MAX_DISP if max_disp is None else max_disp
    elif kind == "opencv_sgbm":
        max_disp = SGBM_MAX_DISP if max_disp is None else max_disp
    # On the CPU keep onnxruntime on its CPU provider (no GPU-provider fallback noise), as eval does.
    providers = ["CPUExecutionProvider"] if kind == "onnxruntime" and device == "cpu" else None
    try:
        estimator = open_estimator(source, model=model, device=device, precision=precision, iters=iters,
                                   max_disparity=max_disp, providers=providers, with_confidence=False)
    except EstimatorSourceError as error:
        raise CliError(f"cannot open teacher: {error}") from None
    exported_iters = getattr(estimator, "iters", None)
    if kind == "onnxruntime" and iters is not None and iters != exported_iters:
        raise CliError(f"{source} was exported with {exported_iters} iterations; --iters {iters} cannot change "
                       "that (export again, or leave --iters out)")
    description, teacher_max = _describe(kind, source, estimator)
    return Teacher(estimator, json.loads(json.dumps(description)), teacher_max)


def _describe(kind: str, source: str, estimator: Any) -> tuple[dict, float]:
    """(manifest entry, the teacher's disparity range) of an opened estimator."""
    if kind == "opencv_sgbm":
        import cv2

        matcher = estimator.matcher
        settings = {"num_disparities": matcher.getNumDisparities(), "block_size": matcher.getBlockSize(),
                    "P1": matcher.getP1(), "P2": matcher.getP2(), "uniqueness_ratio": matcher.getUniquenessRatio(),
                    "speckle_window": matcher.getSpeckleWindowSize(), "speckle_range": matcher.getSpeckleRange(),
                    "mode": matcher.getMode(), "lr_max_diff": estimator.lr_max_diff, "opencv": cv2.__version__}
        entry = {"kind": kind, "model": "opencv_sgbm", "checkpoint": None, "sha256": None, "settings": settings}
        return entry, float(matcher.getNumDisparities())
    path = Path(source).resolve()
    if kind == "onnxruntime":
        meta = dict(estimator.session.get_modelmeta().custom_metadata_map)
        config = json.loads(meta.get("stereo_depth_ros.config", "{}") or "{}")
        settings = {"iters": estimator.iters, "metadata": meta}
        entry = {"kind": kind, "model": estimator.model_name, "checkpoint": str(path), "sha256": sha256_file(path),
                 "settings": settings}
        return entry, float(config.get("max_disp", float("inf")))
    network = estimator.model
    iters = getattr(estimator, "iters", None) or network.config.valid_iters
    settings = {"iters": iters, "config": dataclasses.asdict(network.config)}
    entry = {"kind": kind, "model": network.name, "checkpoint": str(path), "sha256": sha256_file(path),
             "settings": settings}
    return entry, float(network.config.max_disp)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two manifest teacher/threshold entries (paths may differ)."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(old_flat) | set(new_flat) if not k.endswith("checkpoint"))
    problems = []
    for key in keys:
        before, after = old_flat.get(key), new_flat.get(key)
        if before == after:
            continue
        if key.endswith("sha256"):
            problems.append(f"teacher file sha256 {str(before)[:12]}... vs {str(after)[:12]}...")
        else:
            problems.append(f"{key} {before!r} vs {after!r}")
    return problems


def check_compatible(manifest_path: Path, settings: dict) -> None:
    """Refuse an existing LABELS made with another teacher (kind, file, settings) or other thresholds."""
    if not manifest_path.is_file():
        return
    try:
        existing = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CliError(f"{manifest_path} is unreadable ({error}); move it away to start over") from None
    problems = differences({"teacher": existing.get("teacher", {}), "thresholds": existing.get("thresholds", {})},
                           {"teacher": settings["teacher"], "thresholds": settings["thresholds"]})
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CliError(f"{manifest_path.parent} holds labels made with different settings ({shown}); "
                       "use another --out folder rather than mixing labels")


__all__ = ["Teacher", "check_compatible", "differences", "open_teacher"]
