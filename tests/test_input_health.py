"""Input health and input QoS decisions, ROS-free: synthetic streams on a fake clock (the DDS side is in
test_node_inputs.py)."""
from __future__ import annotations

import re

import pytest
from rclpy.qos import HistoryPolicy, ReliabilityPolicy

from stereo_depth_ros.inputs.health import (LEFT_IMAGE, LEFT_INFO, RIGHT_IMAGE, RIGHT_INFO, ROLES, InputHealth,
                                            PairCounters)
from stereo_depth_ros.inputs.qos import input_profile, needs_switch, reliability_for, reliability_name

TOPICS = {LEFT_IMAGE: "/cam/left/image_rect", RIGHT_IMAGE: "/cam/right/image_rect",
          LEFT_INFO: "/cam/left/camera_info", RIGHT_INFO: "/cam/right/camera_info"}
IMAGE_BYTES = 640 * 480 * 3


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def stream(health: InputHealth, clock: Clock, seconds: float, rate: float = 10.0, skip=(), right_offset_ns=0,
           pairs_form: bool = True, rejected: bool = False, counters: PairCounters | None = None) -> PairCounters:
    """Feed `seconds` of a stereo stream; `skip`: roles that never arrive. Returns the pair counters fed."""
    counters = counters or PairCounters()
    for k in range(int(seconds * rate)):
        clock.t += 1.0 / rate
        stamp = int(clock.t * 1e9)
        for role in ROLES:
            if role in skip:
                continue
            shift = right_offset_ns if role in (RIGHT_IMAGE, RIGHT_INFO) else 0
            health.received(role, stamp + shift, IMAGE_BYTES if "image" in role else 400)
        if pairs_form and not skip:
            counters = PairCounters(counters.formed + 1, counters.unpaired_left, counters.unpaired_right,
                                    counters.rejected + int(rejected), counters.processed + int(not rejected),
                                    "left image is 640x480 but right is 320x240" if rejected else "")
        if k % int(rate) == 0:  # the node hands over its counters once a second
            health.pairs(counters)
    health.pairs(counters)
    return counters


def healthy(clock: Clock, approximate: bool = False, tolerance: float = 0.0, best_effort: int = 0) -> InputHealth:
    health = InputHealth(TOPICS, approximate=approximate, tolerance_s=tolerance, clock=clock)
    for role in ROLES:
        health.publishers(role, 1, best_effort)
    return health


def test_a_good_stream_has_no_problem_and_nothing_is_judged_during_the_grace():
    clock = Clock()
    health = InputHealth(TOPICS, clock=clock)
    assert health.problems() == []  # no publisher yet, but within the grace
    for role in ROLES:
        health.publishers(role, 1, 0)
    stream(health, clock, 12.0)
    assert health.problems() == []
    snap = health.snapshot()
    assert snap["left_image_rate_hz"] == pytest.approx(10.0, rel=0.05) and snap["complete_pairs"] == 120
    assert snap["right_camera_info_topic"] == "/cam/right/camera_info" and snap["incomplete_pairs"] == 0


def test_no_publisher_names_the_topic_as_remapped():
    clock = Clock()
    health = healthy(clock)
    health.publishers(RIGHT_IMAGE, 0, 0)
    clock.t += 6.0
    (key, message), = health.problems()
    assert key == "no_publisher:right image"
    assert message.startswith("no publisher on /cam/right/image_rect (right image)")
    assert "right_image:=" in message


@pytest.mark.parametrize("best_effort", [1, 0])
def test_one_side_much_less_names_the_likely_cause(best_effort):
    clock = Clock()
    health = healthy(clock, best_effort=best_effort)
    counters = stream(health, clock, 6.0)
    # the right image now arrives once in five: its camera_info still comes every time
    for k in range(60):
        clock.t += 0.1
        for role in ROLES:
            if role != RIGHT_IMAGE or k % 5 == 0:
                health.received(role, int(clock.t * 1e9), IMAGE_BYTES if "image" in role else 400)
        if k % 10 == 0:
            health.pairs(counters)
    problems = dict(health.problems())
    message = problems["starved:right image"]
    assert re.match(r"right image: 2\.0 Hz arrive on /cam/right/image_rect, against 10\.\d Hz", message), message
    if best_effort:
        assert "900 KiB) over a best-effort link" in message and "config/fastdds_shm.xml" in message
    else:
        assert "the driver publishes less on this topic" in message
    assert "docs/node.md" in message


def test_nothing_arrives_from_matched_publishers():
    clock = Clock()
    health = healthy(clock, best_effort=1)
    clock.t += 8.0
    health.pairs(PairCounters())
    problems = dict(health.problems())
    assert problems["nothing_arrives"].startswith(
        "publishers are matched on /cam/left/image_rect and /cam/right/image_rect but nothing arrives")


def test_camera_info_that_never_arrives_is_said():
    clock = Clock()
    health = healthy(clock)
    stream(health, clock, 7.0, skip=(LEFT_INFO,), pairs_form=False)
    problems = dict(health.problems())
    assert "left camera_info: publishers are matched on /cam/left/camera_info but nothing arrives" in \
        problems["nothing_arrives:left camera_info"]


def test_stamps_3ms_apart_under_exact_sync_suggest_approximate_sync_with_the_offset():
    clock = Clock()
    health = healthy(clock)
    stream(health, clock, 7.0, right_offset_ns=3_000_000, pairs_form=False)
    message = dict(health.problems())["no_pairs"]
    assert "no pair forms: left stamps are -3.0 ms from the nearest right ones" in message
    assert "set approximate_sync:=true with approximate_sync_tolerance_seconds:=0.006" in message


def test_offset_beyond_the_approximate_tolerance_says_so():
    clock = Clock()
    health = healthy(clock, approximate=True, tolerance=0.01)
    stream(health, clock, 7.0, right_offset_ns=30_000_000, pairs_form=False)
    message = dict(health.problems())["no_pairs"]
    assert "+" not in message.split("stamps are")[1][:3]  # left is behind: a negative offset
    # twice the offset, capped at half a frame period (10 Hz): a tolerance that cannot pair the wrong frames
    assert re.search(r"beyond approximate_sync_tolerance_seconds 0.01; raise it to 0\.0(49|50)", message), message


def test_every_pair_rejected_gives_the_last_reason():
    clock = Clock()
    health = healthy(clock)
    stream(health, clock, 7.0, rejected=True)
    message = dict(health.problems())["all_rejected"]
    assert message.startswith("every pair that forms is rejected") and "640x480 but right is 320x240" in message


def test_the_window_forgets_a_problem_once_the_stream_is_good():
    clock = Clock()
    health = healthy(clock)
    counters = stream(health, clock, 7.0, right_offset_ns=3_000_000, pairs_form=False)
    assert "no_pairs" in dict(health.problems())
    stream(health, clock, 7.0, counters=counters)
    assert health.problems() == []


def test_reliability_follows_the_publishers():
    reliable, best_effort = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
    assert reliability_for([]) == reliable  # nobody yet: reliable (what BEST_AVAILABLE resolves to as well)
    assert reliability_for([reliable, reliable]) == reliable
    assert reliability_for([reliable, best_effort]) == best_effort  # a reliable reader never matches it
    assert needs_switch(reliable, [best_effort]) == best_effort
    assert needs_switch(best_effort, [reliable]) == reliable  # the best-effort driver left
    assert needs_switch(reliable, [reliable]) is None
    assert reliability_name(best_effort) == "best effort"


def test_input_profiles():
    follow = input_profile(7, use_system_default_qos=False)
    assert follow.depth == 7 and follow.history == HistoryPolicy.KEEP_LAST
    assert follow.reliability in (ReliabilityPolicy.BEST_AVAILABLE, ReliabilityPolicy.RELIABLE)
    system = input_profile(0, use_system_default_qos=True)
    assert system.depth == 1 and system.reliability == ReliabilityPolicy.SYSTEM_DEFAULT


def test_publishers_that_just_appeared_are_not_judged_until_a_window_has_passed():
    """A driver (or a subscription re-created to follow it) gets a window to deliver before 'nothing arrives' or
    'much less' is said: the warning used to fire before the driver's first frame."""
    clock = Clock()
    health = InputHealth(TOPICS, clock=clock)
    clock.t += 6.0  # past the grace, nobody publishing yet
    for role in ROLES:
        health.publishers(role, 1, 1)
    clock.t += 0.5
    health.pairs(PairCounters())
    assert "nothing_arrives" not in dict(health.problems())
    clock.t += 5.0
    health.pairs(PairCounters())
    assert "nothing_arrives" in dict(health.problems())
    health.resubscribed(LEFT_IMAGE)  # the node re-created the subscription: a new window
    assert "nothing_arrives" not in dict(health.problems())


def test_a_no_publisher_warning_carries_the_nodes_note():
    clock = Clock()
    health = healthy(clock)
    health.publishers(LEFT_IMAGE, 0, 0, note="raw images are published on /cam/left/image_rect: set "
                                             "image_transport:=raw")
    clock.t += 6.0
    message = dict(health.problems())["no_publisher:left image"]
    assert message.endswith("; raw images are published on /cam/left/image_rect: set image_transport:=raw")
    assert "-r left/image_rect:=<driver's topic>" in message  # the pip-alone route's way to remap
