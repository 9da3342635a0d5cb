"""The node's input subscriptions, in rclpy: QoS that follows the publishers, callbacks that survive every
message, and the figures behind the input health in /diagnostics.

What happens per topic (left/right image, left/right camera_info):
- the subscription is created with `inputs.qos.input_profile` (reliable from reliable drivers) and the user's
  `qos_overrides.*`; `poll()` (the node calls it every second) reads the publishers' offered QoS from the ROS graph,
  gives `InputHealth` the publisher counts, and re-creates a following subscription whose reliability no longer
  fits them (a best-effort driver appeared or left); an incompatible-QoS event triggers the same check at once;
- every message is counted (`InputHealth.received`) and handed to the synchroniser; a callback never raises: a
  message the synchroniser cannot take is a throttled warning (a node that dies on one odd message is worse
  than one that skips it);
- message-lost events of the middleware are counted per topic.

Kept apart from `node.py` so the node stays wiring; the decisions are ROS-free (`inputs.qos`, `inputs.health`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image

from stereo_depth_ros.file_search import FileSearchError, find_file
from stereo_depth_ros.diagnostics import Throttle
from stereo_depth_ros.inputs.health import LEFT_IMAGE, LEFT_INFO, RIGHT_IMAGE, RIGHT_INFO, InputHealth, PairCounters
from stereo_depth_ros.inputs.qos import FOLLOW, OVERRIDDEN, SYSTEM_DEFAULT, input_profile, needs_switch, \
    reliability_name
from stereo_depth_ros.inputs.stamps import stamp_ns, stamp_problem
from stereo_depth_ros.inputs.sync import StereoSynchronizer

Warn = Callable[[str, str], None]
INPUT_WARNING_PERIOD_S = 10.0  # input health: the same problem at most this often in the log


@dataclass
class InputTopic:
    """One input: its role, message type, relative topic name, and where its messages go."""

    role: str
    msg_type: Any
    name: str
    add: Callable[[Any], None]
    subscription: Any = None
    profile: QoSProfile | None = None
    mode: str = FOLLOW  # FOLLOW, SYSTEM_DEFAULT or OVERRIDDEN (inputs.qos)
    reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE  # in force (BEST_AVAILABLE/system default resolved)


def _profile_path() -> str:
    """The package's Fast DDS profile as a path that works from anywhere (for the remedy in warnings)."""
    try:
        return str(find_file("config/fastdds_shm.xml", "params"))
    except FileSearchError:
        return "config/fastdds_shm.xml in the package's share folder"


def _payload_bytes(msg: Any) -> int:
    data = getattr(msg, "data", None)
    return len(data) if data is not None else 0


class NodeInputs:
    """Creates and keeps the four input subscriptions of `node` (an rclpy Node) feeding `sync`.

    depth: history depth (the node's queue_size); use_system_default_qos: stereo_image_proc's parameter;
    overrides: the QoSOverridingOptions the node passes for qos_overrides.* parameters; warn(kind, message): the
    node's throttled warning; on_camera_info: also called with each camera_info; image_type and image_topics: the
    images' message class and topic names (inputs.sources: Image or CompressedImage, image_rect or image_raw).
    """

    def __init__(self, node: Any, sync: StereoSynchronizer, depth: int, use_system_default_qos: bool,
                 overrides: QoSOverridingOptions, warn: Warn, approximate: bool, tolerance_s: float,
                 on_camera_info: Callable[[Any], None] | None = None, image_type: Any = Image,
                 image_topics: tuple[str, str] = ("left/image_rect", "right/image_rect")) -> None:
        self._node, self._sync, self._warn = node, sync, warn
        self._on_camera_info = on_camera_info
        self._depth, self._system_default = depth, use_system_default_qos
        self._throttle = Throttle(INPUT_WARNING_PERIOD_S)
        self.topics = [InputTopic(LEFT_IMAGE, image_type, image_topics[0], sync.add_left_image),
                       InputTopic(RIGHT_IMAGE, image_type, image_topics[1], sync.add_right_image),
                       InputTopic(LEFT_INFO, CameraInfo, "left/camera_info", sync.add_left_info),
                       InputTopic(RIGHT_INFO, CameraInfo, "right/camera_info", sync.add_right_info)]
        for topic in self.topics:
            self._subscribe(topic, overrides)
        self.health = InputHealth({t.role: t.subscription.topic_name for t in self.topics}, approximate,
                                  tolerance_s, profile=_profile_path())

    # -- subscriptions ---------------------------------------------------------------------------------------
    def _subscribe(self, topic: InputTopic, overrides: QoSOverridingOptions | None,
                   reliability: ReliabilityPolicy | None = None) -> None:
        if topic.profile is None:
            profile = input_profile(self._depth, self._system_default)
        else:  # a re-creation keeps the overridden policies rclpy wrote into the first profile
            profile = QoSProfile(history=topic.profile.history, depth=topic.profile.depth,
                                 reliability=topic.profile.reliability, durability=topic.profile.durability)
        if reliability is not None:
            profile.reliability = reliability
        asked = profile.reliability
        events = SubscriptionEventCallbacks(incompatible_qos=functools.partial(self._incompatible, topic),
                                            message_lost=functools.partial(self._lost, topic))
        topic.subscription = self._node.create_subscription(
            topic.msg_type, topic.name, self._callback(topic), profile, event_callbacks=events,
            qos_overriding_options=overrides)
        if topic.profile is None:
            topic.mode = (SYSTEM_DEFAULT if self._system_default
                          else OVERRIDDEN if profile.reliability != asked else FOLLOW)
        topic.profile = profile
        # What the middleware made of BEST_AVAILABLE or the system default: read once, from our own endpoint.
        concrete = profile.reliability in (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT)
        resolved = profile.reliability if concrete else self._own_reliability(topic)
        topic.reliability = resolved if resolved is not None else ReliabilityPolicy.RELIABLE

    def _callback(self, topic: InputTopic) -> Callable[[Any], None]:
        is_info = topic.role in (LEFT_INFO, RIGHT_INFO)

        def callback(msg: Any) -> None:
            try:
                valid = stamp_problem(msg) is None
                self.health.received(topic.role, stamp_ns(msg) if valid else None, _payload_bytes(msg))
                if is_info and self._on_camera_info is not None:
                    self._on_camera_info(msg)
                topic.add(msg)  # the synchroniser drops (and names) stale images and stamps it cannot use
            except Exception as exc:  # never let one message kill the node
                self._warn(f"input:{type(exc).__name__}", f"{topic.role} message on {topic.subscription.topic_name} "
                           f"skipped: {type(exc).__name__}: {exc}")
        return callback

    def _lost(self, topic: InputTopic, info: Any) -> None:
        self.health.lost(topic.role, getattr(info, "total_count_change", 0))

    def _incompatible(self, topic: InputTopic, info: Any) -> None:
        if topic.mode == FOLLOW:
            self.poll()  # a best-effort publisher this subscription cannot match: follow it now
            return
        self._warn(f"qos:{topic.role}", f"{topic.subscription.topic_name}: a publisher's QoS is incompatible with "
                   f"this subscription's ({self._mode_text(topic)}, {self.reliability_in_force(topic)}), "
                   f"so nothing flows from it (policy {getattr(info, 'last_policy_kind', '?')}); let the node "
                   "follow the publishers (no use_system_default_qos, no reliability override)")

    # -- reporting -------------------------------------------------------------------------------------------
    def report(self, snap: dict[str, Any]) -> list[tuple[str, str]]:
        """Add the input figures (per topic, pairs, the synchroniser's counters) to a /diagnostics snapshot and
        return the input problems, each logged as a WARN at most every INPUT_WARNING_PERIOD_S."""
        sync = self._sync.stats
        self.health.pairs(PairCounters(sync.pairs, sync.unpaired[0], sync.unpaired[1], int(snap["rejected_pairs"]),
                                       int(snap["processed_pairs"]), str(snap["last_problem"])))
        problems = self.health.problems()
        for key, message in problems:  # throttled per problem, whatever its figures
            if self._throttle.ready(key):
                self._node.get_logger().warning(message)
        snap.update(self.health.snapshot())
        snap.update(stale_images=sync.dropped_stale, pairs_without_camera_info=sync.missing_info,
                    pairs_with_earlier_camera_info=sync.reused_info, invalid_stamps=sync.invalid_stamps)
        return problems

    # -- the graph -------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Publisher counts into the health figures; following subscriptions re-created when they must."""
        for topic in self.topics:
            name = topic.subscription.topic_name
            offered = [info.qos_profile.reliability for info in self._node.get_publishers_info_by_topic(name)]
            best_effort = sum(policy == ReliabilityPolicy.BEST_EFFORT for policy in offered)
            self.health.publishers(topic.role, len(offered), best_effort,
                                   note=self._no_publisher_note(name) if not offered else "")
            if topic.mode != FOLLOW:
                continue
            switch = needs_switch(topic.reliability, offered)
            if switch is not None:
                self._node.destroy_subscription(topic.subscription)
                self._subscribe(topic, None, switch)
                self.health.resubscribed(topic.role)
                self._node.get_logger().info(
                    f"{name}: subscribing {reliability_name(switch)} now ({best_effort} of {len(offered)} "
                    "publishers offer best effort)")

    def _no_publisher_note(self, name: str) -> str:
        """For a compressed topic nobody publishes: raw images on its base topic are the likely mix-up."""
        base = name.removesuffix("/compressed")
        if base == name or not self._node.count_publishers(base):
            return ""
        return (f"raw images are published on {base}: set image_transport:=raw, or publish compressed; remap the "
                "base topic (without /compressed), image_transport adds the suffix")

    def _own_reliability(self, topic: InputTopic) -> ReliabilityPolicy | None:
        node = self._node
        for info in node.get_subscriptions_info_by_topic(topic.subscription.topic_name):
            if info.node_name == node.get_name() and info.node_namespace == node.get_namespace():
                return info.qos_profile.reliability
        return None

    def reliability_in_force(self, topic: InputTopic) -> str:
        return reliability_name(topic.reliability)

    def _mode_text(self, topic: InputTopic) -> str:
        return {FOLLOW: "following the publishers", SYSTEM_DEFAULT: "use_system_default_qos",
                OVERRIDDEN: "set by qos_overrides"}[topic.mode]

    def qos_summary(self) -> str:
        """The QoS in force, for the ready line: e.g. 'inputs reliable, keep last 5 (following the publishers)'."""
        parts: dict[str, list[str]] = {}
        for topic in self.topics:
            key = f"{self.reliability_in_force(topic)} ({self._mode_text(topic)})"
            parts.setdefault(key, []).append(topic.role)
        depth = self.topics[0].profile.depth if self.topics[0].profile is not None else self._depth
        if len(parts) == 1:
            return f"inputs {next(iter(parts))}, keep last {depth}"
        return "inputs " + "; ".join(f"{', '.join(roles)}: {key}" for key, roles in parts.items()) + \
            f", keep last {depth}"
