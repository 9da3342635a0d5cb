"""onnxruntime: an exported student (`stereo-distill export`) behind the estimator interface.

`OnnxEstimator(model_path, providers=None)` opens the file with the first available of the preferred execution
providers (default TensorRT, CUDA, CPU; configurable), reads the export's metadata
(`stereo_depth_ros.padded_inside`, `.iters`, `.model`) and, when the graph does not pad to a multiple of 32
itself, pads (edge replication, split over both sides like the PyTorch model) and crops here. Graph contract:
inputs "left", "right" float32 [1, 3, H, W] RGB 0..255; outputs "disparity" [1, 1, H, W] and optionally
"confidence" [1, 1, H, W].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
META_PREFIX = "stereo_depth_ros."
PAD_DIVISOR = 32


def select_providers(preferred: list[str] | tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The preferred providers that this onnxruntime build offers, in preference order.

    Raises ValueError naming both lists when none is available, or when a name is not a provider at all.
    """
    preferred = list(preferred or DEFAULT_PROVIDERS)
    unknown = [p for p in preferred if not p.endswith("ExecutionProvider")]
    if unknown:
        raise ValueError(f"unknown onnxruntime provider name(s) {unknown}; names end in 'ExecutionProvider', "
                         f"e.g. {list(DEFAULT_PROVIDERS)}")
    chosen = [p for p in preferred if p in available]
    if not chosen:
        raise ValueError(f"none of the onnxruntime providers {preferred} is available; this build offers "
                         f"{available}")
    return chosen


def _provider_options(provider: str) -> dict:
    if provider == "TensorrtExecutionProvider":
        # Building a TensorRT engine takes minutes; cache it across node restarts.
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stereo_depth_ros" / "tensorrt"
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    return {}


class OnnxEstimator(StereoEstimator):
    """One onnxruntime session. `providers`: the providers the session actually runs on (after fallback)."""

    name = "onnxruntime"
    iters_fixed = True  # the export fixes the iteration count; another value is refused (base class)

    def __init__(self, model_path: str, providers: list[str] | tuple[str, ...] | None = None,
                 intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        if not model_path or not Path(model_path).is_file():
            raise FileNotFoundError(f"ONNX model {model_path!r} not found")
        chosen = select_providers(providers, ort.get_available_providers())
        if "TensorrtExecutionProvider" in chosen:
            Path(_provider_options("TensorrtExecutionProvider")["trt_engine_cache_path"]).mkdir(
                parents=True, exist_ok=True)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=[(p, _provider_options(p)) for p in chosen])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or foreign files
            raise ValueError(f"cannot load ONNX model {model_path!r}: {exc}") from None
        # CUDA/TensorRT listed but unusable (no driver/libraries) fall back silently: report what runs.
        self.providers = self.session.get_providers()
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"left", "right"} or "disparity" not in outputs:
            raise ValueError(f"ONNX model {model_path!r} has inputs {sorted(inputs)} and outputs {outputs}; "
                             "expected inputs left, right and output disparity (see stereo-distill export)")
        self._outputs = ["disparity"] + (["confidence"] if "confidence" in outputs else [])
        shape = inputs["left"].shape
        # Fixed sizes are ints; dynamic ones are names (str) or None.
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.padded_inside = meta.get(META_PREFIX + "padded_inside", "0") == "1"
        self.iters = int(meta[META_PREFIX + "iters"]) if META_PREFIX + "iters" in meta else None
        self.model_name = meta.get(META_PREFIX + "model")

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding the graph needs for this image size."""
        if self.padded_inside:
            pads = (0, 0, 0, 0)
        else:
            pad_h, pad_w = -height % PAD_DIVISOR, -width % PAD_DIVISOR
            pads = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
        if self.fixed_size is not None:
            fed = (height + pads[0] + pads[1], width + pads[2] + pads[3])
            if fed != self.fixed_size:
                h, w = self.fixed_size
                raise ValueError(f"the ONNX model was exported for {w}x{h} input, the images are {width}x{height}; "
                                 "set input_width/input_height to that size or export with --dynamic")
        return pads

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        if left.shape != right.shape or left.ndim != 3 or left.shape[2] != 3:
            raise ValueError(f"expected two RGB images [H, W, 3] of one shape, got {left.shape} and {right.shape}")
        height, width = left.shape[:2]
        top, bottom, lpad, rpad = self._pads(height, width)

        def prepare(image: np.ndarray) -> np.ndarray:
            chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)[None]
            if top or bottom or lpad or rpad:
                chw = np.pad(chw, ((0, 0), (0, 0), (top, bottom), (lpad, rpad)), mode="edge")
            return chw

        results = self.session.run(self._outputs, {"left": prepare(left), "right": prepare(right)})
        crop = (0, 0, slice(top, top + height), slice(lpad, lpad + width))
        disparity = np.array(results[0][crop], dtype=np.float32)
        disparity[~(disparity > 0)] = np.nan
        confidence = None
        if len(results) > 1:
            confidence = np.clip(np.asarray(results[1][crop], dtype=np.float32), 0.0, 1.0)
        return StereoEstimate(disparity=disparity, confidence=confidence)
