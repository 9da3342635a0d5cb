"""Node parameters: defaults = config/stereo.yaml, params-file reading, one clear error per bad value."""
from pathlib import Path

import pytest

from stereo_depth_ros.config import (
    ConfigError, NodeConfig, estimator_options, load_params_file)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_file_matches_the_defaults():
    values = load_params_file(REPO / "config" / "stereo.yaml", "stereo_depth_node")
    assert NodeConfig.from_dict(values) == NodeConfig()
    assert set(values) == set(NodeConfig.parameter_descriptions())


def test_stereo_image_proc_names_and_defaults():
    cfg = NodeConfig()
    assert (cfg.approximate_sync, cfg.approximate_sync_tolerance_seconds, cfg.queue_size,
            cfg.use_system_default_qos) == (False, 0.0, 5, False)
    assert all(NodeConfig.parameter_descriptions().values())


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_wildcard_section_and_node_section_merge(tmp_path):
    path = write(tmp_path, """
/**:
  ros__parameters:
    queue_size: 9
    backend: onnxruntime
/stereo_depth_node:
  ros__parameters:
    backend: opencv_sgbm
    sgbm: {unused: 1}
other_node:
  ros__parameters: {queue_size: 1}
""")
    values = load_params_file(path, "stereo_depth_node")
    assert values == {"queue_size": 9, "backend": "opencv_sgbm", "sgbm.unused": 1}
    assert load_params_file(path, "/ns/anything") == {"queue_size": 9, "backend": "onnxruntime"}


@pytest.mark.parametrize("text, match", [
    ("a: [1, 2", "not valid YAML"),
    ("- 1\n- 2\n", "must map node names"),
    ("other: {ros__parameters: {}}", "no section for node 'stereo_depth_node'"),
    ("stereo_depth_node: {queue_size: 3}", "no ros__parameters"),
])
def test_bad_params_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_params_file(write(tmp_path, text), "stereo_depth_node")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params_file(tmp_path / "nope.yaml", "stereo_depth_node")


@pytest.mark.parametrize("values, match", [
    ({"backend": "tensorflow"}, "parameter backend: unknown value 'tensorflow'"),
    ({"model": "raft"}, "parameter model"),
    ({"precision": "int8"}, "parameter precision"),
    ({"device": "gpu"}, "parameter device"),
    ({"iters": -1}, "parameter iters"),
    ({"max_disparity": 0}, "parameter max_disparity"),
    ({"max_disparity": 190}, "parameter max_disparity: the torch networks need a multiple of 32"),
    ({"max_disparity": 200}, "parameter max_disparity: the torch networks need a multiple of 32"),
    ({"input_width": 320}, "input_width/input_height"),
    ({"input_width": 16, "input_height": 16}, "parameter input_width"),
    ({"approximate_sync_tolerance_seconds": -0.1}, "approximate_sync_tolerance_seconds"),
    ({"queue_size": 0}, "parameter queue_size"),
    ({"confidence_threshold": 1.5}, "parameter confidence_threshold"),
    ({"onnx_providers": []}, "parameter onnx_providers"),
    ({"trt_workspace_mb": 0}, "parameter trt_workspace_mb: must be in 1.."),
    ({"trt_engine_cache_dir": __file__}, "parameter trt_engine_cache_dir: .* is a file"),
    ({"sgbm_block_size": 4}, "parameter sgbm_block_size"),
    ({"backend": "onnxruntime", "model_path": "weights/x.pth"}, "needs a .onnx file"),
    ({"model_path": ""}, "parameter model_path: required"),
    ({"backend": "opencv_sgbm", "latency_budget_ms": 50}, "parameter latency_budget_ms: only the torch backend"),
    ({"latency_budget_ms": -1.0}, "parameter latency_budget_ms: must be a finite number >= 0"),
    ({"latency_budget_ms": float("inf")}, "parameter latency_budget_ms"),
])
def test_invalid_values_name_the_parameter(values, match):
    cfg = NodeConfig.from_dict(values)
    with pytest.raises(ConfigError, match=match):
        cfg.validate(check_files=False)


def test_missing_model_file_is_reported_with_the_way_out(tmp_path):
    cfg = NodeConfig.from_dict({"model_path": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match="model_path.*not found.*opencv_sgbm"):
        cfg.validate()
    weights = tmp_path / "student.pth"
    weights.write_bytes(b"x")
    NodeConfig.from_dict({"model_path": str(weights)}).validate()
    NodeConfig.from_dict({"backend": "opencv_sgbm", "model_path": ""}).validate()


@pytest.mark.parametrize("values, match", [
    ({"queue_size": "5"}, "parameter queue_size: expected int, got str"),
    ({"approximate_sync": 1}, "parameter approximate_sync: expected bool"),
    ({"iters": 2.5}, "parameter iters"),
    ({"max_disparity": True}, "parameter max_disparity"),
    ({"bogus": 1, "backend": "torch"}, "unknown parameter.*bogus"),
])
def test_wrong_types_and_unknown_names(values, match):
    with pytest.raises(ConfigError, match=match):
        NodeConfig.from_dict(values)


def test_rclpy_own_parameters_are_allowed_in_params_files():
    cfg = NodeConfig.from_dict({"use_sim_time": True, "qos_overrides./parameter_events.publisher.depth": 1000,
                                "queue_size": 2})
    assert cfg.queue_size == 2


def test_int_accepted_for_float_and_estimator_options():
    cfg = NodeConfig.from_dict({"approximate_sync_tolerance_seconds": 1, "iters": 4})
    assert cfg.approximate_sync_tolerance_seconds == 1.0
    assert estimator_options(cfg) == {"model": "rt_igev", "model_path": "weights/sceneflow.pth", "device": "auto",
                                      "precision": "fp32", "iters": 4, "max_disparity": 192}
    assert estimator_options(NodeConfig.from_dict({"iters": 0}))["iters"] is None
    assert estimator_options(NodeConfig(backend="opencv_sgbm")) == {"max_disparity": 192, "block_size": 5}
    assert estimator_options(NodeConfig(backend="onnxruntime"))["providers"][-1] == "CPUExecutionProvider"


def test_latency_budget_reaches_the_torch_backend_only_when_set():
    assert "latency_budget_ms" not in estimator_options(NodeConfig())  # today's TorchEstimator keeps loading
    cfg = NodeConfig.from_dict({"latency_budget_ms": 40})  # an int is accepted
    assert cfg.latency_budget_ms == 40.0 and estimator_options(cfg)["latency_budget_ms"] == 40.0
    NodeConfig.from_dict({"backend": "opencv_sgbm", "latency_budget_ms": 0}).validate(check_files=False)
