"""The one pad split of an image to the networks' stride, in plain integers (no torch import).

The networks see their input padded to a multiple of `PAD_DIVISOR` by edge replication, split over both sides
with the odd pixel right/bottom: upstream's evaluation padding (InputPadder, mode 'sintel', divis_by=32). Three
places need that split and must agree to the pixel: `models.padding.InputPadder` (PyTorch), the traced ONNX
export (where the sizes are traced values, so only integer arithmetic is allowed here), and the ONNX backend
for exports that do not pad inside their graph (which must run without torch installed).
"""
from __future__ import annotations

from typing import Any

PAD_DIVISOR = 32
# Smallest image side the networks can use: their coarsest (1/32) feature map is one pixel there. Smaller images
# would be almost all padding; predict, the ONNX export and its backend refuse them.
MIN_SIDE = PAD_DIVISOR


def pad_lrtb(height: Any, width: Any, divisor: int = PAD_DIVISOR) -> tuple[Any, Any, Any, Any]:
    """(left, right, top, bottom) padding to a multiple of `divisor` (F.pad's order), the odd pixel right/bottom.

    height/width are ints, or traced sizes during an ONNX export (hence `Any`).
    """
    pad_h = -height % divisor
    pad_w = -width % divisor
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2
