"""Stereo-safe augmentation of one training sample (numpy, channels-last).

What keeps it stereo-safe: both views always get the same geometric transform (same scale, same crop window),
the disparity is multiplied by the horizontal scale factor, masks and disparities are resampled with nearest
neighbour (a bilinear blend across a depth edge invents disparities that belong to neither surface), and there
is no horizontal flip: flipping one view swaps the sign of disparity, and flipping both needs the views swapped
and the right-view disparity, which the labels do not have. Photometric jitter may differ between the views
(upstream does that with probability 0.2) and occlusion patches go into the right view only, so the left view
that the labels describe stays intact.

Every random draw comes from the `numpy.random.Generator` passed in; the trainer derives it from
(seed, epoch, sample index), which makes the augmentation of a sample a pure function of where it sits in the
data order, so resuming at a data position reproduces it exactly.

Sample keys: "left", "right" uint8 or float32 [H,W,3] RGB 0..255; "disp" float32 [H,W]; "valid" bool [H,W];
optionally "gt_disp" float32 [H,W] and "gt_valid" bool [H,W]. Outputs keep the keys, with float32 images.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_DISPARITY_KEYS = ("disp", "gt_disp")
_MASK_KEYS = ("valid", "gt_valid")


@dataclass(frozen=True)
class AugmentConfig:
    crop: tuple[int, int] = (320, 768)
    # Spatial scale 2 ** U(min_scale, max_scale) with probability scale_prob (upstream's sparse augmentor values).
    min_scale: float = -0.2
    max_scale: float = 0.4
    scale_prob: float = 0.8
    # Colour jitter ranges as upstream's dense augmentor (torchvision ColorJitter semantics).
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: tuple[float, float] = (0.0, 1.4)
    hue: float = 0.5 / 3.14
    asymmetric_prob: float = 0.2
    # Occlusion patches in the right view: 1..max_patches rectangles of patch_size px filled with the mean colour.
    eraser_prob: float = 0.5
    max_patches: int = 2
    patch_size: tuple[int, int] = (50, 100)


def _jitter_params(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float, float, float]:
    return (
        rng.uniform(1 - cfg.brightness, 1 + cfg.brightness),
        rng.uniform(1 - cfg.contrast, 1 + cfg.contrast),
        rng.uniform(*cfg.saturation),
        rng.uniform(-cfg.hue, cfg.hue),
    )


def color_jitter(image: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation and hue on a float32 [H,W,3] RGB 0..255 image (clipped to 0..255)."""
    brightness, contrast, saturation, hue = params
    img = np.clip(image.astype(np.float32) * brightness, 0, 255)
    gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = np.clip((img - gray.mean()) * contrast + gray.mean(), 0, 255)
    gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img = np.clip(gray + (img - gray) * saturation, 0, 255)
    if hue != 0.0:
        # OpenCV's float HSV has hue in degrees; a rotation of the hue circle by `hue` turns.
        hsv = cv2.cvtColor(img / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = np.mod(hsv[..., 0] + hue * 360.0, 360.0)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(img, 0, 255).astype(np.float32)


def photometric(left: np.ndarray, right: np.ndarray, rng: np.random.Generator,
                cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < cfg.asymmetric_prob:
        return color_jitter(left, _jitter_params(rng, cfg)), color_jitter(right, _jitter_params(rng, cfg))
    params = _jitter_params(rng, cfg)
    return color_jitter(left, params), color_jitter(right, params)


def occlude(right: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Paste 1..max_patches mean-colour rectangles into the right view (simulated occlusions)."""
    if rng.random() >= cfg.eraser_prob:
        return right
    right = right.copy()
    h, w = right.shape[:2]
    mean = right.reshape(-1, 3).mean(axis=0)
    for _ in range(int(rng.integers(1, cfg.max_patches + 1))):
        # Patches are capped at half the image so that small crops keep most of their content.
        ph = int(rng.integers(min(cfg.patch_size[0], h // 2), min(cfg.patch_size[1], h // 2) + 1))
        pw = int(rng.integers(min(cfg.patch_size[0], w // 2), min(cfg.patch_size[1], w // 2) + 1))
        y0 = int(rng.integers(0, h - ph + 1))
        x0 = int(rng.integers(0, w - pw + 1))
        right[y0:y0 + ph, x0:x0 + pw] = mean
    return right


def rescale(sample: dict[str, np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Random isotropic rescale, never below the size the crop needs; disparities scale with the width."""
    h, w = sample["left"].shape[:2]
    ch, cw = cfg.crop
    # round(h * factor) >= ch whenever h * factor >= ch, so this floor always leaves room for the crop.
    min_factor = max(ch / h, cw / w)
    factor = 1.0
    if rng.random() < cfg.scale_prob:
        factor = float(2.0 ** rng.uniform(cfg.min_scale, cfg.max_scale))
    factor = max(factor, min_factor)
    if factor == 1.0:
        return sample
    nh, nw = int(round(h * factor)), int(round(w * factor))
    sx = nw / w
    out = dict(sample)
    for key in ("left", "right"):
        out[key] = cv2.resize(sample[key].astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    for key in _DISPARITY_KEYS:
        if key in sample:
            out[key] = cv2.resize(sample[key], (nw, nh), interpolation=cv2.INTER_NEAREST) * np.float32(sx)
    for key in _MASK_KEYS:
        if key in sample:
            out[key] = cv2.resize(sample[key].astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
    return out


def random_crop(sample: dict[str, np.ndarray], rng: np.random.Generator, crop: tuple[int, int]
                ) -> dict[str, np.ndarray]:
    """The same window in every array (views, disparities, masks)."""
    h, w = sample["left"].shape[:2]
    ch, cw = crop
    if h < ch or w < cw:
        raise ValueError(f"image {h}x{w} is smaller than the crop {ch}x{cw}")
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return {k: np.ascontiguousarray(v[y0:y0 + ch, x0:x0 + cw]) for k, v in sample.items()}


def augment(sample: dict[str, np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Photometric jitter, right-view occlusions, random rescale, random crop; all draws from `rng`."""
    left, right = photometric(sample["left"], sample["right"], rng, cfg)
    right = occlude(right, rng, cfg)
    out = rescale({**sample, "left": left, "right": right}, rng, cfg)
    out = random_crop(out, rng, cfg.crop)
    out["left"] = out["left"].astype(np.float32)
    out["right"] = out["right"].astype(np.float32)
    return out


def center_crop(sample: dict[str, np.ndarray], crop: tuple[int, int]) -> dict[str, np.ndarray]:
    """Deterministic crop (no augmentation), for validation batches of a fixed size."""
    h, w = sample["left"].shape[:2]
    ch, cw = min(crop[0], h), min(crop[1], w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return {k: np.ascontiguousarray(v[y0:y0 + ch, x0:x0 + cw]) for k, v in sample.items()}
