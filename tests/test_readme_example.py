"""The README's Python example (the first python block under "## Models") runs as written on a real pair.

The block reads left.png/right.png from the working directory: a Motorcycle crop is written there. Only the
checkpoint is replaced: the RT-IGEV parity fixture when ../shared is present, else the seeded init (None), since
weights/sceneflow.pth is not in the repository.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "parity" / "rt_igev" / "weights.pth"
CHECKPOINT = 'checkpoint="weights/sceneflow.pth"'


def readme_models_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Models"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    crop = (slice(200, 264), slice(300, 396))  # 96x64: small, so that the CPU run is short
    cv2.imwrite(str(tmp_path / "left.png"), cv2.cvtColor(left[crop], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "right.png"), cv2.cvtColor(right[crop], cv2.COLOR_RGB2BGR))
    block = readme_models_block()
    assert CHECKPOINT in block
    block = block.replace(CHECKPOINT, f"checkpoint={str(FIXTURE)!r}" if FIXTURE.is_file() else "checkpoint=None")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. predict's 0..1 warning would mean the example converts wrongly
        exec(compile(block, "README.md", "exec"), namespace)
    disp = namespace["disp"]
    assert tuple(disp.shape) == (1, 1, 64, 96) and bool(disp.isfinite().all())
    assert "disparity (1, 1, 64, 96), median" in capsys.readouterr().out
