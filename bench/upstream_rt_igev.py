"""Upstream's RT-IGEV (gangweix/IGEV-plusplus, core_rt/) built offline from a local checkout, for side-by-side runs.

Nothing of upstream is part of this repository: the caller names a checkout (`bench/gpu.py --upstream DIR`).
Upstream's Feature hard-codes `timm.create_model('mobilenetv2_100', pretrained=True)` (an ImageNet download) and
reads `model.act1`, which timm >= 0.6 folds into `bn1`. The parity fixture's config.json lists both adaptations
(`adaptations`): while upstream's constructor runs, `timm.create_model` is wrapped to force pretrained=False and to
add `act1 = Identity` where timm has none. Every weight is then replaced by ours (strict load), so neither changes
what runs. Its evaluation call sequence (evaluate_stereo_rt.py) is InputPadder(divis_by=32) -> forward(iters,
test_mode=True) -> unpad, under no_grad, with autocast off for fp32.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# upstream's evaluation arguments that its model reads (config.json "args"), fp32
UPSTREAM_ARGS = {"mixed_precision": False, "precision_dtype": "float32", "hidden_dim": 96, "corr_levels": 2,
                 "corr_radius": 4, "n_downsample": 2, "n_gru_layers": 3, "max_disp": 192}


class UpstreamError(RuntimeError):
    """A checkout that is not usable; the message says why."""


def file_digests(checkout: Path, names: list[str]) -> dict[str, str]:
    """sha256 of upstream files, to compare with the parity fixture's record of the audited commit."""
    return {name: hashlib.sha256((checkout / name).read_bytes()).hexdigest()
            for name in names if (checkout / name).is_file()}


def build_upstream(checkout: Path, state_dict: dict[str, torch.Tensor], device: torch.device,
                   max_disp: int = 192) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """Upstream's IGEVStereo with `state_dict` (ours: same keys) loaded strictly, in eval mode on `device`, wrapped
    in its evaluation sequence: (left, right [1, 3, H, W] 0..255, iters) -> disparity [1, 1, H, W]."""
    if not (checkout / "core_rt" / "rt_igev_stereo.py").is_file():
        raise UpstreamError(f"{checkout} is not a checkout of gangweix/IGEV-plusplus (no core_rt/rt_igev_stereo.py)")
    import timm

    original: Callable[..., nn.Module] = timm.create_model

    def offline_create_model(name: str, *args, **kwargs) -> nn.Module:
        kwargs["pretrained"] = False  # upstream asks for ImageNet weights; ours replace them all anyway
        model = original(name, *args, **kwargs)
        if not hasattr(model, "act1"):  # timm >= 0.6: ReLU6 lives inside bn1 (BatchNormAct2d)
            model.act1 = nn.Identity()
        return model

    sys.path.insert(0, str(checkout))  # upstream imports itself as `core_rt.*`
    timm.create_model = offline_create_model
    try:
        network = importlib.import_module("core_rt.rt_igev_stereo")
        padder_class = importlib.import_module("core_rt.utils.utils").InputPadder
        model = network.IGEVStereo(argparse.Namespace(**{**UPSTREAM_ARGS, "max_disp": max_disp}))
    finally:
        timm.create_model = original
        sys.path.remove(str(checkout))
    model.load_state_dict(state_dict, strict=True)
    model = model.to(device).eval()

    @torch.no_grad()
    def predict(left: torch.Tensor, right: torch.Tensor, iters: int) -> torch.Tensor:
        padder = padder_class(left.shape, divis_by=32)
        left_p, right_p = padder.pad(left, right)
        return padder.unpad(model(left_p, right_p, iters=iters, test_mode=True))

    return predict
