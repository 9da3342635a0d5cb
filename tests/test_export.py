"""`stereo-distill export`: ONNX parity with PyTorch, metadata, and the node's onnxruntime backend running it.

Exports use the RT-IGEV parity fixture (official checkpoint format, seeded weights) at small sizes and 2 GRU
iterations to keep the run short on a shared CPU; skipped when ../shared/parity is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from file_modes import assert_new_file_modes

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "parity" / "rt_igev" / "weights.pth"
CLI = [sys.executable, "-c", "import sys; from stereo_distill.cli import main; sys.exit(main())"]
ITERS = 2

pytestmark = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"RT-IGEV parity fixture {FIXTURE} not present")


def _export(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([*CLI, "export", "--model", str(FIXTURE), "--out", str(out), "--iters", str(ITERS), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout[proc.stdout.index("{"):])


@pytest.fixture(scope="module")
def fixed_fp32(tmp_path_factory):
    # 72x136 is not a multiple of 32: the in-graph padding is exercised.
    out = tmp_path_factory.mktemp("export") / "student_fp32.onnx"
    proc, report = _export(out, "--height", "72", "--width", "136")
    return out, proc, report


def test_fp32_export_matches_pytorch_and_carries_the_node_metadata(fixed_fp32):
    out, proc, report = fixed_fp32
    assert out.is_file() and not list(out.parent.glob("*.partial*"))
    assert_new_file_modes(out)  # a deployed model must be readable by the node's user (0644 under umask 022)
    assert report["max_abs_px"] <= 1e-3 and {c["input"] for c in report["verification"]} == {"random", "motorcycle"}
    assert "verify motorcycle" in proc.stderr  # the verification is printed
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["stereo_depth_ros.padded_inside"] == "1"
    assert meta["stereo_depth_ros.iters"] == str(ITERS)
    assert meta["stereo_depth_ros.model"] == "rt_igev"
    assert [i.name for i in graph.graph.input] == ["left", "right"]
    assert [o.name for o in graph.graph.output] == ["disparity", "confidence"]
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 72, 136]


def _motorcycle(height: int, width: int):
    from stereo_devkit.motorcycle import motorcycle_pair

    return motorcycle_pair(height, width)


def test_node_onnxruntime_backend_runs_the_export_like_the_torch_backend(fixed_fp32):
    from stereo_depth_ros.inference import create_estimator

    out, _, _ = fixed_fp32
    left, right = _motorcycle(72, 136)
    onnx_est = create_estimator("onnxruntime", model_path=str(out), providers=["CPUExecutionProvider"])
    torch_est = create_estimator("torch", model="rt_igev", model_path=str(FIXTURE), device="cpu", iters=ITERS)
    a, b = onnx_est.estimate(left, right), torch_est.estimate(left, right)
    assert a.disparity.shape == (72, 136)
    both = np.isfinite(a.disparity) & np.isfinite(b.disparity)
    assert both.mean() > 0.99
    assert np.abs(a.disparity[both] - b.disparity[both]).max() <= 1e-3
    if a.confidence is not None and b.confidence is not None:
        assert np.abs(a.confidence - b.confidence).max() <= 1e-3


def test_dynamic_export_at_width_160_runs_at_every_width_from_32_like_pytorch(tmp_path):
    """Narrower than max_disp (192): the traced cost volume must not freeze its shift count at the trace width."""
    from stereo_depth_ros.inference import create_estimator
    from stereo_depth_ros.inference.onnx_backend import OnnxInputSizeError

    out = tmp_path / "dynamic.onnx"
    proc, report = _export(out, "--dynamic", "--height", "48", "--width", "160", "--tolerance", "1e-4")
    sizes = {(c["height"], c["width"]) for c in report["verification"]}
    assert sizes == {(48, 160), (61, 179)} and report["max_abs_px"] <= 1e-4, report
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (meta["stereo_depth_ros.min_height"], meta["stereo_depth_ros.min_width"]) == ("32", "32")

    onnx_est = create_estimator("onnxruntime", model_path=str(out), providers=["CPUExecutionProvider"])
    torch_est = create_estimator("torch", model="rt_igev", model_path=str(FIXTURE), device="cpu", iters=ITERS,
                                 with_confidence=False)
    for h, w in ((32, 32), (40, 100), (45, 150)):
        left, right = _motorcycle(h, w)
        a, b = onnx_est.estimate(left, right).disparity, torch_est.estimate(left, right).disparity
        assert a.shape == (h, w)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-4, (h, w, np.nanmax(np.abs(a - b)))
    # Below the recorded limit the backend refuses before onnxruntime runs, with an exception of its own.
    with pytest.raises(OnnxInputSizeError, match="needs images of at least 32x32; the images are 64x31") as info:
        onnx_est.estimate(*_motorcycle(31, 64))
    assert info.value.min_size == (32, 32) and info.value.fixed_size is None


def test_fp16_export_runs_in_onnxruntime_close_to_fp32(tmp_path):
    out = tmp_path / "student_fp16.onnx"
    _, report = _export(out, "--height", "64", "--width", "96", "--precision", "fp16")
    graph = onnx.load(str(out))
    assert {p.key: p.value for p in graph.metadata_props}["stereo_depth_ros.precision"] == "fp16"
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 interface
    assert report["max_abs_px"] <= report["tolerance_px"] == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.txt"], "must end in .onnx"),
    (["--out", "x.onnx", "--height", "64"], "both --height and --width"),
    (["--out", "x.onnx", "--opset", "13"], "opset"),
    (["--out", "x.onnx", "--model", "missing.pth"], "does not exist"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    from stereo_distill.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", str(FIXTURE), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written
