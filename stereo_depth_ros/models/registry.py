"""Name -> network class registry (`register_model("name")` on the class).

The names themselves are listed in `stereo_depth_ros.model_names` (readable without torch); registering a name
missing there is refused, so that the list and the registry cannot drift apart.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from stereo_depth_ros.model_names import MODEL_NAMES

if TYPE_CHECKING:
    from .base import IGEVBase

T = TypeVar("T", bound="type[IGEVBase]")

_MODELS: dict[str, type[IGEVBase]] = {}


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: makes the network loadable as `load_model(name)` and sets `cls.name`."""

    def decorate(cls: T) -> T:
        if name not in MODEL_NAMES:
            raise ValueError(f"model name {name!r} is not listed in stereo_depth_ros.model_names.MODEL_NAMES")
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return decorate


def get_model_class(name: str) -> type[IGEVBase]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(_MODELS)}")
    return _MODELS[name]


def available_models() -> list[str]:
    return sorted(_MODELS)
