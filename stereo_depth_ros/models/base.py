"""The forward skeleton shared by RT-IGEV (student) and Selective-IGEV (teacher).

Both networks: normalise -> MobileNetV2 features + instance-norm stems -> matching descriptors -> group-wise
correlation volume -> 3D hourglass -> soft-argmin initial disparity -> GRU iterations that sample the
aggregated volume around the current disparity -> convex x4 upsampling. A subclass supplies its context/hidden
state and its update block through three hooks (`init_state`, `update_step`, optionally `filter_cost_volume`)
and sets `all_pairs_correlation` when its geometry lookup also samples the all-pairs correlation.

Precision lives here only (`_autocast`): under fp16/bf16 autocast on CUDA the geometry lookup, the softmaxes,
the disparity regression and the upsampling run in the weights' dtype (float32), as upstream does to avoid
fp16 NaNs. The weights' dtype is the compute dtype, so `model.double()` runs float64 end to end. With float16 or
bfloat16 weights (`model.half()`: the fp16 ONNX export) the same stretches run in float32 (`work` dtype below), and
so does the correlation volume's accumulation; with float32/float64 weights `work` is the weights' dtype and
nothing changes.
"""
from __future__ import annotations

import abc
import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from stereo_depth_ros.pad_split import MIN_SIDE, PAD_DIVISOR

from .blocks import Conv2x, ConvNormAct, instance_norm_stem
from .config import PRECISIONS, IGEVConfig
from .cost_volume import Hourglass, build_gwc_volume, disparity_regression
from .feature import Feature
from .geometry import GeometryEncoding
from .padding import InputPadder
from .upsample import context_upsample

COST_VOLUME_GROUPS = 8
# Confidence: probability mass of the initial disparity distribution within this many 1/4-res planes of the
# final disparity (see IGEVBase.predict).
CONFIDENCE_WINDOW = 1.5


@dataclass
class ForwardResult:
    """Everything one pass computes that a caller may want (full-res maps are [B, 1, H, W])."""

    init_disparity: torch.Tensor | None  # full-res upsampled soft-argmin (training only)
    predictions: list[torch.Tensor]  # full-res, one per iteration (test mode: the last only)
    confidence: torch.Tensor | None = None  # full-res 0..1, when asked for


class IGEVBase(nn.Module, metaclass=abc.ABCMeta):
    """Shared trunk. Subclasses are registered with `@register_model(name)` and set `config_class`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[IGEVConfig]] = IGEVConfig
    all_pairs_correlation: ClassVar[bool] = False

    def __init__(self, config: IGEVConfig | None = None) -> None:
        super().__init__()
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self._input_range_checked = False  # see predict: the 0..1 check runs until one image decides it

        self.feature = Feature()
        self.stem_2 = instance_norm_stem(3, 32, stride=2)
        self.stem_4 = instance_norm_stem(32, 48, stride=2)
        # matching descriptors from cat(Feature x4, stem_4) (96 channels at 1/4 res)
        self.conv = ConvNormAct(96, 96, norm="instance", kernel_size=3, stride=1, padding=1)
        self.desc = nn.Conv2d(96, 96, kernel_size=1, padding=0, stride=1)
        self.cost_agg = Hourglass(COST_VOLUME_GROUPS)
        self.classifier = nn.Conv3d(8, 1, 3, 1, 1, bias=False)
        # x4 upsampling weights of the initial disparity (training output only)
        self.spx_4 = instance_norm_stem(96, 24, stride=1)
        self.spx_2 = Conv2x(24, 32, norm="instance")
        self.spx = nn.Sequential(nn.ConvTranspose2d(2 * 32, 9, kernel_size=4, stride=2, padding=1))
        # x4 upsampling weights of the GRU disparities, from the update block's 32-channel mask feature
        self.spx_2_gru = Conv2x(32, 32, norm="batch")
        self.spx_gru = nn.Sequential(nn.ConvTranspose2d(2 * 32, 9, kernel_size=4, stride=2, padding=1))

    # ---- hooks -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def init_state(self, image_left: torch.Tensor, features_left: list[torch.Tensor]) -> Any:
        """Recurrent state (hidden state, context, ...) before the first iteration; runs under autocast.

        image_left: normalised [B, 3, H, W]; features_left[0]: [B, 96, H/4, W/4] (Feature x4 + stem_4).
        """

    @abc.abstractmethod
    def update_step(self, state: Any, geo_feat: torch.Tensor, disp: torch.Tensor
                    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One GRU iteration -> (state, mask_feat [B, 32, H/4, W/4], delta_disp [B, 1, H/4, W/4])."""

    def filter_cost_volume(self, volume: torch.Tensor, features_left: list[torch.Tensor]) -> torch.Tensor:
        """Optional processing of the raw [B, 8, D, H/4, W/4] volume before the hourglass."""
        return volume

    # ---- training-mode configuration ----------------------------------------------------------------------
    def freeze_bn(self) -> None:
        """Upstream's training setting: 2D batch norms use their running statistics (they were trained on
        larger batches); the 3D ones of the cost aggregation keep normalising with batch statistics."""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):  # includes timm's BatchNormAct2d
                module.eval()

    def train(self, mode: bool = True) -> "IGEVBase":
        super().train(mode)
        if mode:
            self.freeze_bn()
        return self

    # ---- precision ------------------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return self.classifier.weight.dtype

    def _autocast(self, device: torch.device):
        dtype = PRECISIONS[self.config.precision]
        if dtype == torch.float32 or device.type != "cuda" or self.compute_dtype != torch.float32:
            return contextlib.nullcontext()
        # No weight-cast cache: each `with amp:` stretch below exits before the next, so the cache would save
        # almost nothing, and a cache that outlives a stretch is unsafe under CUDA-graph capture.
        return torch.autocast("cuda", dtype=dtype, cache_enabled=False)

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int | None = None, test_mode: bool = False):
        """Upstream's forward on padded input ([B, 3, H, W], RGB 0..255, H and W multiples of 32).

        test_mode=True -> the last iteration's full-res disparity [B, 1, H, W];
        test_mode=False -> (init_disp [B, 1, H, W], [disp [B, 1, H, W] per iteration]) for the training loss.
        """
        result = self.run(left, right, iters=iters, test_mode=test_mode)
        if test_mode:
            return result.predictions[-1]
        return result.init_disparity, result.predictions

    def run(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        iters: int | None = None,
        test_mode: bool = False,
        with_confidence: bool = False,
    ) -> ForwardResult:
        """The whole pass; `forward` and `predict` are views of it."""
        iters = self.config.valid_iters if iters is None else int(iters)
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        dtype = self.compute_dtype
        work = torch.promote_types(dtype, torch.float32)  # float32 islands of reduced-precision weights
        num_planes = self.config.max_disp // 4
        image1 = (2 * (left.to(dtype) / 255.0) - 1.0).contiguous()
        image2 = (2 * (right.to(dtype) / 255.0) - 1.0).contiguous()
        amp = self._autocast(image1.device)  # re-entered for each reduced-precision stretch below

        with amp:
            features_left = self.feature(image1)
            features_right = self.feature(image2)
            stem_2x = self.stem_2(image1)
            stem_2y = self.stem_2(image2)
            features_left[0] = torch.cat((features_left[0], self.stem_4(stem_2x)), dim=1)
            features_right[0] = torch.cat((features_right[0], self.stem_4(stem_2y)), dim=1)

            match_left = self.desc(self.conv(features_left[0]))
            match_right = self.desc(self.conv(features_right[0]))
            volume = self._correlation_volume(match_left, match_right, num_planes)
            volume = self.filter_cost_volume(volume, features_left)
            geo_volume = self.cost_agg(volume, features_left)
            del volume
            logits = self.classifier(geo_volume).squeeze(1)
        prob = F.softmax(logits.to(work), dim=1)
        init_disp = disparity_regression(prob)

        with amp:
            init_weights = None
            if not test_mode:
                init_weights = self.spx(self.spx_2(self.spx_4(features_left[0]), stem_2x))
            state = self.init_state(image1, features_left)

        if self.all_pairs_correlation:
            geometry = GeometryEncoding(
                geo_volume.to(work), self.config.corr_levels, self.config.corr_radius,
                match_left.to(work), match_right.to(work),
            )
        else:
            geometry = GeometryEncoding(geo_volume.to(work), self.config.corr_levels, self.config.corr_radius)
        del geo_volume

        disp = init_disp
        predictions: list[torch.Tensor] = []
        weights = None
        for itr in range(iters):
            disp = disp.detach()
            geo_feat = geometry(disp)
            with amp:
                state, mask_feat, delta_disp = self.update_step(state, geo_feat.to(dtype), disp.to(dtype))
            disp = disp + delta_disp.to(work)
            if test_mode and itr < iters - 1:
                continue
            with amp:
                gru_logits = self.spx_gru(self.spx_2_gru(mask_feat, stem_2x))
            weights = F.softmax(gru_logits.to(work), dim=1)
            predictions.append(context_upsample(disp * 4.0, weights))

        result = ForwardResult(init_disparity=None, predictions=predictions)
        if init_weights is not None:
            result.init_disparity = context_upsample(init_disp * 4.0, F.softmax(init_weights.to(work), dim=1))
        if with_confidence and weights is not None:
            planes = torch.arange(num_planes, dtype=work, device=prob.device).view(1, -1, 1, 1)
            near = ((planes - disp.detach()).abs() <= CONFIDENCE_WINDOW).to(work)
            mass = (prob * near).sum(dim=1, keepdim=True)
            result.confidence = context_upsample(mass, weights).clamp(0.0, 1.0)
        return result

    def _correlation_volume(self, match_left: torch.Tensor, match_right: torch.Tensor, planes: int) -> torch.Tensor:
        """The group-wise correlation volume. With float16/bfloat16 weights the products and their means over each
        group's channels are accumulated in float32 and only the mean is cast back: a product of two features
        leaves float16's range (65504) long before their mean does. Otherwise (float32/float64 weights, and under
        autocast) it is built in the features' dtype, as upstream does."""
        if self.compute_dtype in (torch.float16, torch.bfloat16):
            volume = build_gwc_volume(match_left.float(), match_right.float(), planes, COST_VOLUME_GROUPS)
            return volume.to(self.compute_dtype)
        return build_gwc_volume(match_left, match_right, planes, COST_VOLUME_GROUPS)

    # ---- inference ------------------------------------------------------------------------------------------
    def predict(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        iters: int | None = None,
        return_confidence: bool = False,
    ):
        """Disparity of the left view for a pair of any size.

        left, right: [B, 3, H, W] RGB 0..255 (any float dtype, any device: moved to the model's).
        Returns float32 [B, 1, H, W] positive disparity in pixels (float64 after `model.double()`), and with
        return_confidence also [B, 1, H, W] in 0..1: the probability mass of the cost volume's initial
        disparity distribution within +-1.5 planes (+-6 px) of the final estimate, i.e. how sharply the
        matching cost agrees with the answer; spread, multi-modal or contradicted distributions score low.
        It is computed at 1/4 resolution and brought to full resolution with the same convex weights as the
        disparity. Padding to a multiple of 32 (edge replication) happens here, as in upstream's evaluation.
        Images smaller than 32 px on a side raise ValueError; float images with values in 0..1 get one warning.
        """
        if left.ndim != 4 or left.shape[1] != 3 or left.shape != right.shape:
            raise ValueError(
                "left and right must both be [B, 3, H, W] of the same shape, "
                f"got {list(left.shape)} and {list(right.shape)}"
            )
        height, width = left.shape[-2:]
        if height < MIN_SIDE or width < MIN_SIDE:
            raise ValueError(f"images of {width}x{height} are too small: the networks need at least "
                             f"{MIN_SIDE}x{MIN_SIDE} (their coarsest features are 1/{PAD_DIVISOR} of the image)")
        self._check_input_range(left, right)
        device = self.classifier.weight.device
        padder = InputPadder(left.shape, PAD_DIVISOR)
        left, right = padder.pad(left.to(device), right.to(device))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                result = self.run(left, right, iters=iters, test_mode=True, with_confidence=return_confidence)
        finally:
            self.train(was_training)
        out_dtype = torch.float64 if self.compute_dtype == torch.float64 else torch.float32
        disp = padder.unpad(result.predictions[-1]).to(out_dtype)
        if not return_confidence:
            return disp
        assert result.confidence is not None  # asked for with_confidence
        return disp, padder.unpad(result.confidence).to(out_dtype)

    def _check_input_range(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Warn once when float images look like 0..1 (the networks expect 0..255 and would see near-black).

        Runs until an image with a non-zero maximum decides it, so that a warm-up on black images does not use it
        up, and then never again: reading the maximum waits for the device, which a per-frame caller must not pay,
        and which a CUDA graph capture forbids (so a capture skips it; the captured graph never runs this code).
        """
        if self._input_range_checked or not left.is_floating_point():
            return
        if left.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        peak = float(torch.maximum(left.amax(), right.amax()))
        if peak > 0.0:
            self._input_range_checked = True
        if 0.0 < peak <= 1.0:
            warnings.warn(f"predict: the images' values reach only {peak:.3g}; the networks expect RGB 0..255 "
                          "(multiply 0..1 images by 255)", stacklevel=3)
