"""Fixtures shared by the test modules.

`seeded_weights` writes a checkpoint of each registered network (the seeded random init of `load_model`) in the
official checkpoints' format, a plain state_dict of an nn.DataParallel model, to a temporary folder: the
export, eval, label and train tests run on it, so that a clone without ../shared runs every test except the
upstream-parity ones (which compare against upstream's outputs) and those needing the ROS tooling wheels.

`cli` runs `stereo-distill` in this process (the real dispatcher, exit status, stdout and stderr); tests start
a separate process only where that is the point (kill -9 and resume, torchrun).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from stereo_depth_ros.model_names import MODEL_NAMES
    from stereo_depth_ros.models import load_model

    folder = tmp_path_factory.mktemp("seeded_weights")
    paths = {}
    for name in MODEL_NAMES:
        path = folder / f"{name}.pth"
        torch.save({f"module.{key}": value for key, value in load_model(name).state_dict().items()}, path)
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def student_weights(seeded_weights: dict[str, Path]) -> Path:
    return seeded_weights["rt_igev"]


@pytest.fixture(scope="session")
def teacher_weights(seeded_weights: dict[str, Path]) -> Path:
    return seeded_weights["selective_igev"]


@dataclass
class CliResult:
    status: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """cli("eval", "--model", path, ...) -> CliResult(exit status, stdout, stderr) of `stereo-distill`."""
    from stereo_distill.cli import main

    def run(*argv: object) -> CliResult:
        capsys.readouterr()
        try:
            status = main([str(arg) for arg in argv])
        except SystemExit as exit_:  # argparse rejected the arguments
            status = exit_.code if isinstance(exit_.code, int) else 2
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)

    return run
