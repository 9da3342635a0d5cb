"""The one checkpoint reader/writer for every network.

Accepted files:
- official releases: a plain state_dict of an `nn.DataParallel` model (keys prefixed `module.`), or without prefix;
- our training checkpoints: {"model": state_dict, "config": {...}, "model_name": str, "step": N, ...}.
Files are read with `torch.load(weights_only=True)`: a checkpoint can never run code. Extra entries saved with
`save_checkpoint` must therefore be tensors, numbers, strings and containers of them (no numpy objects).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic_io import atomic_write

_PREFIX = "module."
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the network it is loaded into."""


@dataclasses.dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # our training format only
    model_name: str | None  # our training format only
    extra: dict[str, Any]  # everything else in our training format (step, optimizer, ...)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read either accepted format; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, IndexError, TypeError) as exc:
        text = str(exc)
        if "Unsupported global" in text:
            # a real checkpoint holding objects (numpy arrays, custom classes) that we refuse to unpickle
            detail = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
            raise CheckpointError(
                f"checkpoint {path} holds objects torch.load(weights_only=True) refuses (only tensors, numbers, "
                f"strings and containers of them are accepted): {detail}"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or not a checkpoint file; "
            f"{path.stat().st_size} bytes; {type(exc).__name__})"
        ) from None

    if isinstance(payload, Mapping) and "model" in payload and isinstance(payload["model"], Mapping):
        state = payload["model"]
        config = payload.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise CheckpointError(f"checkpoint {path}: 'config' must be a mapping, got {type(config).__name__}")
        name = payload.get("model_name")
        extra = {k: v for k, v in payload.items() if k not in ("model", "config", "model_name")}
    elif isinstance(payload, Mapping):
        state, config, name, extra = payload, None, None, {}
    else:
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state_dict")

    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not state or bad:
        raise CheckpointError(
            f"checkpoint {path} has no state_dict: expected a mapping of parameter names to tensors"
            + (f" (non-tensor entries: {bad[:_SHOW]})" if bad else " (it is empty)")
        )
    if all(k.startswith(_PREFIX) for k in state):
        state = {k[len(_PREFIX):]: v for k, v in state.items()}
    return Checkpoint(dict(state), dict(config) if config is not None else None, name, extra)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict(strict=True) with one readable error instead of PyTorch's list of every key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        name = getattr(model, "name", "") or type(model).__name__
        parts = [f"{source} does not fit model {name!r}:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s) [{_first(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) [{_first(unexpected)}]")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) [{_first(shapes)}]")
        overlap = len(set(expected) & set(state)) / max(len(set(expected) | set(state)), 1)
        if overlap < 0.9:
            cause = f"only {overlap:.0%} of the keys are shared: a checkpoint of another network"
            guess = _guess_model(state)
            if guess and guess != getattr(model, "name", None):
                cause += f" (its keys match {guess!r})"
        elif shapes and not missing and not unexpected:
            cause = "same layers, other sizes: the same network built with another config (e.g. hidden_dim)"
        else:
            cause = "another version or variant of the network, or a damaged file"
        parts.append(f"likely cause: {cause}")
        raise CheckpointError(parts[0] + " " + "; ".join(parts[1:]))
    model.load_state_dict(state, strict=True)


def _guess_model(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which registered network's keys the state_dict matches exactly (networks built on the meta device)."""
    from .registry import _MODELS  # late: the registry is filled when the model modules are imported

    keys = set(state)
    for name, cls in _MODELS.items():
        try:
            with torch.device("meta"):
                candidate = cls()
        except Exception:  # a network that cannot be built on the meta device is simply not guessed
            continue
        if set(candidate.state_dict()) == keys:
            return name
    return None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> None:
    """Write {"model", "config", "model_name", **extra} atomically (a crash never leaves a partial file).

    extra: step, optimizer/scheduler state_dicts, rng tensors, ... (weights_only-loadable values only).
    """
    reserved = {"model", "config", "model_name"} & set(extra)
    if reserved:
        raise ValueError(f"extra entries may not be named {sorted(reserved)}")
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and isinstance(config, type):
        config = None  # a class, not a configuration
    if dataclasses.is_dataclass(config) and not isinstance(config, type) and hasattr(config, "precision"):
        # Precision is the choice of whoever runs the file (load_model's precision=), not a property of the
        # weights: a student trained in bf16 must not make every later evaluation run in bf16.
        config = dataclasses.replace(config, precision="fp32")
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type)
        else None,
        "model_name": getattr(model, "name", None) or None,
        **extra,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))
