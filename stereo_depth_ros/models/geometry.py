"""Sampling of the geometry encoding volume (and, for the teacher, the all-pairs correlation) around a disparity."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample_rows(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along the last axis, zero outside, at fractional positions x.

    rows: [N, C, 1, W], x: [N, 1, K, 1] in pixels -> [N, C, 1, K]. Written with grid_sample
    (align_corners=True) because it exports to ONNX and matches upstream's rounding.
    """
    width = rows.shape[-1]
    gx = 2 * x / (width - 1) - 1
    grid = torch.cat([gx, torch.zeros_like(gx)], dim=-1)
    return F.grid_sample(rows, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class GeometryEncoding:
    """Multi-level lookup table built once per forward pass, queried at every GRU iteration.

    geo_volume: [B, C, D, H, W] aggregated cost volume. Level i averages pairs of disparity planes i times.
    left, right (optional, both or neither): [B, F, H, W] matching features; when given, an all-pairs
    correlation left[x] . right[x'] over the whole row is added (Selective-IGEV's combined volume), with the
    same level pyramid along x'.

    Calling with disp [B, 1, H, W] (1/4-res pixels) returns [B, L * (C + k) * (2r+1), H, W], k = 1 with the
    correlation else 0; per level: the C*(2r+1) volume taps (channel-major, taps at disp/2^i + [-r..r]),
    then the 2r+1 correlation taps at (x - disp)/2^i + [-r..r].
    The tensors keep the dtype they are given: the caller passes float32 (or float64) even under autocast.
    """

    def __init__(
        self,
        geo_volume: torch.Tensor,
        num_levels: int,
        radius: int,
        left: torch.Tensor | None = None,
        right: torch.Tensor | None = None,
    ) -> None:
        if (left is None) != (right is None):
            raise ValueError("pass both left and right matching features, or neither")
        self.num_levels = num_levels
        self.radius = radius
        b, c, d, h, w = geo_volume.shape
        rows = geo_volume.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, 1, d)
        self.volume_pyramid = [rows]
        for _ in range(num_levels - 1):
            rows = F.avg_pool2d(rows, (1, 2), stride=(1, 2))
            self.volume_pyramid.append(rows)

        self.corr_pyramid: list[torch.Tensor] = []
        self.columns: torch.Tensor | None = None  # [B*H*W, 1, 1, 1]: each pixel's own x
        if left is not None and right is not None:
            corr = torch.matmul(left.permute(0, 2, 3, 1), right.permute(0, 2, 1, 3))  # [B, H, W, W']
            rows = corr.reshape(b * h * w, 1, 1, right.shape[-1])
            self.corr_pyramid.append(rows)
            for _ in range(num_levels - 1):
                rows = F.avg_pool2d(rows, (1, 2), stride=(1, 2))
                self.corr_pyramid.append(rows)
            x = torch.arange(w, dtype=left.dtype, device=left.device)
            self.columns = x.view(1, 1, w).expand(b, h, w).reshape(b * h * w, 1, 1, 1)

    def __call__(self, disp: torch.Tensor) -> torch.Tensor:
        b, _, h, w = disp.shape
        r = self.radius
        taps = torch.arange(-r, r + 1, dtype=disp.dtype, device=disp.device).view(1, 1, 2 * r + 1, 1)
        flat_disp = disp.reshape(b * h * w, 1, 1, 1)
        flat_cols = None if self.columns is None else self.columns.to(disp.dtype)
        out = []
        for level in range(self.num_levels):
            scale = 2**level
            out.append(_sample_rows(self.volume_pyramid[level], taps + flat_disp / scale).view(b, h, w, -1))
            if flat_cols is not None:
                x = flat_cols / scale - flat_disp / scale + taps
                out.append(_sample_rows(self.corr_pyramid[level], x).view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()
