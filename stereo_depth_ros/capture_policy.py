"""When the node captures a pair for offline labelling, and when it must stop: ROS-free, thread-safe, clock given.

A pair is captured for the first of these reasons that holds:
- `trigger`: the ~/capture service asked for the next pair (it stays asked until a pair is queued, so a full queue
  does not lose the request);
- `confidence`: the pair's confident share (pixels with a valid disparity and a confidence at or above the
  threshold, over all pixels) is below `confidence_below` (0 = off);
- `periodic`: `every_s` seconds have passed since the last captured pair (0 = off).

Limits: `max_pairs` samples and `max_bytes` bytes of files in the folder, counting what the folder held when the
node started (0 = no limit). A pair is counted when it is queued, with a byte reserve that bounds its size
(`pair_reserve`), and settled to its real size once written, so that the folder never grows past `max_bytes`
however many pairs are in flight. Once a pair does not fit, capture stops for good (until a restart) and
`take_stop_message` hands out the one warning.
"""
from __future__ import annotations

import threading

TRIGGER, CONFIDENCE, PERIODIC = "trigger", "confidence", "periodic"
# The confidence a pixel needs to count as confident for capture_confidence_below when confidence_threshold is 0.
# Both confidences in the project read 0.5 as a coin flip; SGBM's is 1 / (1 + left-right disagreement in px), so
# 0.5 means the two views disagree by 1 px.
DEFAULT_CONFIDENT_AT = 0.5

# Besides the pixels: meta.json and, with the first pair, camera_info.yaml (about 2 KB together).
FILES_RESERVE = 8192


def pair_reserve(height: int, width: int, channels: int = 3) -> int:
    """Bytes a pair of width x height PNG images can take at most: the raw pixels plus PNG's worst case for
    incompressible pixels (a filter byte per row, a few bytes per deflate block: under 1 %) and the small files."""
    raw = height * width * channels
    return 2 * (raw + raw // 100 + height + 1024) + FILES_RESERVE


class CapturePolicy:
    """Decides per pair whether to capture it and keeps the folder's counts against the limits."""

    def __init__(self, *, confidence_below: float = 0.0, every_s: float = 0.0, max_pairs: int = 0,
                 max_bytes: int = 0, existing_pairs: int = 0, existing_bytes: int = 0) -> None:
        self.confidence_below, self.every_s = confidence_below, every_s
        self.max_pairs, self.max_bytes = max_pairs, max_bytes
        self.pairs, self.bytes = existing_pairs, existing_bytes  # in the folder, plus those queued (reserved)
        self.stopped = ""  # why capture stopped (a limit reached); "" while capturing
        self._stop_reported = False
        self._triggered = False
        self._last_capture: float | None = None
        self._lock = threading.Lock()
        if max_pairs and existing_pairs >= max_pairs:
            self._stop(f"capture_max_pairs ({max_pairs}) reached: the folder already holds {existing_pairs} pairs")
        elif max_bytes and existing_bytes >= max_bytes:
            self._stop(f"capture_max_megabytes ({max_bytes / 1e6:g}) reached: the folder already holds "
                       f"{existing_bytes / 1e6:.1f} MB")

    @property
    def wants_confidence(self) -> bool:
        return self.confidence_below > 0.0

    def trigger(self) -> tuple[bool, str]:
        """Ask for the next pair: (accepted, why not)."""
        with self._lock:
            if self.stopped:
                return False, f"capture stopped: {self.stopped}"
            self._triggered = True
            return True, ""

    def reason(self, now: float, confident_share: float | None) -> str | None:
        """Why this pair should be captured (TRIGGER, CONFIDENCE, PERIODIC), or None. confident_share: None when
        the pair was not judged (no inference ran)."""
        with self._lock:
            if self.stopped:
                return None
            if self._triggered:
                return TRIGGER
            if (self.confidence_below > 0.0 and confident_share is not None
                    and confident_share < self.confidence_below):
                return CONFIDENCE
            if self.every_s > 0.0 and (self._last_capture is None or now - self._last_capture >= self.every_s):
                return PERIODIC
            return None

    def reserve(self, reason: str, reserve_bytes: int, now: float) -> bool:
        """Count a pair about to be queued; False when it would pass a limit (capture then stops)."""
        with self._lock:
            if self.stopped:
                return False
            if self.max_pairs and self.pairs + 1 > self.max_pairs:
                self._stop(f"capture_max_pairs ({self.max_pairs}) reached")
                return False
            if self.max_bytes and self.bytes + reserve_bytes > self.max_bytes:
                self._stop(f"capture_max_megabytes ({self.max_bytes / 1e6:g}) reached: {self.bytes / 1e6:.1f} MB "
                           f"in the folder, the next pair may take up to {reserve_bytes / 1e6:.1f} MB")
                return False
            self.pairs += 1
            self.bytes += reserve_bytes
            self._last_capture = now
            if reason == TRIGGER:
                self._triggered = False
            return True

    def release(self, reason: str, reserve_bytes: int, retry: bool) -> None:
        """A reserved pair that was not written: uncount it. retry: a trigger stays asked (the queue was full;
        after a failed write it does not, or a broken disk would be retried on every pair)."""
        with self._lock:
            self.pairs -= 1
            self.bytes -= reserve_bytes
            if reason == TRIGGER and retry:
                self._triggered = True

    def settle(self, reserve_bytes: int, written_bytes: int) -> None:
        """A reserved pair was written: replace its reserve by the bytes it really took."""
        with self._lock:
            self.bytes += written_bytes - reserve_bytes

    def take_stop_message(self) -> str | None:
        """The reason capture stopped, the first time it is asked after stopping (one warning); else None."""
        with self._lock:
            if not self.stopped or self._stop_reported:
                return None
            self._stop_reported = True
            return self.stopped

    def _stop(self, why: str) -> None:
        self.stopped = why
