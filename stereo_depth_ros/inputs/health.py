"""Input health, said out loud: what reaches the node on each input topic, whether pairs form, and why not.

ROS-free. The node feeds it every message that arrives (`received`), what the ROS graph says about each topic's
publishers (`publishers`, polled), transport losses the middleware reports (`lost`) and the counters of the
synchroniser and the pipeline (`pairs`); `problems(now)` names what is wrong, each problem a (key, message) the
node logs as a throttled WARN and puts in /diagnostics at level WARN; `snapshot(now)` gives the per-topic figures.

The problems, checked over the last `window` seconds once the node has run `grace` seconds (so a WARN comes within
about 10 s of the problem starting):
- no publisher on an input topic (named as remapped);
- publishers matched but nothing, or much less than on the other side (or than the same side's camera_info),
  arrives: the likely cause is named; large messages over a best-effort link is the common one;
- images arrive on both sides but no pair forms: the measured left-right stamp offset, and the sync setting that
  would pair them;
- pairs form but every one is rejected: the last reason.
A healthy stream gives no problem.
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from stereo_depth_ros.diagnostics import EventWindow
from stereo_depth_ros.inputs.stamps import NS_PER_S

LEFT_IMAGE, RIGHT_IMAGE, LEFT_INFO, RIGHT_INFO = "left image", "right image", "left camera_info", "right camera_info"
ROLES = (LEFT_IMAGE, RIGHT_IMAGE, LEFT_INFO, RIGHT_INFO)
OTHER_SIDE = {LEFT_IMAGE: RIGHT_IMAGE, RIGHT_IMAGE: LEFT_IMAGE}
SAME_SIDE_INFO = {LEFT_IMAGE: LEFT_INFO, RIGHT_IMAGE: RIGHT_INFO}
DOCS = "docs/node.md, section 'Camera drivers and transport'"
# Fast DDS's default shared-memory segment: larger messages go over UDP in fragments on default transports.
FASTDDS_DEFAULT_SHM_BYTES = 512 * 1024
# A side receiving less than this share of the other side's rate is "much less".
MUCH_LESS = 0.5
STAMPS_KEPT = 50


@dataclass
class TopicHealth:
    """What one input topic has seen."""

    topic: str
    received: int = 0
    lost: int = 0  # losses the middleware reported (message_lost events)
    publishers: int = 0
    best_effort_publishers: int = 0
    last_size: int = 0  # bytes of the last message's payload
    matched_since: float | None = None  # when the current publishers were first seen (or the subscription renewed)
    note: str = ""  # what the node adds to a no-publisher warning (e.g. raw images on the compressed base topic)
    window: EventWindow = field(default_factory=lambda: EventWindow(5.0, keep=2, max_age=5.0))
    stamps: deque = field(default_factory=lambda: deque(maxlen=STAMPS_KEPT))  # (arrival, stamp ns)


@dataclass
class PairCounters:
    """Cumulative counters from the synchroniser and the pipeline (what `InputHealth.pairs` takes)."""

    formed: int = 0
    unpaired_left: int = 0
    unpaired_right: int = 0
    rejected: int = 0
    processed: int = 0
    last_problem: str = ""


class InputHealth:
    """topics: role (ROLES) -> topic name as the node resolved it (after remapping). approximate and
    tolerance_s: the sync settings (for the advice); window: seconds looked back; grace: seconds after start
    before anything is judged; clock: monotonic seconds; profile: the Fast DDS profile's path, named in the
    remedy for best-effort losses."""

    def __init__(self, topics: dict[str, str], approximate: bool = False, tolerance_s: float = 0.0,
                 window: float = 5.0, grace: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 profile: str = "config/fastdds_shm.xml") -> None:
        self.topics = {role: TopicHealth(topics[role], window=EventWindow(window, keep=2, max_age=window))
                       for role in ROLES}
        self.approximate, self.tolerance_s = approximate, tolerance_s
        self.profile = profile  # the Fast DDS profile's path, for the remedy
        self.window, self.grace, self._clock = window, grace, clock
        self._start = clock()
        self._pairs: deque[tuple[float, PairCounters]] = deque()
        self._latest = PairCounters()

    # -- inputs ------------------------------------------------------------------------------------------
    def received(self, role: str, stamp_ns: int | None, size_bytes: int = 0, now: float | None = None) -> None:
        """One message on `role`'s topic; stamp_ns None for a stamp no clock gives."""
        topic = self.topics[role]
        now = self._clock() if now is None else now
        topic.received += 1
        topic.last_size = size_bytes or topic.last_size
        topic.window.add(now=now)
        if stamp_ns is not None:
            topic.stamps.append((now, stamp_ns))

    def publishers(self, role: str, count: int, best_effort: int, note: str = "", now: float | None = None) -> None:
        """What the graph says about `role`'s topic. `note`: added to the no-publisher warning."""
        topic = self.topics[role]
        if count and not topic.publishers:
            topic.matched_since = self._clock() if now is None else now
        elif not count:
            topic.matched_since = None
        topic.publishers, topic.best_effort_publishers = count, best_effort
        topic.note = note

    def resubscribed(self, role: str, now: float | None = None) -> None:
        """The node re-created `role`'s subscription: what arrives is judged afresh, a window from now."""
        topic = self.topics[role]
        if topic.publishers:
            topic.matched_since = self._clock() if now is None else now

    def _settled(self, role: str, now: float) -> bool:
        """Publishers matched for a whole window: long enough to judge what arrives from them."""
        since = self.topics[role].matched_since
        return since is not None and now - since >= self.window

    def lost(self, role: str, count: int) -> None:
        self.topics[role].lost += max(0, int(count))

    def pairs(self, counters: PairCounters, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self._latest = counters
        self._pairs.append((now, counters))
        while len(self._pairs) > 2 and now - self._pairs[1][0] >= self.window:
            self._pairs.popleft()

    # -- figures -------------------------------------------------------------------------------------------
    def _recent(self, role: str, now: float) -> int:
        """Messages of the last window (0 when the newest is older than the window)."""
        return len(self.topics[role].window.values(now))

    def _pair_change(self) -> PairCounters:
        """Counters gained over the kept samples (about one window)."""
        if len(self._pairs) < 2:
            return PairCounters()
        (_, old), (_, new) = self._pairs[0], self._pairs[-1]
        return PairCounters(new.formed - old.formed, new.unpaired_left - old.unpaired_left,
                            new.unpaired_right - old.unpaired_right, new.rejected - old.rejected,
                            new.processed - old.processed, new.last_problem)

    def stamp_offset_s(self, now: float | None = None) -> float | None:
        """Median of (each left stamp - the nearest right stamp) over the images of the last window, seconds;
        None without both."""
        now = self._clock() if now is None else now
        left, right = ([stamp for arrived, stamp in self.topics[role].stamps if now - arrived <= self.window]
                       for role in (LEFT_IMAGE, RIGHT_IMAGE))
        if not left or not right:
            return None
        offsets = [t - min(right, key=lambda r: abs(r - t)) for t in left]
        return statistics.median(offsets) / NS_PER_S

    def snapshot(self, now: float | None = None) -> dict[str, float | int | str]:
        """Per-topic figures and the pair counters, for /diagnostics."""
        now = self._clock() if now is None else now
        snap: dict[str, float | int | str] = {}
        for role, topic in self.topics.items():
            key = role.replace(" ", "_")
            snap[f"{key}_topic"] = topic.topic
            snap[f"{key}_rate_hz"] = topic.window.rate(now)
            snap[f"{key}_received"] = topic.received
            snap[f"{key}_publishers"] = topic.publishers
            if topic.lost:
                snap[f"{key}_lost"] = topic.lost
        latest = self._latest
        snap["complete_pairs"] = latest.formed
        snap["incomplete_pairs"] = max(latest.unpaired_left, latest.unpaired_right)
        return snap

    # -- verdict -------------------------------------------------------------------------------------------
    def problems(self, now: float | None = None) -> list[tuple[str, str]]:
        """(key, message) for each problem found now; empty for a healthy stream (see the module docstring)."""
        now = self._clock() if now is None else now
        if now - self._start < self.grace:
            return []
        found: list[tuple[str, str] | None] = [self._no_publisher(role) for role in ROLES
                                               if self.topics[role].publishers == 0]
        found += [self._starved(role, now) for role in (LEFT_IMAGE, RIGHT_IMAGE)] + [self._nothing_arrives(now)]
        found += [self._info_starved(role, now) for role in (LEFT_INFO, RIGHT_INFO)]
        found += [self._no_pairs(now), self._all_rejected()]
        return [problem for problem in found if problem is not None]

    def _no_publisher(self, role: str) -> tuple[str, str]:
        health = self.topics[role]
        need = " (depth and points need it)" if "camera_info" in role else ""
        side, kind = role.split()[0], "image" if "image" in role else "camera_info"
        remap = f"{side}/image_rect" if kind == "image" else f"{side}/camera_info"
        note = f"; {health.note}" if health.note else ""
        return (f"no_publisher:{role}", f"no publisher on {health.topic} ({role}){need}: is the camera driver "
                f"running, and does its topic have this name? (`ros2 topic list`; remap it: the launch argument "
                f"{side}_{kind}:=<driver's topic>, or -r {remap}:=<driver's topic> on the node's command line)"
                + note)

    def _cause(self, role: str) -> str:
        topic = self.topics[role]
        size = topic.last_size or max((t.last_size for t in self.topics.values()), default=0)
        large = size > FASTDDS_DEFAULT_SHM_BYTES
        lost = f" the middleware reported {topic.lost} lost;" if topic.lost else ""
        if topic.best_effort_publishers:
            what = f"large messages ({size / 1024:.0f} KiB)" if large else "messages"
            return (f"likely cause:{lost} {what} over a best-effort link: with Fast DDS's default transports "
                    "they travel over UDP in fragments, and one lost fragment loses the message. Remedy: have the "
                    "driver publish reliable (the node then subscribes reliable), or run it under the same Fast DDS "
                    f"profile ({self.profile}), e.g. from the node's launch file; see {DOCS}")
        return (f"likely cause:{lost} the driver publishes less on this topic, or this host is overloaded "
                f"(`ros2 topic hz {topic.topic}`); see {DOCS}")

    def _starved(self, role: str, now: float) -> tuple[str, str] | None:
        """One image side gets much less than the other side, or than its own camera_info (small messages that
        get through where large ones do not)."""
        topic, other, info = self.topics[role], self.topics[OTHER_SIDE[role]], self.topics[SAME_SIDE_INFO[role]]
        mine = self._recent(role, now)
        versus = max((self._recent(OTHER_SIDE[role], now), other.topic),
                     (self._recent(SAME_SIDE_INFO[role], now), f"its camera_info {info.topic}"))
        if not self._settled(role, now) or versus[0] < 3 or mine >= MUCH_LESS * versus[0]:
            return None
        hz = 1.0 / self.window
        return (f"starved:{role}", f"{role}: {mine * hz:.1f} Hz arrive on {topic.topic}, against "
                f"{versus[0] * hz:.1f} Hz on {versus[1]}; {self._cause(role)}")

    def _nothing_arrives(self, now: float) -> tuple[str, str] | None:
        """Publishers on both image topics, and nothing at all arrives."""
        left, right = self.topics[LEFT_IMAGE], self.topics[RIGHT_IMAGE]
        if not (self._settled(LEFT_IMAGE, now) and self._settled(RIGHT_IMAGE, now)) or \
                any(self._recent(role, now) for role in ROLES):
            return None
        return ("nothing_arrives", f"publishers are matched on {left.topic} and {right.topic} but nothing "
                f"arrives; {self._cause(LEFT_IMAGE)}")

    def _info_starved(self, role: str, now: float) -> tuple[str, str] | None:
        topic = self.topics[role]
        image = LEFT_IMAGE if role == LEFT_INFO else RIGHT_IMAGE
        if not self._settled(role, now) or self._recent(role, now) or self._recent(image, now) < 3:
            return None
        return (f"nothing_arrives:{role}", f"{role}: publishers are matched on {topic.topic} but nothing arrives "
                f"while images do (depth and points need it); {self._cause(role)}")

    def _no_pairs(self, now: float) -> tuple[str, str] | None:
        left, right = self._recent(LEFT_IMAGE, now), self._recent(RIGHT_IMAGE, now)
        change = self._pair_change()
        if left < 3 or right < 3 or change.formed > 0 or len(self._pairs) < 2:
            return None
        offset = self.stamp_offset_s(now)
        measured = "" if offset is None else f"left stamps are {offset * 1e3:+.1f} ms from the nearest right ones"
        period = self.window / left
        suggest = 0.0 if offset is None else min(max(2 * abs(offset), 0.001), period / 2)
        if not self.approximate:
            advice = (f"exact sync needs equal stamps; set approximate_sync:=true with "
                      f"approximate_sync_tolerance_seconds:={suggest:.3f}")
        else:
            advice = (f"that is beyond approximate_sync_tolerance_seconds {self.tolerance_s:g}; raise it to "
                      f"{suggest:.3f} or check that the cameras are synchronised")
        return ("no_pairs", f"images arrive on both sides ({left} left, {right} right in {self.window:.0f} s) but "
                f"no pair forms: {measured or 'stamps differ'}; {advice}")

    def _all_rejected(self) -> tuple[str, str] | None:
        change = self._pair_change()
        if change.formed == 0 or change.processed > 0 or change.rejected == 0:
            return None
        return ("all_rejected", f"every pair that forms is rejected ({change.rejected} in {self.window:.0f} s); "
                f"the last: {change.last_problem or 'see the warnings above'}")
