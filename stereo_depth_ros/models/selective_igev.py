"""Selective-IGEV, the teacher (upstream: Windsrain/Selective-Stereo, Selective-IGEV/core/).

IGEV's trunk (shared with the student in base.py) plus what only the teacher has:
  - a 3D stem and a feature gate on the raw group-wise volume before the hourglass (`filter_cost_volume`);
  - a geometry lookup that also samples the all-pairs correlation of the matching descriptors;
  - a separate context network on the image (context_encoder.py) feeding a three-level GRU at 1/4, 1/8 and
    1/16 resolution whose cells are Selective Recurrent Units (selective_update.py), gated by channel
    attention (cam) and mixed per pixel by spatial attention (sam).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import COST_VOLUME_GROUPS, IGEVBase
from .blocks import ConvNormAct, FeatureAtt
from .config import IGEVConfig
from .context_encoder import MultiScaleContextEncoder
from .registry import register_model
from .selective_update import ChannelAttentionEnhancement, SelectiveMultiUpdateBlock, SpatialAttentionExtractor

# Channels of cat(Feature x4, stem_4): what corr_feature_att reads, fixed by the shared trunk.
MATCH_FEATURE_CHANNELS = 96
# The trunk works at 1/4 resolution, so the context network downsamples by 2^2 (upstream's n_downsample=2).
CONTEXT_DOWNSAMPLE = 2


@dataclass
class SelectiveIGEVConfig(IGEVConfig):
    """Upstream's setting for `middlebury_finetune.pth` (README demo: --valid_iters 80 --max_disp 768).

    The other fields are upstream's evaluation defaults, which that checkpoint was trained with.
    hidden_dims: GRU hidden/context widths at [1/16, 1/8, 1/4] (upstream order). The channel attention is one
        module shared by every level, so the three must be equal.
    n_gru_layers: GRU levels, 3 (1/4, 1/8, 1/16) or 2 (1/4, 1/8).
    """

    max_disp: int = 768
    valid_iters: int = 80
    hidden_dims: tuple[int, int, int] = (128, 128, 128)
    n_gru_layers: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        dims = tuple(self.hidden_dims)  # a saved config comes back from JSON/YAML as a list
        if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 16 for d in dims):
            raise ValueError(f"hidden_dims must be three integers >= 16, got {self.hidden_dims!r}")
        if len(set(dims)) != 1:
            raise ValueError(f"hidden_dims must be equal (one channel attention serves every level), got {dims}")
        self.hidden_dims = dims
        if self.n_gru_layers not in (2, 3):
            raise ValueError(f"n_gru_layers must be 2 or 3, got {self.n_gru_layers!r}")
        if self.max_disp % 32:
            # three stride-2 levels of the 3D hourglass over max_disp/4 planes
            raise ValueError(f"max_disp must be a multiple of 32, got {self.max_disp}")


@register_model("selective_igev")
class SelectiveIGEVStereo(IGEVBase):
    """Recurrent state per GRU level, finest first: hidden `net` [B,128,h,w], gated context `inp` and the
    small-kernel share `att` [B,1,h,w] (h, w = 1/4, 1/8, 1/16 of the padded input)."""

    config_class = SelectiveIGEVConfig
    config: SelectiveIGEVConfig
    all_pairs_correlation = True

    def __init__(self, config: SelectiveIGEVConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        dims = list(cfg.hidden_dims)
        self.cnet = MultiScaleContextEncoder([dims, dims], norm_layer=nn.BatchNorm2d, downsample=CONTEXT_DOWNSAMPLE)
        # per level: the volume's 8 group channels plus the all-pairs correlation, 2r+1 taps each
        geo_channels = cfg.corr_levels * (2 * cfg.corr_radius + 1) * (COST_VOLUME_GROUPS + 1)
        self.update_block = SelectiveMultiUpdateBlock(dims, geo_channels, cfg.n_gru_layers)
        self.sam = SpatialAttentionExtractor()
        self.cam = ChannelAttentionEnhancement(dims[0])
        self.corr_stem = ConvNormAct(COST_VOLUME_GROUPS, COST_VOLUME_GROUPS, dims=3, kernel_size=3, stride=1, padding=1)
        self.corr_feature_att = FeatureAtt(COST_VOLUME_GROUPS, MATCH_FEATURE_CHANNELS)

    def filter_cost_volume(self, volume: torch.Tensor, features_left: list[torch.Tensor]) -> torch.Tensor:
        return self.corr_feature_att(self.corr_stem(volume), features_left[0])

    def init_state(self, image_left: torch.Tensor, features_left: list[torch.Tensor]):
        levels = self.cnet(image_left, num_levels=self.config.n_gru_layers)
        net = [torch.tanh(hidden) for hidden, _ in levels]
        inp = []
        for _, context in levels:
            context = torch.relu(context)
            inp.append(self.cam(context) * context)
        # The spatial attention depends on the context only: computed once, reused by every iteration.
        att = [self.sam(x) for x in inp]
        return net, inp, att

    def update_step(self, state, geo_feat: torch.Tensor, disp: torch.Tensor):
        net, inp, att = state
        net, mask_feat, delta_disp = self.update_block(net, inp, geo_feat, disp, att)
        return (net, inp, att), mask_feat, delta_disp
