"""torch: the learned networks (RT-IGEV student, Selective-IGEV teacher) through `load_model`.

`TorchEstimator(model="rt_igev", model_path=..., device="auto", precision="fp32", iters=None, max_disparity=None)`
loads the checkpoint once, keeps the network on its device, and returns the disparity and the network's own
confidence (`predict(..., return_confidence=True)`). Precision is handled inside the model (CPU runs fp32).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator
from stereo_depth_ros.models import load_model


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use device auto or cpu)")
    return resolved


class TorchEstimator(StereoEstimator):
    """A network from the registry on one device.

    model: registry name; model_path: checkpoint (official state_dict or ours); None gives the seeded random init
    (tests, benchmarks); iters: refinement iterations (None = the model's valid_iters); max_disparity: overrides
    the model's max_disp (a multiple of 4). with_confidence: also return the network's confidence.
    """

    name = "torch"

    def __init__(self, model: str = "rt_igev", model_path: str | None = None, device: str = "auto",
                 precision: str = "fp32", iters: int | None = None, max_disparity: int | None = None,
                 with_confidence: bool = True) -> None:
        if model_path and not Path(model_path).is_file():
            raise FileNotFoundError(f"model_path {model_path!r} not found")
        if iters is not None and iters < 1:
            raise ValueError(f"iters must be positive (or None for the model's default), got {iters}")
        self.device = resolve_device(device)
        overrides = {"precision": precision}
        if max_disparity:
            overrides["max_disp"] = int(max_disparity)
        self.model = load_model(model, checkpoint=model_path or None, device=self.device, **overrides)
        self.iters = iters
        self.with_confidence = with_confidence

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        if not image.flags.writeable:  # e.g. a view of an incoming message; torch.from_numpy wants writable
            image = image.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.float()

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape} and right {right.shape} differ in shape")
        with torch.inference_mode():
            result = self.model.predict(self._tensor(left), self._tensor(right), iters=self.iters,
                                        return_confidence=self.with_confidence)
        disp, conf = result if self.with_confidence else (result, None)
        disparity = disp[0, 0].float().cpu().numpy()
        # The network regresses a value everywhere; zero or negative disparity has no depth.
        disparity[~(disparity > 0)] = np.nan
        confidence = None if conf is None else conf[0, 0].float().clamp(0, 1).cpu().numpy()
        return StereoEstimate(disparity=disparity, confidence=confidence)

    def estimate_batch(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoEstimate]:
        """One forward pass for same-size pairs (`stereo-distill label --batch-size`); per pair as `estimate`."""
        if len(lefts) != len(rights) or any(left.shape != lefts[0].shape for left in (*lefts, *rights)):
            raise ValueError("a batch needs as many left as right images, all of one shape")
        with torch.inference_mode():
            result = self.model.predict(torch.cat([self._tensor(left) for left in lefts]),
                                        torch.cat([self._tensor(right) for right in rights]),
                                        iters=self.iters, return_confidence=self.with_confidence)
        disp, conf = result if self.with_confidence else (result, None)
        estimates = []
        for k in range(disp.shape[0]):
            disparity = disp[k, 0].float().cpu().numpy()
            disparity[~(disparity > 0)] = np.nan
            confidence = None if conf is None else conf[k, 0].float().clamp(0, 1).cpu().numpy()
            estimates.append(StereoEstimate(disparity=disparity, confidence=confidence))
        return estimates
