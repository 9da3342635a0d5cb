"""The demo on `make loop`'s export folder (an fp16 and an fp32 fixed-size export): it runs the fp32 file at the
export's size instead of the fp16 file at the streamed size (which the export refuses, pair after pair).

The exports here are tiny graphs with the export's names and metadata (disparity = channel mean of the left image),
built with onnx.helper: which file the demo picks and whether the node accepts the pairs does not depend on the
network inside, and a real export would cost the suite a minute.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ros_helpers import REPO
from test_backends import tiny_stereo_onnx


@pytest.fixture
def loop_exports(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    folder = tmp_path / "export"
    folder.mkdir()
    for precision in ("fp16", "fp32"):  # sorted by name, fp16 comes first
        tiny_stereo_onnx(folder / f"rt_igev_distilled_{precision}.onnx", height=96, width=160, padded_inside=True,
                         meta={"stereo_depth_ros.precision": precision, "stereo_depth_ros.input_size": "96x160"})
    return folder


def test_choice_prefers_fp32_and_takes_the_export_size(loop_exports):
    from stereo_devkit.demo import choose_backend

    for requested in ("auto", "onnxruntime"):
        backend, params, why = choose_backend(requested, loop_exports)
        assert backend == "onnxruntime"
        assert params == {"backend": "onnxruntime", "model_path": str(loop_exports / "rt_igev_distilled_fp32.onnx"),
                          "input_width": 160, "input_height": 96}
        assert "fp32" in why and "160x96" in why and "rt_igev_distilled_fp16.onnx" in why


def test_demo_runs_the_loop_exports(loop_exports, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "stereo_devkit.demo", "--weights", str(loop_exports),
                             "--width", "200", "--frames", "2", "--rate", "5", "--timeout", "30", "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rt_igev_distilled_fp32.onnx (onnxruntime, fp32, working size 160x96" in result.stdout
    assert "node stopped with exit status 0" in result.stdout and (out / "depth.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # /diagnostics values are strings on the wire; metrics.json holds numbers.
    assert isinstance(metrics["dropped_pairs"], int) and isinstance(metrics["node_inference_ms"], float), metrics
    assert "Traceback" not in result.stdout + result.stderr
