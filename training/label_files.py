"""Reading LABELS/<sample>/ (written by `label.write_label`): the teacher's disparity and its validity mask."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .cli import CliError


def has_label(label_dir: Path) -> bool:
    return (label_dir / "disparity.npy").is_file() and (label_dir / "valid.png").is_file()


def read_label(label_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(disparity float32 [H,W], valid bool [H,W]) of LABELS/<sample>/; raises CliError naming a broken file."""
    try:
        disp = np.load(label_dir / "disparity.npy").astype(np.float32)
    except (OSError, ValueError, EOFError) as error:
        raise CliError(f"cannot read label {label_dir / 'disparity.npy'}: {error}") from None
    valid_png = cv2.imread(str(label_dir / "valid.png"), cv2.IMREAD_UNCHANGED)
    if valid_png is None:
        raise CliError(f"cannot read label mask {label_dir / 'valid.png'}")
    if valid_png.shape[:2] != disp.shape:
        raise CliError(f"label {label_dir}: valid.png {valid_png.shape[:2]} and disparity.npy {disp.shape} differ")
    valid = (valid_png > 127) & np.isfinite(disp)
    return disp, valid
