"""The stereo frames of a rosbag2 (sqlite3 or mcap, through `rosbags`): topics, stamps, pairing and pixels.

`extract` reads a bag twice: `scan_stamps` collects every image's header stamp (and the first camera_info per
side), `match_frames` pairs left and right frames by stamp, and `iterate_messages` then delivers the messages
whose pixels are written (`message_to_rgb`). Damage in the bag never ends in a traceback: it becomes
`BagReadError`, or a message-count shortfall that `scan_stamps` reports.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stereo_depth_ros.inputs.sync import stamp_ns

from .cli import CliError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


@dataclass(frozen=True)
class Frame:
    """One image message: its position among its topic's messages (in bag order) and its header stamp."""

    index: int
    stamp_ns: int


@dataclass(frozen=True)
class Pair:
    index: int  # position among all matched pairs, before stride/limit: names do not depend on those options
    left: Frame
    right: Frame

    @property
    def name(self) -> str:
        return f"{self.index:06d}_{self.left.stamp_ns}"


def match_frames(left: list[Frame], right: list[Frame], tolerance_ns: int) -> list[Pair]:
    """Pairs of mutually nearest stamps at most `tolerance_ns` apart, in left-stamp order.

    Mutual nearest (rather than greedy in time) keeps the result independent of message arrival order and never
    uses one frame twice. Frames with a stamp already seen on the same topic are dropped (duplicates).
    """
    left, right = _unique_by_stamp(left), _unique_by_stamp(right)
    right_stamps = [f.stamp_ns for f in right]
    left_stamps = [f.stamp_ns for f in left]
    pairs: list[Pair] = []
    for i, frame in enumerate(left):
        j = _nearest(right_stamps, frame.stamp_ns)
        if j is None or abs(right_stamps[j] - frame.stamp_ns) > tolerance_ns:
            continue
        if _nearest(left_stamps, right_stamps[j]) != i:
            continue
        pairs.append(Pair(len(pairs), frame, right[j]))
    return pairs


def _unique_by_stamp(frames: list[Frame]) -> list[Frame]:
    seen: dict[int, Frame] = {}
    for frame in frames:
        seen.setdefault(frame.stamp_ns, frame)
    return sorted(seen.values(), key=lambda f: f.stamp_ns)


def _nearest(sorted_values: list[int], value: int) -> int | None:
    if not sorted_values:
        return None
    k = bisect.bisect_left(sorted_values, value)
    candidates = [c for c in (k - 1, k) if 0 <= c < len(sorted_values)]
    # Ties go to the earlier element, so the choice is deterministic.
    return min(candidates, key=lambda c: (abs(sorted_values[c] - value), c))


def message_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB, exactly what the node feeds the network for the same message (the node's own
    decoding of compressed images, then its one image conversion). ValueError naming the problem."""
    from stereo_depth_ros.image_conversion import image_to_rgb
    from stereo_depth_ros.inputs.compressed import compressed_to_image

    if msgtype == "sensor_msgs/msg/CompressedImage":
        return image_to_rgb(compressed_to_image(msg))
    return image_to_rgb(msg)


class BagReadError(Exception):
    """The bag cannot be read past some point (truncated or corrupt)."""


def open_reader(bag: Path) -> Any:
    from rosbags.highlevel import AnyReader

    if not bag.exists():
        raise CliError(f"bag {bag} does not exist")
    try:
        reader = AnyReader([bag])
        reader.open()
    except Exception as error:  # rosbags raises several types for damaged files; all mean the same to the user
        raise CliError(f"cannot open bag {bag}: {one_line(error)} (truncated, corrupt or not a rosbag2?)") from None
    return reader


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def find_connections(reader: Any, topic: str, types: tuple[str, ...], what: str) -> list[Any]:
    matches = [c for c in reader.connections if c.topic == topic]
    if not matches:
        available = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
        raise CliError(f"{what} topic {topic!r} is not in the bag; available topics: {', '.join(available) or 'none'}")
    bad = [c.msgtype for c in matches if c.msgtype not in types]
    if bad:
        raise CliError(f"{what} topic {topic!r} has type {bad[0]}, expected {' or '.join(types)}")
    return matches


def sibling_info_topic(reader: Any, image_topic: str) -> str | None:
    """The deepest `<namespace>/camera_info` CameraInfo topic among the image topic's parent namespaces."""
    infos = {c.topic for c in reader.connections if c.msgtype == CAMERA_INFO_TYPE}
    parts = image_topic.strip("/").split("/")
    for depth in range(len(parts) - 1, -1, -1):
        candidate = "/" + "/".join(parts[:depth] + ["camera_info"])
        if candidate in infos:
            return candidate
    return None


def iterate_messages(reader: Any, connections: list[Any], bag: Path) -> Iterator[tuple[Any, Any]]:
    """reader.messages() that turns any read or decode failure into BagReadError naming the bag."""
    count = 0
    iterator = reader.messages(connections=connections)
    while True:
        try:
            item = next(iterator)
            connection, _, raw = item
            msg = reader.deserialize(raw, connection.msgtype)
        except StopIteration:
            return
        except Exception as error:
            raise BagReadError(f"bag {bag} is truncated or corrupt after {count} messages: "
                               f"{one_line(error)}") from None
        count += 1
        yield connection, msg


def scan_stamps(reader: Any, bag: Path, left_conns: list[Any], right_conns: list[Any], info_conns: dict[str, Any]
                ) -> tuple[list[Frame], list[Frame], dict[str, Any], str | None]:
    """Pass 1: stamps of every image, first CameraInfo per side. Returns the read error (if any) instead of raising.

    A damaged region can also end the reader's iteration early without an error (mcap chunks after it are not
    found): the image counts are checked against the message counts the bag's own index lists.
    """
    left_ids = {c.id for c in left_conns}
    right_ids = {c.id for c in right_conns}
    frames: dict[str, list[Frame]] = {"left": [], "right": []}
    infos: dict[str, object] = {}
    error = None
    try:
        for connection, msg in iterate_messages(reader, [*left_conns, *right_conns, *info_conns.values()], bag):
            if connection.id in left_ids or connection.id in right_ids:
                side = "left" if connection.id in left_ids else "right"
                frames[side].append(Frame(len(frames[side]), stamp_ns(msg)))
            else:
                side = next(s for s, c in info_conns.items() if c.id == connection.id)
                infos.setdefault(side, msg)
    except BagReadError as read_error:
        error = str(read_error)
    if error is None:
        missing = [f"{conns[0].topic} {len(frames[side])} of {sum(c.msgcount for c in conns)}"
                   for side, conns in (("left", left_conns), ("right", right_conns))
                   if len(frames[side]) < sum(c.msgcount for c in conns)]
        if missing:
            error = (f"bag {bag} is damaged: only part of its messages could be read ({', '.join(missing)} "
                     "messages its index lists)")
    return frames["left"], frames["right"], infos, error
