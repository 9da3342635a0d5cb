"""`stereo_distill.tensorrt_check` on small graphs built with onnx.helper: each thing that would stop trtexec is
named, a clean graph passes, and dynamic inputs get the optimisation-profile flags. (The check on real exports,
and the export refusing to write a blocked graph, are in tests/test_export.py.)"""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from stereo_distill.tensorrt_check import TENSORRT_VERSION, check_onnx


def save(path: Path, nodes, inputs, outputs, opset: int = 17, initializers=(), domains=(), meta=None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    helper.set_model_props(model, meta or {})
    onnx.save(model, str(path))
    return path


def tensor(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_a_clean_fixed_size_graph_has_no_blocker(tmp_path):
    path = save(tmp_path / "ok.onnx",
                [helper.make_node("GridSample", ["left", "grid"], ["sampled"], align_corners=1),
                 helper.make_node("ReduceMean", ["sampled"], ["disparity"], axes=[1], keepdims=1)],
                [tensor("left", [1, 3, 8, 8]), tensor("grid", [1, 8, 8, 2])], [tensor("disparity", [1, 1, 8, 8])],
                meta={"stereo_depth_ros.precision": "fp32"})
    report = check_onnx(path)
    assert report.ok and report.tensorrt == TENSORRT_VERSION and report.operators == {"GridSample": 1, "ReduceMean": 1}
    assert report.trtexec == "trtexec --onnx=ok.onnx --saveEngine=ok.engine"
    assert report.lines()[0].startswith(f"tensorrt check (TensorRT {TENSORRT_VERSION} operator list): no blocker")


def test_each_blocker_is_named(tmp_path):
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["y_then"])], "then", [], [tensor("y_then", [4])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [], [tensor("y_else", [4])])
    nodes = [
        helper.make_node("GridSample", ["volume", "grid5"], ["sampled"]),  # 5-D: opset 20 allows it, TensorRT not
        helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other),
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("MyOp", ["x"], ["z"], domain="com.example"),
        helper.make_node("Shape", ["x"], ["axes"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"]),  # axes computed at run time
        helper.make_node("Resize", ["img", "", "scales"], ["big"], mode="cubic"),
    ]
    inputs = [tensor("volume", [1, 2, 4, 8, 8]), tensor("grid5", [1, 4, 8, 8, 3]), tensor("flag", [], TensorProto.BOOL),
              tensor("x", [4]), tensor("img", [1, 1, 4, 4])]
    outputs = [tensor(n, None) for n in ("sampled", "y", "u", "z", "s", "big")]
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    report = check_onnx(save(tmp_path / "bad.onnx", nodes, inputs, outputs, opset=20, initializers=[scales],
                             domains=["com.example"]))
    text = "\n".join(report.blockers)
    assert not report.ok
    assert "GridSample on a 5-D input (TensorRT takes 4-D only)" in text
    assert "If: data-dependent control flow" in text
    assert f"Unique is not supported by TensorRT {TENSORRT_VERSION}" in text
    assert "com.example.MyOp is not an ONNX operator TensorRT parses" in text
    assert "operator domain 'com.example'" in text
    assert "ReduceSum with computed axes" in text
    assert "Resize with mode cubic" in text


@pytest.mark.parametrize("opset, message", [(16, "this project exports opset >= 17"),
                                            (21, "parser reads opsets 9 to 20")])
def test_opsets_outside_the_range_are_blockers(tmp_path, opset, message):
    path = save(tmp_path / "o.onnx", [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])],
                [tensor("y", [1, 4])], opset=opset)
    report = check_onnx(path)
    assert not report.ok and message in report.blockers[0]


def test_dynamic_sizes_get_a_profile_and_unsized_dimensions_block(tmp_path):
    meta = {"stereo_depth_ros.min_height": "32", "stereo_depth_ros.min_width": "48",
            "stereo_depth_ros.precision": "fp16"}
    path = save(tmp_path / "dyn.onnx", [helper.make_node("Add", ["left", "right"], ["disparity"])],
                [tensor("left", [1, 3, "height", "width"]), tensor("right", [1, 3, "height", "width"])],
                [tensor("disparity", [1, 3, "height", "width"])], meta=meta)
    report = check_onnx(path, opt_size=(240, 320))
    assert report.ok and any("optimisation profile" in note for note in report.notes)
    assert "--stronglyTyped" in report.trtexec  # an fp16 export keeps its own precisions
    assert "--minShapes=left:1x3x32x48,right:1x3x32x48" in report.trtexec
    assert "--optShapes=left:1x3x240x320,right:1x3x240x320" in report.trtexec

    unsized = save(tmp_path / "unsized.onnx", [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, None])],
                   [tensor("y", [1, None])])
    report = check_onnx(unsized)
    assert not report.ok and "input x has a dimension with no size and no name" in report.blockers[0]
