"""`stereo-distill eval` on real pairs (Motorcycle crops with ground truth and labels), for .pth and .onnx models.

Uses a seeded RT-IGEV checkpoint in the official format (conftest's `student_weights`), 2 GRU iterations, small
crops, and the CLI in this process.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from stereo_distill.toy import motorcycle_crops, write_data, write_label

KEYS = {"epe", "d1", "bad1", "bad2", "bad3", "pairs", "valid_fraction", "coverage", "reference"}


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


@pytest.fixture
def run_eval(cli):
    def run(*argv, ok: bool = True):
        result = cli("eval", *argv)
        if ok:
            assert result.status == 0, result.err[-3000:]
        return result
    return run


def _expected(pairs, reference: str, predict) -> dict:
    from stereo_devkit.metrics import DisparityMetrics

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


def _torch_predict(checkpoint):
    from stereo_depth_ros.models import load_model
    from stereo_depth_ros.models.images import rgb_batch

    model = load_model("rt_igev", checkpoint=str(checkpoint))
    return lambda pair: model.predict(rgb_batch([pair.left]), rgb_batch([pair.right]), iters=2)[0, 0].numpy()


def test_checkpoint_against_ground_truth_then_labels(toy, tmp_path, run_eval, student_weights):
    root, pairs = toy
    out = tmp_path / "metrics.json"
    run_eval("--model", student_weights, "--data", root / "data", "--iters", "2", "--out", out)
    got = json.loads(out.read_text())
    assert KEYS <= set(got) and got["reference"] == "ground_truth" and got["pairs"] == 2
    # The network's raw output scored directly: values <= 0 count as no answer, as the estimator's NaN do.
    want = _expected(pairs, "ground_truth", _torch_predict(student_weights))
    for key in ("epe", "d1", "bad1", "bad3", "valid_fraction", "coverage"):
        assert got[key] == pytest.approx(want[key], abs=1e-4), key

    result = run_eval("--model", student_weights, "--data", root / "data_nogt", "--labels", root / "labels",
                      "--iters", "2")
    got = json.loads(result.out)
    assert got["reference"] == "labels"
    want = _expected(pairs, "labels", _torch_predict(student_weights))
    assert got["epe"] == pytest.approx(want["epe"], abs=1e-4)
    assert got["valid_fraction"] == pytest.approx(want["valid_fraction"])


def test_onnx_file_evaluates_like_its_checkpoint(toy, tmp_path, cli, run_eval, student_weights):
    root, _ = toy
    onnx_file = tmp_path / "s.onnx"
    export = cli("export", "--model", student_weights, "--out", onnx_file, "--iters", "2", "--height", "64",
                 "--width", "96", "--no-verify")
    assert export.status == 0, export.err[-2000:]
    a = json.loads(run_eval("--model", onnx_file, "--data", root / "data", "--device", "cpu").out)
    b = json.loads(run_eval("--model", student_weights, "--data", root / "data", "--iters", "2").out)
    assert a["model"].startswith("onnx:") and b["model"].startswith("rt_igev:") and a["pairs"] == b["pairs"] == 2
    # The same estimator interface: same answered pixels, same metrics (to the export's float32 rounding).
    for key in ("epe", "d1", "bad1", "bad2", "bad3", "coverage"):
        assert a[key] == pytest.approx(b[key], abs=1e-3), key


def test_fixed_size_onnx_on_other_sized_data_is_one_line_with_eval_advice(toy, tmp_path, cli, run_eval,
                                                                           student_weights):
    root, _ = toy  # 64x96 pairs
    onnx_file = tmp_path / "s32x64.onnx"
    assert cli("export", "--model", student_weights, "--out", onnx_file, "--iters", "1", "--height", "32",
               "--width", "64", "--no-verify").status == 0
    result = run_eval("--model", onnx_file, "--data", root / "data", "--device", "cpu", ok=False)
    assert result.status == 2 and "Traceback" not in result.err
    assert len([line for line in result.err.splitlines() if "error:" in line]) == 1, result.err
    assert "exported for 64x32" in result.err and "the images are 96x64" in result.err
    assert "--dynamic" in result.err and "--height 64 --width 96" in result.err
    assert "input_width" not in result.err  # the node's advice is not eval's


def test_sgbm_baseline_evaluates_too(toy, run_eval):
    root, _ = toy
    got = json.loads(run_eval("--model", "sgbm", "--data", root / "data", "--max-disp", "32").out)
    assert got["model"] == "opencv_sgbm" and got["pairs"] == 2 and 0 < got["coverage"] < 1


def test_compare_writes_a_side_by_side_picture(toy, tmp_path, run_eval, student_weights):
    import cv2

    root, _ = toy
    out = tmp_path / "cmp.json"
    run_eval("--model", student_weights, "--data", root / "data", "--iters", "2", "--max-pairs", "1",
             "--compare", student_weights, student_weights, "--teacher-iters", "2", "--out", out)
    got = json.loads(out.read_text())
    assert set(got["compare"]) == {"teacher", "student_before"}
    assert got["compare"]["student_before"]["epe"] == pytest.approx(got["epe"])  # same weights, same numbers
    picture = cv2.imread(got["report"])
    # header + one row; left, reference, three disparities, three error maps, each 96 px wide
    assert picture.shape[1] == 8 * 96 and picture.shape[0] == 24 + 64


def test_no_reference_is_a_clear_error(toy, run_eval, student_weights):
    root, _ = toy
    result = run_eval("--model", student_weights, "--data", root / "data_nogt", ok=False)
    assert result.status == 2 and "pass --labels" in result.err
    result = run_eval("--model", root / "missing.pth", "--data", root / "data", ok=False)
    assert result.status == 2 and "does not exist" in result.err
    result = run_eval("--model", student_weights, "--data", root / "nowhere", ok=False)
    assert result.status == 2 and "does not exist" in result.err


def test_forced_ground_truth_without_any_does_not_ask_for_labels_already_given(toy, run_eval, student_weights):
    root, _ = toy
    result = run_eval("--model", student_weights, "--data", root / "data_nogt", "--labels", root / "labels",
                      "--reference", "ground_truth", ok=False)
    assert result.status == 2 and len(result.err.strip().splitlines()) == 1
    assert "pass --labels" not in result.err and "--reference labels" in result.err


def test_corrupt_image_is_named_and_the_other_pairs_are_scored(toy, tmp_path, run_eval, student_weights):
    import shutil

    root, pairs = toy
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    broken = data / pairs[1].name / "right.png"
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated PNG
    result = run_eval("--model", student_weights, "--data", data, "--iters", "2", ok=False)
    assert result.status == 1 and "Traceback" not in result.err
    assert str(broken) in result.err
    got = json.loads(result.out)
    assert got["pairs"] == 1
