"""Stamps as the input side uses them: integer nanoseconds, and the stamps no clock can give."""
from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000
LEFT, RIGHT = 0, 1
SIDES = ("left", "right")


def stamp_ns(msg: Any) -> int:
    """header.stamp of a message as integer nanoseconds."""
    stamp = msg.header.stamp
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_problem(msg: Any) -> str | None:
    """Why a message's header.stamp cannot be used (negative seconds, nanoseconds out of range), or None."""
    stamp = msg.header.stamp
    if int(stamp.sec) < 0:
        return f"negative stamp {int(stamp.sec)} s"
    if not 0 <= int(stamp.nanosec) < NS_PER_S:
        return f"stamp nanoseconds {int(stamp.nanosec)} outside 0..999999999"
    return None
