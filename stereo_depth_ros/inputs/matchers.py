"""The two-input image matchers behind `sync.StereoSynchronizer`: message_filters' synchronisers and a builtin
equivalent with the same exact/approximate rules (`sync`'s docstring says what both do on top of
message_filters). Each takes `add(side, msg)` and calls `on_pair(left, right)` for a match and
`on_unpaired(side)` for each image that leaves its queue without a partner.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stereo_depth_ros.inputs.stamps import LEFT, NS_PER_S, stamp_ns

# message_filters needs a finite slop; stereo_image_proc's "0 = unbounded" becomes this many seconds.
UNBOUNDED_SLOP_S = 1.0e6


def message_filters_available() -> tuple[bool, str]:
    """(True, "") when the real message_filters can be used, else (False, why)."""
    try:
        import message_filters  # noqa: F401  (imports rclpy)
    except Exception as exc:  # ImportError, or rclpy failing to load its libraries
        return False, f"message_filters is not importable ({type(exc).__name__}: {exc})"
    return True, ""


class BuiltinPairMatcher:
    """Two-input exact/approximate matcher with message_filters' rules (see the module docstring)."""

    def __init__(self, on_pair: Callable[[Any, Any], None], approximate: bool, slop_ns: int | None,
                 queue_size: int, on_unpaired: Callable[[int], None]) -> None:
        self._on_pair = on_pair
        self._on_unpaired = on_unpaired
        self._approximate = approximate
        self._slop_ns = slop_ns
        self._queue_size = queue_size
        self._queues: tuple[dict[int, Any], dict[int, Any]] = ({}, {})

    def add(self, side: int, msg: Any) -> None:
        t = stamp_ns(msg)
        mine, other = self._queues[side], self._queues[1 - side]
        mine.pop(t, None)  # a duplicate stamp replaces the waiting message and becomes the newest entry
        mine[t] = msg
        while len(mine) > self._queue_size:
            del mine[next(iter(mine))]  # earliest arrival (see the module docstring)
            self._on_unpaired(side)
        if self._approximate:
            best = None
            for s in other:
                delta = abs(s - t)
                if (self._slop_ns is None or delta < self._slop_ns) and (best is None or delta < abs(best - t)):
                    best = s
        else:
            best = t if t in other else None
        if best is None:
            return
        mine_msg, other_msg = mine.pop(t), other.pop(best)
        # Anything older than a matched pair could only pair backwards in time: let it go now.
        for queue_side, queue, limit in ((side, mine, t), (1 - side, other, best)):
            for s in [s for s in queue if s < limit]:
                del queue[s]
                self._on_unpaired(queue_side)
        if side == LEFT:
            self._on_pair(mine_msg, other_msg)
        else:
            self._on_pair(other_msg, mine_msg)


class MessageFiltersPairMatcher:
    """The real message_filters synchronisers, fed through SimpleFilter inputs (no node or subscription)."""

    def __init__(self, on_pair: Callable[[Any, Any], None], approximate: bool, slop_ns: int | None,
                 queue_size: int, on_unpaired: Callable[[int], None]) -> None:
        import message_filters

        self._inputs = (message_filters.SimpleFilter(), message_filters.SimpleFilter())
        if approximate:
            slop_s = UNBOUNDED_SLOP_S if slop_ns is None else slop_ns / NS_PER_S
            sync = message_filters.ApproximateTimeSynchronizer(list(self._inputs), queue_size, slop_s)
        else:
            sync = message_filters.TimeSynchronizer(list(self._inputs), queue_size)
        sync.registerCallback(self._matched)
        self._sync = sync
        self._queue_size = queue_size
        self._on_pair = on_pair
        self._on_unpaired = on_unpaired

    def _matched(self, left: Any, right: Any) -> None:
        # message_filters keeps the messages older than a match until the queue pushes them out, and could still
        # pair them (backwards in time). Its queues are plain {stamp_ns: msg} dicts (`queues`, one per input, the
        # same since ROS 1): drop the older entries as the builtin matcher does, so both behave identically.
        queues = getattr(self._sync, "queues", None)
        if isinstance(queues, list) and len(queues) == 2 and all(isinstance(q, dict) for q in queues):
            for side, (queue, limit) in enumerate(zip(queues, (stamp_ns(left), stamp_ns(right)), strict=True)):
                for s in [s for s in queue if s < limit]:
                    del queue[s]
                    self._on_unpaired(side)
        self._on_pair(left, right)

    def add(self, side: int, msg: Any) -> None:
        queues = getattr(self._sync, "queues", None)
        if isinstance(queues, list) and len(queues) == 2 and isinstance(queues[side], dict):
            # message_filters evicts the smallest stamp from a full queue; evict the earliest arrival first, as the
            # builtin matcher does, so that images stamped far ahead cannot push out every real one.
            queue, t = queues[side], stamp_ns(msg)
            queue.pop(t, None)
            while len(queue) >= self._queue_size:
                del queue[next(iter(queue))]
                self._on_unpaired(side)
        self._inputs[side].signalMessage(msg)
