"""`stereo-distill export`: ONNX parity with PyTorch, metadata, and the node's onnxruntime backend running it.

Exports use a seeded RT-IGEV checkpoint in the official format (conftest's `student_weights`) at small sizes and
2 GRU iterations to keep the run short on a shared CPU, through the CLI in this process.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from file_modes import assert_new_file_modes

from stereo_distill.cli import main

ITERS = 2


@pytest.fixture(scope="module")
def export(student_weights):
    """export(out, *argv) -> (stderr, the JSON report) of a successful `stereo-distill export`."""
    def run(out: Path, *extra: str) -> tuple[str, dict]:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(["export", "--model", str(student_weights), "--out", str(out), "--iters", str(ITERS),
                           *extra])
        assert status == 0, stderr.getvalue()[-3000:]
        text = stdout.getvalue()
        return stderr.getvalue(), json.loads(text[text.index("{"):])

    return run


@pytest.fixture(scope="module")
def fixed_fp32(tmp_path_factory, export):
    # 72x136 is not a multiple of 32: the in-graph padding is exercised.
    out = tmp_path_factory.mktemp("export") / "student_fp32.onnx"
    stderr, report = export(out, "--height", "72", "--width", "136")
    return out, stderr, report


def test_fp32_export_matches_pytorch_and_carries_the_node_metadata(fixed_fp32):
    out, stderr, report = fixed_fp32
    assert out.is_file() and not list(out.parent.glob("*.partial*"))
    assert_new_file_modes(out)  # a deployed model must be readable by the node's user (0644 under umask 022)
    assert report["max_abs_px"] <= 1e-3 and {c["input"] for c in report["verification"]} == {"random", "motorcycle"}
    assert "verify motorcycle" in stderr  # the verification is printed
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
    # TensorRT-ready: the check ran on the written graph, found nothing trtexec would stop at, and says how to build.
    trt = report["tensorrt"]
    assert trt["ok"] and not trt["blockers"] and trt["operators"]["GridSample"] > 0
    assert not {"If", "Loop", "Scan"} & set(trt["operators"])
    assert trt["trtexec"] == "trtexec --onnx=student_fp32.onnx --saveEngine=student_fp32.engine"
    assert "tensorrt check (TensorRT 10.1 operator list): no blocker" in stderr


def _motorcycle(height: int, width: int):
    from stereo_devkit.motorcycle import motorcycle_pair

    return motorcycle_pair(height, width)


def test_node_onnxruntime_backend_runs_the_export_like_the_torch_backend(fixed_fp32, student_weights):
    from stereo_depth_ros.inference import create_estimator

    out, _, _ = fixed_fp32
    left, right = _motorcycle(72, 136)
    onnx_est = create_estimator("onnxruntime", model_path=str(out), providers=["CPUExecutionProvider"])
    torch_est = create_estimator("torch", model="rt_igev", model_path=str(student_weights), device="cpu", iters=ITERS)
    a, b = onnx_est.estimate(left, right), torch_est.estimate(left, right)
    assert a.disparity.shape == (72, 136)
    assert a.iterations == b.iterations == ITERS  # the export's count, reported like the torch backend's
    both = np.isfinite(a.disparity) & np.isfinite(b.disparity)
    assert both.mean() > 0.99
    assert np.abs(a.disparity[both] - b.disparity[both]).max() <= 1e-3
    if a.confidence is not None and b.confidence is not None:
        assert np.abs(a.confidence - b.confidence).max() <= 1e-3


def test_dynamic_export_at_width_160_runs_at_every_width_from_32_like_pytorch(tmp_path, export, student_weights):
    """Narrower than max_disp (192): the traced cost volume must not freeze its shift count at the trace width."""
    from stereo_depth_ros.inference import create_estimator
    from stereo_depth_ros.inference.onnx_backend import OnnxInputSizeError

    out = tmp_path / "dynamic.onnx"
    _, report = export(out, "--dynamic", "--height", "48", "--width", "160", "--tolerance", "1e-4")
    sizes = {(c["height"], c["width"]) for c in report["verification"]}
    assert sizes == {(48, 160), (61, 179)} and report["max_abs_px"] <= 1e-4, report
    assert report["tensorrt"]["ok"] and "optimisation profile" in report["tensorrt"]["notes"][0]
    assert "--minShapes=left:1x3x32x32,right:1x3x32x32 --optShapes=left:1x3x48x160" in report["tensorrt"]["trtexec"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (meta["stereo_depth_ros.min_height"], meta["stereo_depth_ros.min_width"]) == ("32", "32")

    onnx_est = create_estimator("onnxruntime", model_path=str(out), providers=["CPUExecutionProvider"])
    torch_est = create_estimator("torch", model="rt_igev", model_path=str(student_weights), device="cpu",
                                 iters=ITERS, with_confidence=False)
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


def test_fp16_export_runs_in_onnxruntime_close_to_fp32_with_float32_islands(tmp_path, export):
    out = tmp_path / "student_fp16.onnx"
    stderr, report = export(out, "--height", "64", "--width", "96", "--precision", "fp16")
    graph = onnx.load(str(out))
    assert {p.key: p.value for p in graph.metadata_props}["stereo_depth_ros.precision"] == "fp16"
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 interface
    assert report["max_abs_px"] <= report["tolerance_px"] == 0.5
    # The float32 islands: the correlation volume's means (ReduceMean), the geometry lookup (GridSample) and the
    # softmaxes run on float32 tensors, while the convolutions run in float16.
    types = _tensor_types(graph)
    for op in ("ReduceMean", "GridSample", "Softmax"):
        found = {types.get(n.input[0]) for n in graph.graph.node if n.op_type == op}
        assert found == {onnx.TensorProto.FLOAT}, (op, found)
    assert onnx.TensorProto.FLOAT16 in {types.get(n.input[0]) for n in graph.graph.node if n.op_type == "Conv"}
    assert set(report["fp16_headroom"]) == {"correlation_term_bound", "cost_volume", "volume_logits"}
    assert "fp16 headroom" in stderr and report["tensorrt"]["ok"]
    assert report["tensorrt"]["trtexec"].endswith("--stronglyTyped")  # trtexec keeps the islands


def _tensor_types(graph) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    types.update({i.name: i.data_type for i in inferred.initializer})
    return types


def test_a_graph_tensorrt_cannot_build_is_not_written_unless_forced(tmp_path, monkeypatch, cli, student_weights):
    """With GridSample taken off the supported list the check must block; --tensorrt-check warn writes anyway."""
    from stereo_distill import tensorrt_check

    monkeypatch.delitem(tensorrt_check.SUPPORTED, "GridSample")
    out = tmp_path / "student.onnx"
    argv = ["export", "--model", student_weights, "--out", out, "--iters", "1", "--height", "32", "--width", "64",
            "--no-verify"]
    result = cli(*argv)
    assert result.status == 2 and not out.exists() and "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "TensorRT 10.1 could not build student.onnx: GridSample is not supported" in errors[0]
    assert "--tensorrt-check warn" in errors[0]
    result = cli(*argv, "--tensorrt-check", "warn")
    assert result.status == 0 and out.is_file()
    assert json.loads(result.out[result.out.index("{"):])["tensorrt"]["ok"] is False
    assert "blocker: GridSample is not supported" in result.err


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.txt"], "must end in .onnx"),
    (["--out", "x.onnx", "--height", "64"], "both --height and --width"),
    (["--out", "x.onnx", "--opset", "13"], "opset"),
    (["--out", "x.onnx", "--model", "missing.pth"], "does not exist"),
    (["--out", "x.onnx", "--height", "0", "--width", "64"], "too small"),
    (["--out", "x.onnx", "--height", "64", "--width", "-32"], "too small"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, cli, student_weights, argv, message):
    monkeypatch.chdir(tmp_path)
    result = cli("export", "--model", student_weights, *argv)
    assert result.status == 2 and "Traceback" not in result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written
