"""One way to get an estimator from what a user names on a command line: a checkpoint, an ONNX export, or `sgbm`.

`open_estimator(source, ...)` is what `stereo-distill eval` and `label --teacher` call, so that a `.pth`, an
`.onnx` and the SGBM baseline are measured (and label) through the same interface the node runs:
- `sgbm` / `opencv_sgbm`: the weight-free OpenCV baseline with its left-right check;
- `*.onnx`: onnxruntime (the export's metadata says the network and its iterations);
- any other file: a PyTorch checkpoint of a registered network; `model="auto"` takes the name our training
  checkpoints record, and for an official state_dict (which records none) the network whose weights fit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stereo_depth_ros.inference.base import StereoEstimator, create_estimator

SGBM_NAMES = ("sgbm", "opencv_sgbm")


class EstimatorSourceError(ValueError):
    """A source that names no usable estimator; the message says what was tried."""


def source_kind(source: str) -> str:
    """The backend a source runs on: "opencv_sgbm", "onnxruntime" or "torch" (no file is read)."""
    if source in SGBM_NAMES:
        return "opencv_sgbm"
    return "onnxruntime" if source.lower().endswith(".onnx") else "torch"


def open_estimator(source: str, *, model: str = "auto", device: str = "auto", precision: str = "fp32",
                   iters: int | None = None, max_disparity: int | None = None,
                   providers: list[str] | None = None, with_confidence: bool = True) -> StereoEstimator:
    """The estimator `source` names. Raises EstimatorSourceError (one line) when it cannot be opened.

    iters/max_disparity/precision/device/model apply to checkpoints; providers to ONNX files; max_disparity also
    to SGBM (default 192). An ONNX export's iterations and range are fixed at export time.
    """
    kind = source_kind(source)
    if kind == "opencv_sgbm":
        return create_estimator(kind, max_disparity=max_disparity or 192)
    path = Path(source)
    if not path.is_file():
        raise EstimatorSourceError(f"model file {source} does not exist (or name 'sgbm' for the OpenCV baseline)")
    if kind == "onnxruntime":
        try:
            return create_estimator(kind, model_path=str(path), providers=providers)
        except (OSError, ValueError, RuntimeError) as error:
            raise EstimatorSourceError(f"cannot load ONNX model {source}: {_first_line(error)}") from None

    from stereo_depth_ros.models import CheckpointError, available_models, read_checkpoint

    if model == "auto":
        # Our training checkpoints name their network; an official state_dict does not, so each registered
        # network is tried (strict loading tells them apart by their keys).
        try:
            saved = read_checkpoint(path).model_name
        except CheckpointError as error:
            raise EstimatorSourceError(_first_line(error)) from None
        names = [saved] if saved else available_models()
    else:
        names = [model]
    options: dict[str, Any] = {"model_path": str(path), "device": device, "precision": precision, "iters": iters,
                               "max_disparity": max_disparity, "with_confidence": with_confidence}
    errors = []
    for name in names:
        try:
            return create_estimator(kind, model=name, **options)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            errors.append(f"as {name}: {_first_line(error)}")
    raise EstimatorSourceError(f"cannot load {source} " + "; ".join(errors))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
