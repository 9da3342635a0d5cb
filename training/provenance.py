"""What outputs record about where they came from: file digests and software versions."""
from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict:
    import torch

    import stereo_depth_ros

    return {"stereo_depth_ros": stereo_depth_ros.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
