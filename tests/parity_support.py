"""What both parity test modules need: where the fixtures are, how to read a case, and the figures report."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

PARITY_ROOT = Path(__file__).resolve().parents[2] / "shared" / "parity"


def fixture_dir(model_name: str) -> Path:
    return PARITY_ROOT / model_name


def skip_without_fixture(fixture: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (fixture / "weights.pth").is_file(),
        reason=f"upstream-parity test: fixture {fixture} absent (it lives beside the repo in ../shared/parity)",
    )


def load_case(fixture: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(fixture / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def report_figures(title: str, figures: dict[str, float]) -> Iterator[None]:
    """Body of a module-scoped fixture: at most 2 threads (the fixtures were made with 2), then print figures."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)
    if figures:
        print(f"\n{title}, max abs diff (px):")
        for key in sorted(figures):
            print(f"  {key:40s} {figures[key]:.3e}")
