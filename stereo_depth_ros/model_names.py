"""The registered networks by name, readable without torch (the SGBM node's parameter check needs the names).

Each name is the module under `stereo_depth_ros.models` whose import registers the network of that name
(`@register_model(name)`); `register_model` refuses a name missing here, so this list and the registry agree.
"""
from __future__ import annotations

MODEL_NAMES: tuple[str, ...] = ("rt_igev", "selective_igev")
