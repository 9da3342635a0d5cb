"""Camera presets through the real `ros2 launch` (the venv route: `source .venv/bin/activate`, nothing else): the
node's subscriptions and sync mode per preset, the user's params file and launch arguments over a preset, the
camera driver's own launch file included (`driver:=true`), and arguments checked before anything starts.

The driver is a stand-in: a package named `realsense2_camera` in a temporary ament prefix, whose launch file
`rs_launch.py` starts a small rclpy publisher of the Motorcycle pair as a RealSense's infra1/infra2 pair (mono8,
RELIABLE depth 5, like realsense2_camera) and records the launch arguments and the environment it was given.
Needs the ROS tooling wheels (skipped with the reason otherwise).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ros_helpers import TIMEOUT, float_image, plain_env, venv_activation
from stereo_devkit.client import StereoClient
from stereo_devkit.node_process import NodeProcess
from stereo_depth_ros.camera_presets import PRESETS, load_preset

REPO = Path(__file__).resolve().parents[1]
CAMERAS = REPO / "config" / "cameras"

STAND_IN_DRIVER = '''"""Stand-in for realsense2_camera (test only): the Motorcycle pair as infra1/infra2, 5 Hz."""
import json, os, signal, sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from stereo_devkit.client import image_message, stamp_from_seconds
from stereo_devkit.motorcycle import motorcycle_rig

report, names, values = sys.argv[1], sys.argv[2::2], sys.argv[3::2]
with open(report, "w") as out:
    json.dump({"arguments": dict(zip(names, values)),
               "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")}, out)
rclpy.init()
node = rclpy.create_node("camera", namespace="camera")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
pubs = {(side, kind): node.create_publisher(CameraInfo if kind == "info" else Image,
                                            f"~/{side}/" + ("camera_info" if kind == "info" else "image_rect_raw"), qos)
        for side in ("infra1", "infra2") for kind in ("image", "info")}
rig = motorcycle_rig(320)
try:
    while rclpy.ok():
        stamp = stamp_from_seconds(time.time())
        infos = rig.camera_infos(stamp)
        for side, pixels, info in (("infra1", rig.left, infos[0]), ("infra2", rig.right, infos[1])):
            info.header.frame_id = "camera_infra1_optical_frame"
            pubs[side, "info"].publish(info)
            grey = np.ascontiguousarray(pixels.mean(axis=2).astype(np.uint8))
            pubs[side, "image"].publish(image_message(grey, "mono8", stamp, "camera_infra1_optical_frame"))
        rclpy.spin_once(node, timeout_sec=0.2)
except (KeyboardInterrupt, Exception):  # SIGINT: from launch and from the terminal (the process group)
    pass
finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the second SIGINT must not cut the clean-up short
    rclpy.try_shutdown()
'''

STAND_IN_LAUNCH = '''from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

NAMES = ["enable_infra1", "enable_infra2", "enable_depth", "enable_color", "camera_name"]


def generate_launch_description():
    command = [{python!r}, {script!r}, {report!r}]
    for name in NAMES:
        command += [name, LaunchConfiguration(name)]
    return LaunchDescription([DeclareLaunchArgument(n, default_value="unset") for n in NAMES]
                             + [ExecuteProcess(cmd=command, name="stand_in_realsense", output="screen")])
'''


@pytest.fixture(scope="module")
def activated():
    return venv_activation()


def _launch(activated: str, arguments: str, workdir: Path, env: dict[str, str], prefix: str = "") -> NodeProcess:
    command = f"{prefix}exec ros2 launch stereo_depth_ros stereo.launch.py backend:=opencv_sgbm {arguments}"
    return NodeProcess(["bash", "-c", activated + command], env, workdir / "launch.log", cwd=workdir)


def _subscriptions(client: StereoClient, timeout: float = TIMEOUT) -> dict[str, list[str]]:
    """topic -> types of the launched node's subscriptions, as the ROS graph (and `ros2 node info`) reports them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = dict(client.node.get_subscriber_names_and_types_by_node("stereo_depth_node", "/"))
        except Exception:  # not discovered yet
            found = {}
        if len(found) >= 4:
            return found
        time.sleep(0.2)
    return {}


@pytest.mark.parametrize("camera", PRESETS)
def test_each_preset_subscribes_to_its_drivers_topics(activated, tmp_path, camera):
    preset = load_preset(camera, CAMERAS)
    env = plain_env(tmp_path)
    with _launch(activated, f"camera:={camera}", tmp_path, env) as launch, StereoClient(env, outputs=()) as client:
        assert launch.wait_for_log("ready: backend opencv_sgbm", timeout=60), launch.log()
        subscriptions = _subscriptions(client)
        code = launch.stop(timeout=30.0)
    assert subscriptions == {preset.topics[key]: [f"sensor_msgs/msg/{kind}"] for key, kind in (
        ("left_image", "Image"), ("right_image", "Image"), ("left_camera_info", "CameraInfo"),
        ("right_camera_info", "CameraInfo"))}, launch.log()
    sync = "approximate" if camera == "oakd" else "exact"
    assert f"raw images, {sync} sync" in launch.log(), launch.log()
    assert "inputs reliable (following the publishers)" in launch.log(), launch.log()
    assert code == 0 and "Traceback" not in launch.log(), launch.log()


def test_sync_tolerance_launch_argument_reaches_the_node(activated, tmp_path):
    """The node's advice for stamps that differ ("set approximate_sync:=true with
    approximate_sync_tolerance_seconds:=...") can be followed on the launch line."""
    env = plain_env(tmp_path)
    arguments = "approximate_sync:=true approximate_sync_tolerance_seconds:=0.006"
    with _launch(activated, arguments, tmp_path, env) as launch:
        assert launch.wait_for_log("ready: backend opencv_sgbm", timeout=60), launch.log()
        got = subprocess.run(["bash", "-c", activated + "ros2 param get /stereo_depth_node "
                              "approximate_sync_tolerance_seconds --no-daemon --spin-time 5"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        launch.stop(timeout=30.0)
    assert "Double value is: 0.006" in got.stdout, got.stdout + got.stderr


def test_own_params_file_and_launch_arguments_override_the_preset(activated, tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"stereo_depth_node": {"ros__parameters": {
        "approximate_sync": True, "approximate_sync_tolerance_seconds": 0.004, "queue_size": 3}}}))
    env = plain_env(tmp_path)
    arguments = f"camera:=realsense params_file:={own} image_transport:=compressed rectify:=true"
    with _launch(activated, arguments, tmp_path, env) as launch, StereoClient(env, outputs=()) as client:
        assert launch.wait_for_log("ready: backend opencv_sgbm", timeout=60), launch.log()
        subscriptions = _subscriptions(client)
        launch.stop(timeout=30.0)
    # rectify:=true: the node's left/image_raw is remapped to the preset's left image, /compressed follows it.
    assert subscriptions["/camera/camera/infra1/image_rect_raw/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    assert subscriptions["/camera/camera/infra2/image_rect_raw/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    assert "compressed images rectified here, approximate sync" in launch.log(), launch.log()
    assert "keep last 3" in launch.log(), launch.log()


@pytest.fixture(scope="module")
def stand_in_prefix(tmp_path_factory):
    """An ament prefix holding a package named realsense2_camera with launch/rs_launch.py (see module docstring)."""
    prefix = tmp_path_factory.mktemp("driver_prefix")
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "realsense2_camera").touch()
    launch_dir = prefix / "share" / "realsense2_camera" / "launch"
    launch_dir.mkdir(parents=True)
    script = prefix / "stand_in_realsense.py"
    script.write_text(STAND_IN_DRIVER)
    report = prefix / "driver_report.json"
    (launch_dir / "rs_launch.py").write_text(STAND_IN_LAUNCH.format(python=sys.executable, script=str(script),
                                                                    report=str(report)))
    return prefix, report


def test_driver_launch_file_is_included_with_the_same_environment_and_stops_with_ctrl_c(activated, tmp_path,
                                                                                       stand_in_prefix):
    prefix, report = stand_in_prefix
    env = plain_env(tmp_path)
    add_prefix = f'export AMENT_PREFIX_PATH="$AMENT_PREFIX_PATH:{prefix}" && '
    preset = load_preset("realsense", CAMERAS)
    inputs = {"left_image": preset.topics["left_image"], "right_image": preset.topics["right_image"],
              "left_info": preset.topics["left_camera_info"], "right_info": preset.topics["right_camera_info"]}
    with _launch(activated, "camera:=realsense driver:=true driver_args:=camera_name:=front", tmp_path, env,
                 add_prefix) as launch, StereoClient(env, inputs=inputs) as client:
        assert client.wait_for_node(60.0), launch.log()
        depth = client.wait_for("depth", timeout=TIMEOUT)
        assert depth is not None, launch.log()
        assert depth.header.frame_id == "camera_infra1_optical_frame"
        assert np.isfinite(float_image(depth)).mean() > 0.2
        driver_pid = [int(m) for m in re.findall(r"\[stand_in_realsense-\d+\]: process started with pid \[(\d+)\]",
                                                 launch.log())]
        code = launch.stop(timeout=30.0)
    log = launch.log()
    assert code == 0, log
    # The driver got the preset's arguments (and driver_args' over them) and the launch's Fast DDS profile.
    given = json.loads(report.read_text())
    assert given["arguments"] == {"enable_infra1": "true", "enable_infra2": "true", "enable_depth": "false",
                                  "enable_color": "false", "camera_name": "front"}
    assert given["fastdds_profile"].endswith("share/stereo_depth_ros/config/fastdds_shm.xml")
    # One Ctrl-C stopped both.
    assert re.search(r"stand_in_realsense-\d+\]: process has finished cleanly", log), log
    assert re.search(r"stereo_depth_node-\d+\]: process has finished cleanly", log), log
    assert driver_pid and subprocess.run(["kill", "-0", str(driver_pid[0])], capture_output=True).returncode != 0


@pytest.mark.parametrize("arguments, message", [
    ("camera:=kinect", "camera:='kinect' is not a preset; presets: realsense, zed, oakd"),
    ("camera:=zed driver:=true", "driver launch zed_wrapper/zed_camera.launch.py: package 'zed_wrapper' is not "
                                 "installed here"),
    ("driver:=true", "driver:=true needs camera:=<preset> or driver_launch:=<package>/<launch file>"),
    ("camera:=realsense driver:=true driver_args:=enable_infra1", "driver_args 'enable_infra1' is not name:=value"),
    ("approximate_sync:=maybe", "approximate_sync: expected true or false, got 'maybe'"),
    ("image_transport:=theora", "image_transport: expected raw or compressed, got 'theora'"),
    ("approximate_sync_tolerance_seconds:=soon", "approximate_sync_tolerance_seconds: expected a number of seconds"),
    # a node parameter is not a launch argument: launch would pass it to nobody, silently
    ("input_width:=640 input_height:=480", "input_height:=480 input_width:=640: node parameter(s), not arguments"),
    ("fastdds_profile:=/nonexistent.xml", "fastdds_profile: cannot read '/nonexistent.xml'"),
    ("params_file:=config/distill.yaml", "has no section for node 'stereo_depth_node'"),
])
def test_bad_camera_arguments_stop_the_launch_before_anything_starts(activated, tmp_path, arguments, message):
    env = plain_env(tmp_path)
    result = subprocess.run(["bash", "-c", activated + "ros2 launch stereo_depth_ros stereo.launch.py "
                             "backend:=opencv_sgbm " + arguments], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output
    assert "process started" not in output and "Traceback" not in output, output
