"""stereo_depth_node and the ROS conventions it owes (issue 10), each over real DDS with the node in its own process.

Two opencv_sgbm nodes (weight-free, fast), each shared by the checks of its part of this module:
- `quiet`: started from a params file with `use_sim_time: true` (and no /clock anywhere) and a QoS override;
  nobody subscribes to its outputs at first: lazy outputs, the QoS override in the graph, /diagnostics on a
  steady clock.
- `fresh`: a stream whose first images arrive before their camera_info, then runtime parameters set with the
  real `ros2 param set` command line.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from ros_helpers import TIMEOUT, StampCounter, StereoRigClient, float_image, node_env, small_rig
from stereo_devkit.client import StereoClient, diagnostic_values
from stereo_devkit.node_process import NodeProcess, node_command

REPO = Path(__file__).resolve().parents[1]
SGBM = {"backend": "opencv_sgbm", "max_disparity": 64, "diagnostics_period": 0.5}


def _start(workdir: Path, env: dict, params: dict) -> NodeProcess:
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump({"stereo_depth_node": {"ros__parameters": params}}))
    return NodeProcess(node_command(params_file=params_file), env, workdir / "node.log", cwd=REPO)


def _serve(tmp_path_factory, name: str, params: dict, outputs: tuple):
    """(node, env, rig client) for one module-scoped node and a client recording `outputs` and /diagnostics."""
    workdir = tmp_path_factory.mktemp(name)
    env = node_env(workdir)
    node = _start(workdir, env, params)
    client = StereoClient(env, outputs=outputs)
    try:
        assert client.wait_for_node(TIMEOUT), f"node not discovered; log:\n{node.log()}"
        yield node, env, StereoRigClient(client, small_rig(192), StampCounter())
    finally:
        client.close()
        code = node.stop()
    assert code == 0, node.log()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    params = dict(SGBM, use_sim_time=True)
    params["qos_overrides./left/image_rect.subscription.reliability"] = "best_effort"
    params["qos_overrides./depth.publisher.durability"] = "transient_local"  # beyond rclpy's default three
    yield from _serve(tmp_path_factory, "quiet_node", params, outputs=())  # no output has a subscriber


def test_qos_override_in_a_params_file_reaches_the_subscription(quiet):
    node, env, rc = quiet

    def reliability(topic):
        infos = [i for i in rc.client.node.get_subscriptions_info_by_topic(topic)
                 if i.node_name == "stereo_depth_node"]
        assert infos, f"no subscription of stereo_depth_node on {topic}"
        return {ReliabilityPolicy(i.qos_profile.reliability) for i in infos}

    assert reliability("/left/image_rect") == {ReliabilityPolicy.BEST_EFFORT}  # overridden
    assert reliability("/right/image_rect") == {ReliabilityPolicy.RELIABLE}  # follows the reliable client
    durability = {DurabilityPolicy(i.qos_profile.durability)
                  for i in rc.client.node.get_publishers_info_by_topic("/depth") if i.node_name == "stereo_depth_node"}
    assert durability == {DurabilityPolicy.TRANSIENT_LOCAL}


def test_diagnostics_keep_coming_with_sim_time_and_no_clock(quiet):
    node, env, rc = quiet
    start = rc.client.count("diagnostics")
    time.sleep(2.0)
    got = rc.client.received["diagnostics"][start:]
    assert len(got) >= 2, f"{len(got)} /diagnostics messages in 2 s with a 0.5 s period; log:\n{node.log()}"
    # Sim time is really on: ROS time stands at zero without /clock, only the steady timer keeps the beat.
    assert got[-1].msg.header.stamp.sec == 0


def test_no_inference_without_subscribers_then_output_once_one_appears(quiet):
    node, env, rc = quiet
    for _ in range(3):
        rc.publish_valid(info_lead=0.05)
        time.sleep(0.1)
    values = rc.client.wait_for("diagnostics", lambda m: int((diagnostic_values(m) or {}).get("idle_pairs", 0)) >= 3,
                                TIMEOUT)
    assert values is not None, node.log()
    assert diagnostic_values(values)["processed_pairs"] == "0"
    with StereoClient(env, outputs=("disparity",), diagnostics=False) as watcher:
        deadline = time.monotonic() + TIMEOUT
        while watcher._subs[0].get_publisher_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the node sees the subscription a little after we see its publisher
        stamp = rc.publish_valid(info_lead=0.05)
        assert watcher.wait_for_stamp("disparity", stamp, TIMEOUT) is not None, node.log()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    yield from _serve(tmp_path_factory, "fresh_node", SGBM, outputs=("disparity", "depth"))


def test_first_pair_published_before_its_camera_info_still_gets_depth(fresh):
    # image_transport's CameraPublisher sends the image first; the first pair of the stream must wait for it.
    node, env, rc = fresh
    stamp = rc.stamps.next()
    left, right, left_info, right_info = rc.pair(stamp)
    rc.client.pub["left_image"].publish(left)
    rc.client.pub["right_image"].publish(right)
    time.sleep(0.1)
    rc.client.pub["left_info"].publish(left_info)
    rc.client.pub["right_info"].publish(right_info)
    depth = rc.client.wait_for_stamp("depth", stamp, TIMEOUT)
    assert depth is not None, f"no depth for the first pair; log:\n{node.log()}"
    assert np.isfinite(float_image(depth)).mean() > 0.3
    # The backend was warmed up at the camera's size as soon as the first camera_info told it.
    assert node.wait_for_log_regex(r"backend warmed up for \d+x\d+ images", 5.0), node.log()


def _ros2_param_set(env: dict, name: str, value: str) -> subprocess.CompletedProcess:
    ros2 = shutil.which("ros2") or str(Path(sys.executable).parent / "ros2")
    if not Path(ros2).exists():
        pytest.skip("needs the ROS tooling wheels (the ros2 command line, ros2cli from ../shared/ros/wheels)")
    return subprocess.run([ros2, "param", "set", "--no-daemon", "--timeout", "15", "/stereo_depth_node", name, value],
                          env=env, capture_output=True, text=True, timeout=60)


def test_runtime_confidence_threshold_and_read_only_parameters(fresh):
    node, env, rc = fresh

    def nan_share():
        stamp = rc.publish_valid()
        depth = rc.expect_output(stamp, "depth")
        return float(np.isnan(float_image(depth)).mean())

    before = nan_share()
    done = _ros2_param_set(env, "confidence_threshold", "0.99")
    assert "successful" in done.stdout, done.stdout + done.stderr + node.log()
    after = nan_share()
    assert after > before + 0.05, (before, after)

    refused = _ros2_param_set(env, "backend", "torch")
    said = refused.stdout + refused.stderr
    assert "Setting parameter failed" in said and "read-only parameter: backend" in said, said
    # The same service the command line calls, from the test's own node (quicker than another `ros2` process).
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    service = rc.client.node.create_client(SetParameters, "/stereo_depth_node/set_parameters")
    assert service.wait_for_service(TIMEOUT)
    request = SetParameters.Request(parameters=[Parameter("confidence_threshold", value=1.5).to_parameter_msg()])
    future = service.call_async(request)
    deadline = time.monotonic() + TIMEOUT
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    result = future.result().results[0]
    assert not result.successful and "confidence_threshold: must be in 0..1" in result.reason, result
    assert nan_share() == pytest.approx(after, abs=0.02)  # the refused values changed nothing
