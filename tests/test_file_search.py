"""Relative model and params paths resolve in the documented order (stereo_depth_ros/file_search.py), and the
node's parameter check uses it: working directory, each ament prefix's share folder, the checkout, their weights/.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stereo_depth_ros.config import ConfigError, NodeConfig
from stereo_depth_ros.file_search import FileSearchError, find_file, search_locations

REPO = Path(__file__).resolve().parents[1]


def _prefix(root: Path, files: dict[str, bytes] | None = None) -> Path:
    """An ament prefix with stereo_depth_ros in its index and `files` under share/stereo_depth_ros/."""
    marker = root / "share" / "ament_index" / "resource_index" / "packages" / "stereo_depth_ros"
    marker.parent.mkdir(parents=True)
    marker.touch()
    for name, data in (files or {}).items():
        path = root / "share" / "stereo_depth_ros" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the checkout, and no ament prefix yet."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    return cwd


def test_order_is_working_directory_then_shares_then_checkout_then_their_weights(elsewhere, tmp_path, monkeypatch):
    overlay = _prefix(tmp_path / "overlay")
    underlay = _prefix(tmp_path / "underlay")
    (tmp_path / "no_package").mkdir()  # a prefix without the package is not searched
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{overlay}:{tmp_path / 'no_package'}:{underlay}")
    share = "share/stereo_depth_ros"
    assert search_locations("student.onnx") == [
        elsewhere / "student.onnx", overlay / share / "student.onnx", underlay / share / "student.onnx",
        REPO / "student.onnx", overlay / share / "weights/student.onnx", underlay / share / "weights/student.onnx",
        REPO / "weights/student.onnx"]
    # weights/ is not looked for twice, and params files are not looked for in weights/.
    assert search_locations("weights/x.pth")[-1] == REPO / "weights/x.pth"
    assert search_locations("my.yaml", "params")[-1] == REPO / "my.yaml"
    assert search_locations("/abs/x.pth") == [Path("/abs/x.pth")]


def test_first_existing_file_wins(elsewhere, tmp_path, monkeypatch):
    prefix = _prefix(tmp_path / "install", {"weights/student.onnx": b"share", "config/mine.yaml": b"share"})
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert find_file("student.onnx") == prefix / "share/stereo_depth_ros/weights/student.onnx"
    assert find_file("config/mine.yaml", "params") == prefix / "share/stereo_depth_ros/config/mine.yaml"
    (elsewhere / "student.onnx").write_bytes(b"here")
    assert find_file("student.onnx") == elsewhere / "student.onnx"
    # The checkout's own files are found from anywhere (an editable install, as `make venv` makes).
    assert find_file("config/stereo.yaml", "params") == REPO / "config/stereo.yaml"


def test_not_found_names_every_place_looked(elsewhere, tmp_path, monkeypatch):
    prefix = _prefix(tmp_path / "install")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    with pytest.raises(FileSearchError) as info:
        find_file("weights/none.pth")
    message = str(info.value)
    assert message.startswith("'weights/none.pth' not found; looked in: ")
    for place in info.value.looked_in:
        assert str(place) in message
    assert len(info.value.looked_in) == 3
    # A folder is not a model file.
    (elsewhere / "weights" / "none.pth").mkdir(parents=True)
    with pytest.raises(FileSearchError):
        find_file("weights/none.pth")


def test_node_config_resolves_model_path_from_another_directory(elsewhere, tmp_path, monkeypatch):
    prefix = _prefix(tmp_path / "install", {"weights/student.onnx": b"onnx"})
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    config = NodeConfig.from_dict({"backend": "onnxruntime", "model_path": "student.onnx"}).validate()
    assert config.model_path == str(prefix / "share/stereo_depth_ros/weights/student.onnx")
    with pytest.raises(ConfigError, match=r"parameter model_path: file 'weights/sceneflow_missing.pth' not found; "
                                          r"looked in: .*cwd/weights/sceneflow_missing.pth, .*install/share"):
        NodeConfig.from_dict({"model_path": "weights/sceneflow_missing.pth"}).validate()


def test_ros2_run_params_files_resolve_like_the_launch_file_and_a_missing_one_is_one_line(elsewhere, tmp_path,
                                                                                          monkeypatch):
    # rcl itself reads --params-file relative to the working directory and ends in a traceback at rclpy.init.
    from stereo_depth_ros.node_parameters import EXIT_BAD_PARAMETERS, StartupError, resolve_params_files

    prefix = _prefix(tmp_path / "install", {"config/stereo.yaml": b"stereo_depth_node: {}\n"})
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    argv = ["stereo_depth_node", "--params-file", "x.yaml", "--ros-args", "-p", "iters:=4",
            "--params-file", "config/stereo.yaml"]
    resolved = resolve_params_files(argv)
    assert resolved[-1] == str(prefix / "share/stereo_depth_ros/config/stereo.yaml")
    assert resolved[:-1] == argv[:-1]  # only what follows --ros-args is rcl's
    with pytest.raises(StartupError, match=r"^--params-file: 'nope.yaml' not found; looked in: .*cwd/nope.yaml") \
            as raised:
        resolve_params_files(["stereo_depth_node", "--ros-args", "--params-file", "nope.yaml"])
    assert raised.value.code == EXIT_BAD_PARAMETERS
