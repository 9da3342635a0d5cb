"""Group-wise correlation cost volume, its 3D hourglass aggregation and the soft-argmin regression."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormAct, FeatureAtt


def build_gwc_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int, num_groups: int) -> torch.Tensor:
    """Group-wise correlation of left features with right features shifted by d = 0 .. max_disp-1.

    left, right: [B, C, H, W] with C divisible by num_groups -> [B, G, max_disp, H, W]. Plane d holds the mean
    over each group's channels of left[..., x] * right[..., x - d]; columns x < d have no partner and stay 0.
    Filled plane by plane into one preallocated tensor: a vectorised product over all shifts would need
    C/G times the volume's memory, which does not fit for the teacher's large images.

    While tracing (the ONNX export) the same volume is built by `_traceable_gwc_volume`, which records no width.
    """
    if torch.jit.is_tracing():
        return _traceable_gwc_volume(left, right, max_disp, num_groups)
    b, c, h, w = left.shape
    if c % num_groups:
        raise ValueError(f"{c} feature channels cannot be split into {num_groups} groups")
    volume = left.new_zeros((b, num_groups, max_disp, h, w))
    for d in range(min(max_disp, w)):
        product = left[..., d:] * right[..., : w - d]
        volume[:, :, d, :, d:] = product.view(b, num_groups, c // num_groups, h, w - d).mean(dim=2)
    return volume


def _traceable_gwc_volume(left: torch.Tensor, right: torch.Tensor, max_disp: int, num_groups: int) -> torch.Tensor:
    """`build_gwc_volume` for tracing: right zero-padded by max_disp - 1 columns, plane d a window of it.

    The loop above runs min(max_disp, width) times and slices with `w - d`; a tracer freezes that count, so a
    dynamic-size graph traced at one width breaks at narrower ones. Here every plane reads a window of the padded
    right features at a constant offset, with the traced width only as the window's length, and columns x < d
    meet the zero padding: the same volume at every width. Kept out of eager mode because the different memory
    layout changes float rounding (~1e-7), and the eager path reproduces upstream to 0.0 px.
    """
    w = left.shape[-1]
    padded = F.pad(right, (max_disp - 1, 0))
    planes = []
    for d in range(max_disp):
        start = max_disp - 1 - d
        product = left * padded[..., start:start + w]  # right[..., x - d], zero where x < d
        planes.append(product.unflatten(1, (num_groups, -1)).mean(dim=2))
    return torch.stack(planes, dim=2)


def disparity_regression(prob: torch.Tensor) -> torch.Tensor:
    """Expected disparity under a distribution over the planes d = 0 .. D-1.

    prob: [B, D, H, W] (sums to 1 over D) -> [B, 1, H, W], in the volume's pixel units.
    """
    values = torch.arange(prob.shape[1], dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
    return torch.sum(prob * values, dim=1, keepdim=True)


def _conv3d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> ConvNormAct:
    return ConvNormAct(
        in_channels, out_channels, dims=3, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2
    )


def _deconv3d(in_channels: int, out_channels: int, *, use_norm: bool = True, act: bool = True) -> ConvNormAct:
    return ConvNormAct(
        in_channels, out_channels, dims=3, deconv=True, use_norm=use_norm, act=act, kernel_size=4, stride=2, padding=1
    )


class Hourglass(nn.Module):
    """3D encoder-decoder over the cost volume, gated at each scale by the left image's features.

    x: [B, C, D, H, W] (C = in_channels, volume at 1/4 resolution), features: the Feature pyramid
    [x4, x8, x16, x32] of the left image (x8/x16/x32 with feature_channels channels) -> [B, 8, D, H, W].
    Down 1/8, 1/16, 1/32 (D halves each time), back up with skip concatenations.
    """

    def __init__(
        self, in_channels: int = 8, feature_channels: Sequence[int] = (64, 192, 160), out_channels: int = 8
    ) -> None:
        super().__init__()
        c = in_channels
        f8, f16, f32 = feature_channels
        self.conv1 = nn.Sequential(_conv3d(c, 2 * c, 3, stride=2), _conv3d(2 * c, 2 * c, 3))
        self.conv2 = nn.Sequential(_conv3d(2 * c, 4 * c, 3, stride=2), _conv3d(4 * c, 4 * c, 3))
        self.conv3 = nn.Sequential(_conv3d(4 * c, 6 * c, 3, stride=2), _conv3d(6 * c, 6 * c, 3))

        self.conv3_up = _deconv3d(6 * c, 4 * c)
        self.conv2_up = _deconv3d(4 * c, 2 * c)
        self.conv1_up = _deconv3d(2 * c, out_channels, use_norm=False, act=False)

        self.agg_0 = nn.Sequential(_conv3d(8 * c, 4 * c, 1), _conv3d(4 * c, 4 * c, 3), _conv3d(4 * c, 4 * c, 3))
        self.agg_1 = nn.Sequential(_conv3d(4 * c, 2 * c, 1), _conv3d(2 * c, 2 * c, 3), _conv3d(2 * c, 2 * c, 3))

        self.feature_att_8 = FeatureAtt(2 * c, f8)
        self.feature_att_16 = FeatureAtt(4 * c, f16)
        self.feature_att_32 = FeatureAtt(6 * c, f32)
        self.feature_att_up_16 = FeatureAtt(4 * c, f16)
        self.feature_att_up_8 = FeatureAtt(2 * c, f8)

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        down8 = self.feature_att_8(self.conv1(x), features[1])
        down16 = self.feature_att_16(self.conv2(down8), features[2])
        down32 = self.feature_att_32(self.conv3(down16), features[3])

        up16 = self.agg_0(torch.cat((self.conv3_up(down32), down16), dim=1))
        up16 = self.feature_att_up_16(up16, features[2])
        up8 = self.agg_1(torch.cat((self.conv2_up(up16), down8), dim=1))
        up8 = self.feature_att_up_8(up8, features[1])
        return self.conv1_up(up8)
