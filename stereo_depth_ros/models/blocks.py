"""Small convolution blocks shared by every IGEV-family network.

Attribute names (`conv`, `bn`, `conv1`, `conv2`, `feat_att`) are fixed by the official checkpoints: renaming one
breaks `load_state_dict`. LeakyReLU uses PyTorch's default slope (0.01), as upstream does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {
    (2, False): nn.Conv2d,
    (2, True): nn.ConvTranspose2d,
    (3, False): nn.Conv3d,
    (3, True): nn.ConvTranspose3d,
}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class ConvNormAct(nn.Module):
    """Bias-free (transposed) convolution, then batch or instance norm, then LeakyReLU(0.01).

    Upstream's `BasicConv` (norm="batch") and `BasicConv_IN` (norm="instance"). With `use_norm=False` a batch
    norm is still created: the checkpoints carry its (unused) tensors, e.g. `cost_agg.conv1_up.bn.*`.
    Instance norm is affine-free and keeps no statistics, so it owns no checkpoint entries.

    x: [B, in, (D,) H, W] -> [B, out, (D',) H', W'] as the convolution's kernel_size/stride/padding say.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str = "batch",
        dims: int = 2,
        deconv: bool = False,
        use_norm: bool = True,
        act: bool = True,
        **conv_kwargs,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        self.conv = _CONV[(dims, deconv)](in_channels, out_channels, bias=False, **conv_kwargs)
        self._norm_attr = "bn" if norm == "batch" else "inorm"
        table = _BATCH_NORM if norm == "batch" else _INSTANCE_NORM
        setattr(self, self._norm_attr, table[dims](out_channels))
        self.use_norm = use_norm
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.use_norm:
            x = getattr(self, self._norm_attr)(x)
        if self.act:
            x = F.leaky_relu(x, 0.01)
        return x


class Conv2x(nn.Module):
    """2x learned upsampling of `x`, concatenation with the finer skip tensor, then a 3x3 ConvNormAct.

    Upstream's `Conv2x`/`Conv2x_IN` in the only configuration the IGEV networks use (deconv, concat,
    keep_concat): conv1 is a 4x4 stride-2 transposed conv in -> out, conv2 a 3x3 conv 2*out -> 2*out.
    x: [B, in, h, w], skip: [B, out, ~2h, ~2w] -> [B, 2*out, skip H, skip W]. When the upsampled map does not
    match the skip's size (inputs not a multiple of 32) it is resized with nearest neighbour, as upstream does.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, norm=norm, deconv=True, kernel_size=4, stride=2, padding=1)
        self.conv2 = ConvNormAct(2 * out_channels, 2 * out_channels, norm=norm, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv2(torch.cat((x, skip), dim=1))


class FeatureAtt(nn.Module):
    """Gates a cost volume with per-pixel channel weights predicted from image features.

    cost: [B, C, D, H, W], feat: [B, F, H, W] -> cost * sigmoid(att(feat)) broadcast over D.
    """

    def __init__(self, cost_channels: int, feat_channels: int) -> None:
        super().__init__()
        self.feat_att = nn.Sequential(
            ConvNormAct(feat_channels, feat_channels // 2, kernel_size=1, stride=1, padding=0),
            nn.Conv2d(feat_channels // 2, cost_channels, 1),
        )

    def forward(self, cost: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.feat_att(feat)).unsqueeze(2) * cost


def instance_norm_stem(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ConvNormAct(instance) 3x3 (stride), then a bias-free 3x3 conv, InstanceNorm and plain ReLU.

    Used for the image stems (`stem_2`, `stem_4`, stride 2) and the init upsampler's `spx_4` (stride 1).
    [B, in, H, W] -> [B, out, H/stride, W/stride].
    """
    return nn.Sequential(
        ConvNormAct(in_channels, out_channels, norm="instance", kernel_size=3, stride=stride, padding=1),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(),
    )
