"""Stereo synchroniser with stereo_image_proc's policies and parameters, ROS-free at import time.

Offers `StereoSynchronizer(callback, approximate=False, tolerance_seconds=0.0, queue_size=5,
implementation="auto")` with four inputs, `add_left_image`, `add_right_image`, `add_left_info`,
`add_right_info`, calling `callback(StereoFrame)` for each synchronised pair; `SyncStats` counters; and
`message_filters_available()`.

Policies (parameter names and defaults of stereo_image_proc's disparity node):
- exact (`approximate_sync: false`): left and right image stamps are equal.
- approximate (`approximate_sync: true`): stamps differ by less than `approximate_sync_tolerance_seconds`;
  0 means no bound (stereo_image_proc then uses message_filters' unbounded ApproximateTime policy). Each arriving
  image is paired with the closest waiting image of the other side.
- `queue_size`: images kept per side while waiting for a partner (the earliest arrival goes first).

The image pair is matched by `message_filters` (TimeSynchronizer / ApproximateTimeSynchronizer fed through plain
SimpleFilter inputs, no node needed) when it is importable, otherwise by a small equivalent here with the same
rules; `implementation="message_filters" | "builtin"` picks one explicitly. After a match both drop the images
older than it (message_filters would keep and could still pair them), so both give the same pairs
(tests/test_sync.py checks this on messy streams). On top of either:
- Output is strictly increasing in time: images not newer than the last pair (late, out of order, duplicated)
  are dropped and counted, so a replayed or reordered stream never produces a pair twice or backwards.
- camera_info is matched to the pair by stamp with the same policy, but kept out of the image match so that a
  camera without camera_info still yields disparity (stereo_image_proc would wait forever). A pair waits for its
  camera_info until the next pair is ready or `info_wait_seconds` (default 0.5 s) have passed, then goes out with
  whatever matched (the matchers are in `matchers`, stamp helpers in `stamps`). A side whose exact camera_info is
  late or lost gets the newest camera_info of that side instead (a calibration does not change from frame to frame;
  counted as `reused_info`): a reliable link that repairs a lost camera_info a second later, or a best-effort one
  that loses it, still gives depth. Only a side that has sent no camera_info at all goes out with None (counted as
  `missing_info`). The first pairs of a stream also wait for a side that has not sent camera_info yet
  (image_transport's CameraPublisher sends the image first), during `info_wait_seconds` from the first pair; after
  that a side that never sent camera_info is not waited for. Deadlines need `poll()` to be called now and then (the
  node does, on a steady timer).
- Stamps far ahead cannot poison the state: full queues evict the earliest *arrival* (not the smallest stamp,
  which would evict every real image behind a few stamped in the future), with a warning naming a stamp dropped
  unpaired far ahead of the stream; and an image stamped more than `JUMP_BACK_S` behind the last pair (a clock
  reset, a bag played again, or a pair stamped in the future) restarts the ordering with a warning instead of
  being dropped as out of order forever.
- Stamps that no clock can give (negative seconds, nanoseconds >= 1e9) are dropped and counted
  (`invalid_stamps`) with a warning: message_filters would raise on them (rclpy's Time refuses negative
  seconds), and they cannot be ordered.
- Images that leave the queues without a partner (pushed out of a full queue, or older than a pair that formed)
  are counted per side (`unpaired`): with the images received, that is how the node tells a stream whose stamps
  never match from one that pairs.
Everything is bounded: queue_size images and camera_infos per side and one waiting pair.

The callback runs inside `add_*` under the synchroniser's lock: keep it short (hand the frame to a worker).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from stereo_depth_ros.inputs.matchers import (BuiltinPairMatcher, MessageFiltersPairMatcher,
                                              message_filters_available)
from stereo_depth_ros.inputs.stamps import LEFT, NS_PER_S, RIGHT, SIDES, stamp_ns, stamp_problem

__all__ = ["StereoFrame", "StereoSynchronizer", "SyncStats", "message_filters_available", "stamp_ns",
           "stamp_problem"]


DEFAULT_INFO_WAIT_S = 0.5
# An image this far behind the last pair is a jump of the stream's clock, not an out-of-order image.
JUMP_BACK_S = 2.0
# An unpaired message evicted this far ahead of the newest arrival is reported (stamped in the future).
FUTURE_S = 1.0


class StereoFrame(NamedTuple):
    """One synchronised stereo pair. Infos are None when no matching camera_info arrived."""

    left_image: Any
    right_image: Any
    left_info: Any
    right_info: Any

    @property
    def stamp_ns(self) -> int:
        return stamp_ns(self.left_image)


@dataclass
class SyncStats:
    """Counters since construction. pairs: frames delivered; dropped_stale: images dropped as not newer than the
    last pair (out of order, duplicated, late); missing_info: pairs delivered with no camera_info on a side that
    sends it (none seen yet); reused_info: pairs that got their side's newest camera_info because the one with
    their stamp did not come in time; invalid_stamps: messages dropped for a stamp no clock gives; unpaired:
    images per side (left, right) that left the queues without a partner."""

    pairs: int = 0
    dropped_stale: int = 0
    missing_info: int = 0
    reused_info: int = 0
    invalid_stamps: int = 0
    unpaired: list[int] = field(default_factory=lambda: [0, 0])


class StereoSynchronizer:
    """Pairs left/right images (and their camera_info) by stamp; see the module docstring for the rules.

    callback: called with a StereoFrame per pair. approximate, tolerance_seconds, queue_size: stereo_image_proc's
    `approximate_sync`, `approximate_sync_tolerance_seconds` (0 = unbounded), `queue_size`.
    implementation: "auto" (message_filters when importable), "message_filters" or "builtin".
    info_wait_seconds: longest wait of a pair for its camera_info (see the module docstring); warn(kind, message):
    called for stamps that had to be dropped or reset (the node throttles and logs them); clock: monotonic seconds.
    """

    def __init__(self, callback: Callable[[StereoFrame], None], approximate: bool = False,
                 tolerance_seconds: float = 0.0, queue_size: int = 5, implementation: str = "auto",
                 info_wait_seconds: float = DEFAULT_INFO_WAIT_S,
                 warn: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if not tolerance_seconds >= 0.0:
            raise ValueError(f"approximate_sync_tolerance_seconds must be >= 0, got {tolerance_seconds}")
        if implementation == "auto":
            implementation = "message_filters" if message_filters_available()[0] else "builtin"
        matchers: dict[str, type[BuiltinPairMatcher] | type[MessageFiltersPairMatcher]] = {
            "builtin": BuiltinPairMatcher, "message_filters": MessageFiltersPairMatcher}
        if implementation not in matchers:
            raise ValueError(f"unknown synchroniser implementation {implementation!r}; expected auto, "
                             "message_filters or builtin")
        self.implementation = implementation
        self.approximate = bool(approximate)
        self.queue_size = int(queue_size)
        self._slop_ns = int(round(tolerance_seconds * NS_PER_S)) if tolerance_seconds > 0 else None
        self._callback = callback
        self._lock = threading.RLock()
        self._matcher = matchers[implementation](self._on_pair, self.approximate, self._slop_ns, self.queue_size,
                                                 self._count_unpaired)
        self._last = (-1, -1)  # stamps (left, right) of the last pair delivered
        self._infos: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        self._info_seen = [False, False]
        self._newest_info: list[Any] = [None, None]  # the last camera_info that arrived per side
        self._pending: tuple[Any, Any] | None = None
        self._pending_deadline = 0.0
        self._first_pair_time: float | None = None
        self._info_wait = max(0.0, float(info_wait_seconds))
        self._warn = warn or (lambda kind, message: None)
        self._clock = clock
        self.stats = SyncStats()

    # -- inputs ---------------------------------------------------------------------------------------------
    def add_left_image(self, msg: Any) -> None:
        self._add_image(LEFT, msg)

    def add_right_image(self, msg: Any) -> None:
        self._add_image(RIGHT, msg)

    def add_left_info(self, msg: Any) -> None:
        self._add_info(LEFT, msg)

    def add_right_info(self, msg: Any) -> None:
        self._add_info(RIGHT, msg)

    # -- internals ------------------------------------------------------------------------------------------
    def _count_unpaired(self, side: int) -> None:
        self.stats.unpaired[side] += 1

    def _valid_stamp(self, msg: Any, what: str) -> bool:
        problem = stamp_problem(msg)
        if problem is not None:
            self.stats.invalid_stamps += 1
            self._warn("stamp:invalid", f"{what} dropped: {problem}")
        return problem is None

    def _add_image(self, side: int, msg: Any) -> None:
        with self._lock:
            if not self._valid_stamp(msg, f"{SIDES[side]} image"):
                return
            t = stamp_ns(msg)
            last = self._last[side]
            if t <= last:
                if last - t <= JUMP_BACK_S * NS_PER_S:
                    self.stats.dropped_stale += 1
                    what = "duplicated" if t == last else "out-of-order"
                    self._warn(f"stamp:{what}", f"{SIDES[side]} image dropped, {what} stamp {t / NS_PER_S:.9f} s "
                               f"(last pair {last / NS_PER_S:.9f} s); {self.stats.dropped_stale} stale images so far")
                    return
                self._warn("stamp:jump", f"{SIDES[side]} image stamped {t / NS_PER_S:.9f} s is "
                           f"{(last - t) / NS_PER_S:.3f} s behind the last pair ({last / NS_PER_S:.9f} s): the "
                           "stream's time jumped back (clock reset, bag replayed, or a pair stamped in the future); "
                           "restarting the pairing")
                self._last = (-1, -1)
            self._evict_report(self._matcher_queue(side), t, f"{SIDES[side]} image")
            self._matcher.add(side, msg)

    def _matcher_queue(self, side: int) -> dict[int, Any] | None:
        queues = getattr(self._matcher, "_queues", None)
        if queues is None:
            queues = getattr(getattr(self._matcher, "_sync", None), "queues", None)
        return queues[side] if isinstance(queues, (list, tuple)) and isinstance(queues[side], dict) else None

    def _evict_report(self, queue: dict[int, Any] | None, t: int, what: str) -> None:
        """Warn when adding stamp t to a full queue evicts an entry stamped far ahead of it (it never paired)."""
        if not queue or len(queue) < self.queue_size or t in queue:
            return
        victim = next(iter(queue))
        if victim - t > FUTURE_S * NS_PER_S:
            self._warn("stamp:future", f"{what} stamped {victim / NS_PER_S:.9f} s dropped unpaired: "
                       f"{(victim - t) / NS_PER_S:.3f} s ahead of the stream (stamped in the future?)")

    def _add_info(self, side: int, msg: Any) -> None:
        with self._lock:
            if not self._valid_stamp(msg, f"{SIDES[side]} camera_info"):
                return
            cache = self._infos[side]
            t = stamp_ns(msg)
            cache.pop(t, None)
            self._evict_report(cache, t, f"{SIDES[side]} camera_info")
            cache[t] = msg
            while len(cache) > self.queue_size:
                del cache[next(iter(cache))]  # earliest arrival, as for images
            self._info_seen[side] = True
            self._newest_info[side] = msg
            if self._pending is not None:
                infos = self._match_infos(*self._pending)
                if self._complete(infos):
                    pair, self._pending = self._pending, None
                    self._deliver(pair, infos)

    def poll(self) -> None:
        """Release a pair whose wait for camera_info is over (call it now and then, e.g. every 50 ms)."""
        with self._lock:
            if self._pending is not None and self._clock() >= self._pending_deadline:
                pair, self._pending = self._pending, None
                self._deliver(pair, self._match_infos(*pair))

    def _on_pair(self, left: Any, right: Any) -> None:
        # Called by the matcher, inside _add_image, so under the lock.
        stamps = (stamp_ns(left), stamp_ns(right))
        if stamps[LEFT] <= self._last[LEFT] or stamps[RIGHT] <= self._last[RIGHT]:
            # message_filters keeps older messages after a match; a later partner would pair them backwards.
            self.stats.dropped_stale += 1
            self._warn("stamp:late", f"pair stamped {stamps[LEFT] / NS_PER_S:.9f} s dropped, late: older than the "
                       f"last pair; {self.stats.dropped_stale} stale images so far")
            return
        self._last = stamps
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._deliver(pending, self._match_infos(*pending))
        now = self._clock()
        if self._first_pair_time is None:
            self._first_pair_time = now
        infos = self._match_infos(left, right)
        if self._complete(infos, now):
            self._deliver((left, right), infos)
        else:
            self._pending = (left, right)
            self._pending_deadline = now + self._info_wait

    def _match_info(self, side: int, t: int) -> Any:
        cache = self._infos[side]
        if not self.approximate:
            return cache.get(t)
        best = None
        for s in cache:
            delta = abs(s - t)
            if (self._slop_ns is None or delta < self._slop_ns) and (best is None or delta < abs(best - t)):
                best = s
        return None if best is None else cache[best]

    def _match_infos(self, left: Any, right: Any) -> tuple[Any, Any]:
        return self._match_info(LEFT, stamp_ns(left)), self._match_info(RIGHT, stamp_ns(right))

    def _complete(self, infos: tuple[Any, Any], now: float | None = None) -> bool:
        """Nothing more to wait for: each side matched, or never sent camera_info and the stream's first
        `info_wait_seconds` are over."""
        if now is None:
            now = self._clock()
        start = self._first_pair_time
        waiting_for_first = start is not None and now < start + self._info_wait
        return all(info is not None or (not seen and not waiting_for_first)
                   for info, seen in zip(infos, self._info_seen, strict=True))

    def _deliver(self, pair: tuple[Any, Any], infos: tuple[Any, Any]) -> None:
        if any(info is None and newest is not None for info, newest in zip(infos, self._newest_info, strict=True)):
            infos = tuple(info if info is not None else newest
                          for info, newest in zip(infos, self._newest_info, strict=True))
            self.stats.reused_info += 1
        if not self._complete(infos):
            self.stats.missing_info += 1
        self.stats.pairs += 1
        self._callback(StereoFrame(pair[0], pair[1], infos[0], infos[1]))

    def pending(self) -> bool:
        """True while a pair is waiting for its camera_info."""
        with self._lock:
            return self._pending is not None
