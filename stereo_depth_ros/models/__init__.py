"""Stereo networks: RT-IGEV (student) and Selective-IGEV (teacher) on one set of IGEV building blocks.

Where things live:
  config.py        IGEVConfig (fields every network reads), PRECISIONS
  blocks.py        ConvNormAct (upstream BasicConv / BasicConv_IN), Conv2x, FeatureAtt, instance_norm_stem
  feature.py       Feature: timm mobilenetv2_100 pyramid + instance-norm decoder
  cost_volume.py   build_gwc_volume, Hourglass (3D aggregation), disparity_regression (soft-argmin)
  geometry.py      GeometryEncoding: volume lookup, optional all-pairs correlation (teacher)
  upsample.py      context_upsample (convex x4)
  padding.py       InputPadder (/32, replicate, both sides)
  images.py        rgb_batch: numpy RGB images -> the float32 [N, 3, H, W] tensor predict takes
  update.py        ConvGRU, MotionEncoder, DispHead, mask_feature_head (shared update pieces)
  base.py          IGEVBase: the shared forward skeleton, precision, train()/freeze_bn, predict, confidence
  rt_igev.py       RTIGEVConfig, RTUpdateBlock, RTIGEVStereo ("rt_igev")
  selective_igev.py, selective_update.py, context_encoder.py   the teacher ("selective_igev")
  registry.py      register_model / get_model_class / available_models
  checkpoint.py    read_checkpoint, load_state_dict_strict, save_checkpoint, CheckpointError

    from stereo_depth_ros.models import load_model
    student = load_model("rt_igev", checkpoint="weights/sceneflow.pth", device="cuda", precision="fp16")
    disp = student.predict(left, right)               # [B,1,H,W] float32, left-view pixels
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import torch

from stereo_depth_ros.model_names import MODEL_NAMES

from .base import IGEVBase
from .checkpoint import CheckpointError, load_state_dict_strict, read_checkpoint, save_checkpoint
from .config import PRECISIONS, IGEVConfig
from .registry import available_models, get_model_class, register_model

# Importing a network's module registers it (its module is named like the network).
for _name in MODEL_NAMES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "CheckpointError",
    "IGEVBase",
    "IGEVConfig",
    "available_models",
    "get_model_class",
    "load_model",
    "register_model",
    "save_checkpoint",
]

SEED = 0


def load_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> IGEVBase:
    """Build network `name`, load `checkpoint` strictly (None: seeded random init) and return it in eval mode.

    overrides: config fields (max_disp, valid_iters, precision, ...); they win over a training checkpoint's
    saved config. Precision other than fp32 applies on CUDA only: elsewhere fp32 is used (with a warning).
    Raises ValueError for an unknown name or config field, CheckpointError for a bad or mismatching file.
    """
    cls = get_model_class(name)
    device = torch.device(device)
    values: dict[str, Any] = {}
    ckpt = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        if ckpt.model_name is not None and ckpt.model_name != name:
            raise CheckpointError(f"checkpoint {checkpoint} was saved from model {ckpt.model_name!r}, not {name!r}")
        values.update(ckpt.config or {})
    values.update(overrides)
    precision = values.get("precision", "fp32")
    if precision in PRECISIONS and precision != "fp32" and device.type != "cuda":
        warnings.warn(f"precision {precision!r} needs CUDA; running {name} in fp32 on {device}", stacklevel=2)
        values["precision"] = "fp32"
    config = cls.config_class.from_dict(values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = cls(config)
    if ckpt is not None:
        load_state_dict_strict(model, ckpt.state_dict, source=f"checkpoint {checkpoint}")
    return model.to(device).eval()
