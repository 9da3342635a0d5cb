"""QoS of the node's input subscriptions: reliable delivery from a reliable camera driver, still matching a
best-effort one.

Why not sensor-data QoS (what the node used to take): a best-effort subscription makes the whole link best
effort, and with Fast DDS's default transports a camera-sized image (640x480 rgb8 is 900 KiB, larger than the
default ~512 KiB shared-memory segment) goes over UDP in ~15 fragments; losing any one loses the image. Measured
with a stock-driver stand-in: 16 % of 640x480 pairs reached the node at 5.5 Hz, against every pair over a
reliable subscription. And why not the "system default" profile: the system default for a DDS *reader* is best
effort (Fast DDS's DataReaderQos), so `use_system_default_qos: true` gave a best-effort subscription too.

The policy (`FOLLOW`, the default): reliability follows the publishers. A subscription is reliable while every
publisher on its topic is reliable (or none is known yet) and best effort as soon as one publisher is best effort
(a reliable subscription never matches a best-effort publisher). rclpy's BEST_AVAILABLE (Iron and later) makes that
choice once, at creation, from the publishers known then; the node re-checks the publishers' offered QoS as they
come and go and re-creates a subscription whose choice no longer fits (`reliability_for`), which also covers
Humble, where BEST_AVAILABLE does not exist. `use_system_default_qos: true` keeps stereo_image_proc's meaning (the
middleware's default profile, whatever it is), and a `qos_overrides./<topic>.subscription.reliability` in a params
file fixes the reliability of that topic: neither is followed.

ROS-free apart from rclpy.qos (plain enums and a dataclass-like profile): `tests/test_input_qos.py` drives it.
"""
from __future__ import annotations

from collections.abc import Iterable

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_system_default)

FOLLOW = "follow publishers"
SYSTEM_DEFAULT = "system default"
OVERRIDDEN = "qos_overrides"


def best_available_supported() -> bool:
    """True where rclpy has ReliabilityPolicy.BEST_AVAILABLE (Iron and later)."""
    return hasattr(ReliabilityPolicy, "BEST_AVAILABLE")


def input_profile(depth: int, use_system_default_qos: bool) -> QoSProfile:
    """The profile an input subscription is created with (keep last `depth`, volatile).

    Following publishers starts from BEST_AVAILABLE where rclpy has it (the middleware looks at the publishers
    already known) and from RELIABLE otherwise (the node switches to best effort when a best-effort publisher
    shows up)."""
    depth = max(int(depth), 1)
    if use_system_default_qos:
        base = qos_profile_system_default
        return QoSProfile(history=base.history, depth=depth, reliability=base.reliability,
                          durability=base.durability)
    reliability = ReliabilityPolicy.BEST_AVAILABLE if best_available_supported() else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def reliability_for(offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy:
    """The reliability that gets reliable delivery from reliable publishers and still matches every publisher:
    best effort when any publisher offers best effort, reliable otherwise (also with no publisher yet)."""
    return (ReliabilityPolicy.BEST_EFFORT if any(policy == ReliabilityPolicy.BEST_EFFORT for policy in offered)
            else ReliabilityPolicy.RELIABLE)


def needs_switch(current: ReliabilityPolicy, offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy | None:
    """The reliability to re-create a following subscription with, or None when `current` still fits."""
    wanted = reliability_for(offered)
    return None if wanted == current else wanted


def reliability_name(policy: ReliabilityPolicy | int) -> str:
    """'reliable', 'best effort', 'best available', 'system default' or 'unknown'."""
    names = {ReliabilityPolicy.RELIABLE: "reliable", ReliabilityPolicy.BEST_EFFORT: "best effort",
             ReliabilityPolicy.SYSTEM_DEFAULT: "system default"}
    if best_available_supported():
        names[ReliabilityPolicy.BEST_AVAILABLE] = "best available"
    try:
        return names.get(ReliabilityPolicy(policy), "unknown")
    except ValueError:
        return "unknown"
