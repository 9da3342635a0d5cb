"""Files we write are 0644 under umask 022 (and follow any other umask): atomic writes used to make them 0600.

The CLI's outputs are checked where their own tests already run them (label, train, extract, export); this module
checks the atomic writer under three umasks and a checkpoint written by `save_checkpoint` under umask 027, as a
deployment might set it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stereo_depth_ros.atomic_io import atomic_path, atomic_write_bytes, atomic_write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        with atomic_path(tmp_path / "c.png") as tmp:
            tmp.write_bytes(b"png")  # what cv2.imwrite / torch.onnx.export do with the yielded path
    finally:
        os.umask(previous)
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {"a.bin": expected, "b.json": expected,
                                                              "c.png": expected}


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "model.onnx"):
            raise RuntimeError("exporter failed")
    assert not list(tmp_path.iterdir())


def test_checkpoint_written_under_umask_027_is_group_readable(tmp_path):
    torch = pytest.importorskip("torch")
    from stereo_depth_ros.models import save_checkpoint

    previous = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "ckpt.pth", torch.nn.Linear(2, 2), step=1)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "ckpt.pth") == 0o640
