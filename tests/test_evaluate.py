"""`stereo-distill eval` on real pairs (Motorcycle crops with ground truth and labels), for .pth and .onnx models.

Uses the RT-IGEV parity fixture (official checkpoint format, seeded weights), 2 GRU iterations, small crops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from stereo_distill.toy import motorcycle_crops, write_data, write_label  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
STUDENT = PARITY / "rt_igev" / "weights.pth"
CLI = [sys.executable, "-c", "import sys; from stereo_distill.cli import main; sys.exit(main())"]
KEYS = {"epe", "d1", "bad1", "bad2", "bad3", "pairs", "valid_fraction", "reference"}

pytestmark = pytest.mark.skipif(not STUDENT.is_file(), reason=f"RT-IGEV parity fixture {STUDENT} not present")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltoy")
    pairs = motorcycle_crops((64, 96), scales=(0.25,), crops_per_scale=2, seed=1)
    write_data(root / "data", pairs)
    write_data(root / "data_nogt", pairs, with_ground_truth=False)
    for pair in pairs:
        # labels = ground truth + 1 px, with the left half trusted only
        valid = np.isfinite(pair.disp)
        valid[:, : pair.disp.shape[1] // 2] = False
        write_label(root / "labels", pair.name, pair.disp + 1.0, valid)
    return root, pairs


def _eval(*argv: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([*CLI, "eval", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _expected(pairs, reference: str, predict) -> dict:
    from stereo_distill.metrics import DisparityMetrics

    acc = DisparityMetrics(reference=reference)
    for pair in pairs:
        pred = predict(pair)
        if reference == "ground_truth":
            # as stored in DATA (uint16, 1/100 px): the evaluation reads that file
            stored = np.round(np.nan_to_num(pair.disp, nan=0.0) * 100) / 100
            acc.update(pred, stored, np.isfinite(pair.disp) & (stored > 0))
        else:
            valid = np.isfinite(pair.disp)
            valid[:, : pair.disp.shape[1] // 2] = False
            acc.update(pred, pair.disp + 1.0, valid)
    return acc.result()


def _torch_predict(pair):
    import torch

    from stereo_depth_ros.models import load_model

    model = load_model("rt_igev", checkpoint=str(STUDENT))
    t = lambda a: torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    return model.predict(t(pair.left), t(pair.right), iters=2)[0, 0].numpy()


def test_checkpoint_against_ground_truth_then_labels(toy, tmp_path):
    root, pairs = toy
    out = tmp_path / "metrics.json"
    _eval("--model", str(STUDENT), "--data", str(root / "data"), "--iters", "2", "--out", str(out))
    got = json.loads(out.read_text())
    assert KEYS <= set(got) and got["reference"] == "ground_truth" and got["pairs"] == 2
    want = _expected(pairs, "ground_truth", _torch_predict)
    for key in ("epe", "d1", "bad1", "bad3", "valid_fraction"):
        assert got[key] == pytest.approx(want[key], abs=1e-4), key

    proc = _eval("--model", str(STUDENT), "--data", str(root / "data_nogt"), "--labels", str(root / "labels"),
                 "--iters", "2")
    got = json.loads(proc.stdout)
    assert got["reference"] == "labels"
    want = _expected(pairs, "labels", _torch_predict)
    assert got["epe"] == pytest.approx(want["epe"], abs=1e-4)
    assert got["valid_fraction"] == pytest.approx(want["valid_fraction"])


def test_onnx_file_evaluates_like_its_checkpoint(toy, tmp_path):
    root, _ = toy
    onnx_file = tmp_path / "s.onnx"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    export = subprocess.run([*CLI, "export", "--model", str(STUDENT), "--out", str(onnx_file), "--iters", "2",
                             "--height", "64", "--width", "96", "--no-verify"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert export.returncode == 0, export.stderr[-2000:]
    a = json.loads(_eval("--model", str(onnx_file), "--data", str(root / "data"), "--device", "cpu").stdout)
    b = json.loads(_eval("--model", str(STUDENT), "--data", str(root / "data"), "--iters", "2").stdout)
    assert a["model"].startswith("onnx:") and a["pairs"] == b["pairs"] == 2
    assert a["epe"] == pytest.approx(b["epe"], abs=1e-3)


def test_compare_writes_a_side_by_side_picture(toy, tmp_path):
    import cv2

    root, _ = toy
    out = tmp_path / "cmp.json"
    _eval("--model", str(STUDENT), "--data", str(root / "data"), "--iters", "2", "--max-pairs", "1",
          "--compare", str(STUDENT), str(STUDENT), "--teacher-iters", "2", "--out", str(out))
    got = json.loads(out.read_text())
    assert set(got["compare"]) == {"teacher", "student_before"}
    assert got["compare"]["student_before"]["epe"] == pytest.approx(got["epe"])  # same weights, same numbers
    picture = cv2.imread(got["report"])
    # header + one row; left, reference, three disparities, three error maps, each 96 px wide
    assert picture.shape[1] == 8 * 96 and picture.shape[0] == 24 + 64


def test_no_reference_is_a_clear_error(toy, capsys):
    from stereo_distill.cli import main

    root, _ = toy
    assert main(["eval", "--model", str(STUDENT), "--data", str(root / "data_nogt")]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["eval", "--model", str(root / "missing.pth"), "--data", str(root / "data")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(STUDENT), "--data", str(root / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
