"""The node's inputs over real DDS, the node in its own process: the QoS it subscribes with (following the
drivers' publishers), and the input health it reports (WARN in /diagnostics and the log) when frames do not
arrive or do not pair. The publishers are a stock driver's unless a test says otherwise: reliable, from a
participant on Fast DDS's default transports (stereo_devkit.client.StereoClient's default).
"""
from __future__ import annotations

import time

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import ReliabilityPolicy

from ros_helpers import TIMEOUT, StampCounter, StereoRigClient, node_env, small_rig, start_node
from stereo_devkit.client import StereoClient, stamp_from_seconds

INPUT_TOPICS = ("/left/image_rect", "/right/image_rect", "/left/camera_info", "/right/camera_info")
# Input health judges after 5 s and looks back 5 s; a problem must be said within 10 s.
HEALTH_DEADLINE = 12.0
SGBM = {"backend": "opencv_sgbm", "max_disparity": 64, "diagnostics_period": 0.5}


def _input_reliability(client: StereoClient, node_name: str = "stereo_depth_node") -> set:
    """The reliabilities of the node's input subscriptions as the client's graph shows them ("not discovered"
    for a topic it does not see the node subscribe to yet: node names arrive a little after the endpoints)."""
    policies: set = set()
    for topic in INPUT_TOPICS:
        infos = [i for i in client.node.get_subscriptions_info_by_topic(topic) if i.node_name == node_name]
        policies |= {ReliabilityPolicy(i.qos_profile.reliability) for i in infos} or {"not discovered"}
    return policies


def _wait_reliability(client: StereoClient, expected: ReliabilityPolicy, timeout: float = TIMEOUT) -> set:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        policies = _input_reliability(client)
        if policies == {expected}:
            break
        time.sleep(0.2)
    return policies


def _latest_status(client: StereoClient):
    items = client.received["diagnostics"]
    return items[-1].msg.status[0] if items else None


def _stream(rc: StereoRigClient, seconds: float, rate: float = 10.0, publish=None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        (publish or rc.publish_valid)()
        time.sleep(1.0 / rate)


def test_reliable_driver_gets_reliable_delivery_and_best_effort_one_is_followed(tmp_path):
    """Default: reliable from a reliable driver (sensor-data QoS would make every link best effort and lose
    camera-sized images over UDP); a best-effort driver that appears later is followed, not left unmatched."""
    env = node_env(tmp_path)
    with start_node(tmp_path, env, SGBM) as node:
        with StereoClient(env) as reliable:
            assert reliable.wait_for_node(TIMEOUT), node.log()
            assert _wait_reliability(reliable, ReliabilityPolicy.RELIABLE) == {ReliabilityPolicy.RELIABLE}
            rc = StereoRigClient(reliable, small_rig(256), StampCounter())
            rc.expect_output(rc.publish_valid(info_lead=0.3), "depth")
        assert node.wait_for_log("inputs reliable (following the publishers)", TIMEOUT), node.log()
        with StereoClient(env, reliable_inputs=False) as best_effort:
            assert _wait_reliability(best_effort, ReliabilityPolicy.BEST_EFFORT) == {ReliabilityPolicy.BEST_EFFORT}
            assert node.wait_for_log_regex(r"/left/image_rect: subscribing best effort now \(1 of 1 publishers",
                                           TIMEOUT), node.log()
            best_effort.wait_for_node(TIMEOUT)
            rc = StereoRigClient(best_effort, small_rig(256), StampCounter(start=2000.0))
            rc.expect_output(rc.publish_valid(info_lead=0.3), "depth")
        assert node.stop() == 0, node.log()


# A Fast DDS profile whose default reader is reliable: Fast DDS's own default reader is best effort, so without
# it "the RMW's default" and best effort could not be told apart over DDS.
RELIABLE_DEFAULT_READERS = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <data_reader profile_name="reliable_default_readers" is_default_profile="true">
      <qos><reliability><kind>RELIABLE</kind></reliability></qos>
    </data_reader>
  </profiles>
</dds>
"""


@pytest.mark.parametrize("case", ["system_default", "override"])
def test_stereo_image_proc_habits_fix_the_qos(tmp_path, case):
    """use_system_default_qos keeps its meaning (the middleware's default profile, here made reliable by a
    profile), and a reliability override in qos_overrides.* wins; neither follows the publishers, and the ready
    line names the QoS in force."""
    if case == "system_default":
        profile = tmp_path / "reliable_default_readers.xml"
        profile.write_text(RELIABLE_DEFAULT_READERS)
        env, params = node_env(tmp_path, fastdds_profile=profile), {**SGBM, "use_system_default_qos": True}
        expected, ready = ReliabilityPolicy.RELIABLE, "inputs reliable (use_system_default_qos)"
    else:
        env = node_env(tmp_path)
        params = {**SGBM, **{f"qos_overrides.{t}.subscription.reliability": "best_effort" for t in INPUT_TOPICS}}
        expected, ready = ReliabilityPolicy.BEST_EFFORT, "inputs best effort (set by qos_overrides)"
    with start_node(tmp_path, env, params) as node, \
            StereoClient(env) as client:
        assert client.wait_for_node(TIMEOUT), node.log()
        assert node.wait_for_log(ready, TIMEOUT), node.log()
        assert _wait_reliability(client, expected) == {expected}
        rc = StereoRigClient(client, small_rig(256), StampCounter())
        rc.expect_output(rc.publish_valid(info_lead=0.3), "depth")
        time.sleep(1.5)  # a few graph polls: a fixed QoS is not re-created
        assert _input_reliability(client) == {expected} and "subscribing" not in node.log()
        assert node.stop() == 0, node.log()


def _warned(node, client, pattern: str, start: int) -> tuple[bool, object]:
    """The node logged a WARN matching `pattern` and /diagnostics is at WARN, within HEALTH_DEADLINE."""
    logged = node.wait_for_log_regex(r"\[WARN\].*" + pattern, HEALTH_DEADLINE, start=start)
    status = _latest_status(client)
    return logged, status


def test_no_publisher_is_named(tmp_path):
    env = node_env(tmp_path)
    with start_node(tmp_path, env, SGBM) as node, StereoClient(env, inputs={"right_image": "unused/right"}) as client:
        assert client.wait_for("diagnostics", timeout=TIMEOUT) is not None, node.log()
        logged, status = _warned(node, client, r"no publisher on /right/image_rect \(right image\)", 0)
        assert logged, node.log()
        assert status.level == DiagnosticStatus.WARN and "no publisher on /right/image_rect" in status.message
        assert "/left/image_rect" not in status.message  # the client publishes that one
        assert node.stop() == 0, node.log()


def test_one_side_missing_and_stamps_3ms_apart_are_said(tmp_path):
    """A right camera whose images never arrive (its camera_info does), then a right camera stamped 3 ms after
    the left one under exact sync: each gets its WARN, with the cause and the remedy; a good stream then goes
    back to OK with no input warning."""
    env = node_env(tmp_path)
    with start_node(tmp_path, env, SGBM) as node, StereoClient(env) as client:
        assert client.wait_for_node(TIMEOUT), node.log()
        rc = StereoRigClient(client, small_rig(256), StampCounter(start=time.time()))

        def left_only():
            left, _right, li, ri = rc.pair(rc.stamps.next())
            for key, msg in (("left_info", li), ("right_info", ri), ("left_image", left)):
                client.pub[key].publish(msg)

        start = len(node.log())
        _stream(rc, 7.0, publish=left_only)
        logged, status = _warned(node, client, r"right image: 0\.0 Hz arrive on /right/image_rect, against", start)
        assert logged, node.log()[-3000:]
        assert status.level == DiagnosticStatus.WARN and "right image" in status.message
        assert "likely cause" in node.log()[start:] and "docs/node.md" in node.log()[start:]

        def skewed():
            stamp = rc.stamps.next()
            left, right, li, ri = rc.pair(stamp)
            late = stamp_from_seconds(stamp.sec + stamp.nanosec * 1e-9 + 0.003)
            right.header.stamp = ri.header.stamp = late
            client.publish(left, right, li, ri)

        start = len(node.log())
        _stream(rc, 8.0, publish=skewed)
        logged, status = _warned(node, client, r"no pair forms: left stamps are -3\.0 ms from the nearest right "
                                 r"ones; exact sync needs equal stamps; set approximate_sync:=true", start)
        assert logged, node.log()[-3000:]
        assert "no pair forms" in status.message

        _stream(rc, 7.0)  # a good stream: the window forgets the problems...
        start, seen = len(node.log()), client.count("diagnostics")
        _stream(rc, 5.0)  # ...and then stays quiet and OK
        levels = {item.msg.status[0].level for item in client.received["diagnostics"][seen:]}
        assert levels == {DiagnosticStatus.OK}, _latest_status(client).message
        assert "[WARN]" not in node.log()[start:], node.log()[start:]
        assert node.stop() == 0, node.log()
