"""The README's venv route: after `source .venv/bin/activate` and nothing else, `ros2 launch stereo_depth_ros
stereo.launch.py` and `ros2 run stereo_depth_ros stereo_depth_node` work from any working directory, relative
paths resolve, and a launch whose node cannot start ends with the node's message and a non-zero status.

Runs the venv these tests run in, as `make venv` built it (tools/ament_venv.py made it an ament prefix), from a
temporary working directory outside the checkout, with AMENT_PREFIX_PATH, PYTHONPATH and the venv's bin/ taken
out of the environment first. Needs the ROS tooling wheels (skipped with the reason otherwise).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ros_helpers import (VENV, StampCounter, StereoRigClient, float_image, plain_env, small_rig,
                         venv_activation)
from stereo_devkit.client import StereoClient
from stereo_devkit.node_process import NodeProcess

INPUTS = {"left_image": "/cam/left/image_rect", "right_image": "/cam/right/image_rect",
          "left_info": "/cam/left/camera_info", "right_info": "/cam/right/camera_info"}
REMAPS = " ".join(f"{arg}:={INPUTS[key]}" for arg, key in (
    ("left_image", "left_image"), ("right_image", "right_image"),
    ("left_camera_info", "left_info"), ("right_camera_info", "right_info")))


@pytest.fixture(scope="module")
def activated():
    """The shell prefix that activates the venv (skipped without the ROS tooling or outside a venv)."""
    return venv_activation()


def _run(activated: str, command: str, cwd: Path, env: dict[str, str], timeout: float = 120.0):
    return subprocess.run(["bash", "-c", activated + command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_ros2_launch_after_activate_from_another_directory(activated, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = plain_env(tmp_path)
    command = f"exec ros2 launch stereo_depth_ros stereo.launch.py backend:=opencv_sgbm namespace:=stereo {REMAPS}"
    with NodeProcess(["bash", "-c", activated + command], env, tmp_path / "launch.log", cwd=elsewhere) as launch, \
            StereoClient(env, namespace="stereo", inputs=INPUTS) as client:
        assert client.wait_for_node(60.0), f"launched node not discovered; launch log:\n{launch.log()}"
        rig_client = StereoRigClient(client, small_rig(320), StampCounter())
        stamp = rig_client.publish_valid(info_lead=0.3)
        depth = float_image(rig_client.expect_output(stamp, "depth"))
        assert depth.shape == (rig_client.rig.height, rig_client.rig.width) and np.isfinite(depth).mean() > 0.2
        code = launch.stop(timeout=30.0)
    log = launch.log()
    assert code == 0, log
    assert "ready: backend opencv_sgbm" in log and "Traceback" not in log, log


def test_launch_whose_node_cannot_start_fails_with_its_message_and_every_place_looked(activated, tmp_path):
    env = plain_env(tmp_path)
    result = _run(activated, "ros2 launch stereo_depth_ros stereo.launch.py model_path:=weights/no_such_student.pth",
                  tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # The launch's own last word repeats the node's reason, which names every place looked, in order.
    last = [line for line in output.splitlines() if "[launch]" in line][-1]
    assert re.search(r"stereo_depth_node exited with status 2: .*parameter model_path: file "
                     r"'weights/no_such_student.pth' not found; looked in: ", last), output
    places = last.split("looked in: ", 1)[1].split(";")[0].split(", ")
    assert places[0] == str(tmp_path / "weights" / "no_such_student.pth")
    assert str(VENV / "share" / "stereo_depth_ros" / "weights" / "no_such_student.pth") in places
    assert "Traceback" not in output


def test_launch_with_a_params_file_that_is_not_a_file_stops_with_the_places_looked(activated, tmp_path):
    env = plain_env(tmp_path)
    result = _run(activated, "ros2 launch stereo_depth_ros stereo.launch.py params_file:=no_such_params.yaml",
                  tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(r"params_file: 'no_such_params.yaml' not found; looked in: " + re.escape(str(tmp_path)),
                     output), output
    assert "stereo_depth_node" not in output and "Traceback" not in output, output  # no node was started


def test_launch_with_rviz_where_rviz_is_missing_stops_before_starting_anything(activated, tmp_path):
    # Raised once the node had started, launch left the node running as an orphan.
    env = plain_env(tmp_path)
    if _run(activated, "ros2 pkg prefix rviz2", tmp_path, env).returncode == 0:
        pytest.skip("rviz2 is installed here; the case under test is a venv without it")
    result = _run(activated, "ros2 launch stereo_depth_ros stereo.launch.py rviz:=true backend:=opencv_sgbm",
                  tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "rviz:=true but package 'rviz2' is not installed here" in output, output
    assert "process started" not in output and "Traceback" not in output, output


def test_ros2_run_with_a_params_file_found_nowhere_is_one_line(activated, tmp_path):
    env = plain_env(tmp_path)
    result = _run(activated, "ros2 run stereo_depth_ros stereo_depth_node --ros-args --params-file nope.yaml",
                  tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"--params-file: 'nope.yaml' not found; looked in: {tmp_path / 'nope.yaml'}" in output, output
    assert "Traceback" not in output, output


def test_ros2_run_finds_the_node_and_the_model_in_an_installed_share_folder(activated, tmp_path):
    """A model installed into another prefix's share/stereo_depth_ros/weights/ is found by its relative name."""
    pytest.importorskip("torch")
    from stereo_depth_ros.models import load_model, save_checkpoint

    prefix = tmp_path / "robot_install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "stereo_depth_ros").touch()
    weights = prefix / "share" / "stereo_depth_ros" / "weights" / "seeded_student.pth"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, load_model("rt_igev"))  # the seeded init: what matters here is where it is found
    env = plain_env(tmp_path)
    command = (f'export AMENT_PREFIX_PATH="$AMENT_PREFIX_PATH:{prefix}" && exec ros2 run stereo_depth_ros '
               "stereo_depth_node --ros-args -p model_path:=seeded_student.pth -p device:=cpu -p precision:=bf16")
    with NodeProcess(["bash", "-c", activated + command], env, tmp_path / "run.log", cwd=tmp_path) as node:
        assert node.wait_for_log("ready: backend torch", timeout=90.0), node.log()
        code = node.stop(timeout=30.0)
    log = node.log()
    assert f"(rt_igev, {weights})" in log, log
    assert code == 0 and "Traceback" not in log, log
    # bf16 without CUDA: the backend's Python warning is a node log line, not a source line on stderr.
    assert re.search(r"\[WARN\] \[[0-9.]+\] \[stereo_depth_node\]: UserWarning: precision 'bf16' needs CUDA", log), log
    assert "warnings.warn" not in log, log
