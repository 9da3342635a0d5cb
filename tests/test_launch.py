"""The real ROS 2 toolchain: `colcon build` of this package, then `ros2 launch stereo_depth_ros stereo.launch.py`.

Needs the launch/ros2cli/colcon wheels of ../shared/ros/wheels (or a ROS 2 installation); skipped with the reason
otherwise. The package is copied into a workspace under tmp (colcon writes build artefacts next to a package's
setup.py, and the repository must stay clean), built, sourced, and launched with a namespace and all four
inputs remapped; a test client publishes a pair and receives disparity, depth and points, then SIGINT stops it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ros_helpers import REPO, StampCounter, StereoRigClient, float_image, node_env, require_ros_tooling, \
    small_rig
from stereo_devkit.client import StereoClient
from stereo_devkit.node_process import NodeProcess

PACKAGE_CONTENT = ("setup.py", "setup.cfg", "package.xml", "resource", "stereo_depth_ros", "training", "stereo_devkit",
                   "launch", "config", "rviz")
INPUTS = {"left_image": "/cam/left/image_rect", "right_image": "/cam/right/image_rect",
          "left_info": "/cam/left/camera_info", "right_info": "/cam/right/camera_info"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A colcon workspace with this package built into install/."""
    require_ros_tooling()
    ws = tmp_path_factory.mktemp("colcon_ws")
    source = ws / "src" / "stereo_depth_ros"
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_CONTENT:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, source / name)
    env = node_env(ws)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AMENT_PREFIX_PATH"] = sys.prefix
    result = subprocess.run(["colcon", "build", "--base-paths", "src"], cwd=ws, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    # The venv is a complete ament prefix (tools/ament_venv.py): colcon finds its local_setup files.
    assert "local_setup" not in result.stdout + result.stderr, result.stdout + result.stderr
    share = ws / "install" / "stereo_depth_ros" / "share" / "stereo_depth_ros"
    for installed in ("launch/stereo.launch.py", "config/stereo.yaml", "config/fastdds_shm.xml", "rviz/stereo.rviz",
                      "package.xml", "config/cameras/realsense.yaml", "config/cameras/oakd_driver.yaml"):
        assert (share / installed).is_file(), f"colcon did not install {installed}"
    assert (ws / "install" / "stereo_depth_ros" / "lib" / "stereo_depth_ros" / "stereo_depth_node").is_file()
    return ws, env


def _children_environ(pid: int) -> list[dict[str, str]]:
    """Environments of the descendants of `pid` (Linux /proc), to see what launch gave the node."""
    import psutil

    environs = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            environs.append(child.environ())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return environs


def test_colcon_build_and_ros2_launch(workspace):
    ws, env = workspace
    launch_args = [f"{name}:={topic}" for name, topic in (
        ("left_image", INPUTS["left_image"]), ("right_image", INPUTS["right_image"]),
        ("left_camera_info", INPUTS["left_info"]), ("right_camera_info", INPUTS["right_info"]))]
    command = ("source install/setup.bash && exec ros2 launch stereo_depth_ros stereo.launch.py "
               "backend:=opencv_sgbm namespace:=stereo " + " ".join(launch_args))
    with NodeProcess(["bash", "-c", command], env, ws / "launch.log", cwd=ws) as launch, \
            StereoClient(env, namespace="stereo", inputs=INPUTS) as client:
        assert client.wait_for_node(60.0), f"launched node not discovered; launch log:\n{launch.log()}"
        # Full width: the params file searches 192 px, which would leave little of a small image to match.
        rc = StereoRigClient(client, small_rig(741), StampCounter())
        stamp = rc.publish_valid(info_lead=0.3)
        disparity = rc.expect_output(stamp, "disparity")
        depth = float_image(rc.expect_output(stamp, "depth"))
        cloud = rc.expect_output(stamp, "points2")
        assert (cloud.height, cloud.width) == depth.shape == (rc.rig.height, rc.rig.width)
        assert np.isfinite(depth).mean() > 0.2
        # The params file was applied to the namespaced node (max_disparity 192 from config/stereo.yaml) and the
        # backend launch argument overrode the file's torch.
        assert disparity.max_disparity == pytest.approx(192 + rc.rig.doffs, abs=1e-3)
        # use_fastdds_profile defaults to true: the launched processes get the package's shared-memory profile.
        profiles = {e.get("FASTDDS_DEFAULT_PROFILES_FILE") for e in _children_environ(launch.proc.pid)}
        assert any(p and p.endswith("share/stereo_depth_ros/config/fastdds_shm.xml") for p in profiles), profiles
        code = launch.stop(timeout=30.0)
    log = launch.log()
    assert code == 0, f"ros2 launch exited with {code}:\n{log}"
    assert re.search(r"stereo_depth_node-\d+\]: process has finished cleanly", log), log
    assert "Traceback" not in log, log


def test_colcon_route_finds_relative_params_and_model_in_the_checkout(workspace, tmp_path, student_weights):
    """README route (b): after `source install/setup.bash`, a relative params_file and model_path that live only
    in the checkout (colcon installs neither weights/ nor a user's own params file) resolve from any directory."""
    ws, env = workspace
    checkout = ws / "src" / "stereo_depth_ros"
    (checkout / "weights").mkdir(exist_ok=True)
    shutil.copy2(student_weights, checkout / "weights" / "route_b_student.pth")
    (checkout / "route_b.yaml").write_text("stereo_depth_node:\n  ros__parameters:\n    backend: torch\n"
                                           "    model_path: route_b_student.pth\n    device: cpu\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = (f"source {ws / 'install' / 'setup.bash'} && exec ros2 launch stereo_depth_ros stereo.launch.py "
               "params_file:=route_b.yaml")
    with NodeProcess(["bash", "-c", command], env, tmp_path / "launch.log", cwd=elsewhere) as launch:
        model = checkout / "weights" / "route_b_student.pth"
        assert launch.wait_for_log(f"ready: backend torch (rt_igev, {model})", 120.0), launch.log()
        assert launch.stop(timeout=30.0) == 0, launch.log()
