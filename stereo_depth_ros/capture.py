"""Hard-pair capture for offline labelling, ROS-free: the node offers each pair, a background writer saves some.

    capture = HardPairCapture.open("captures", confidence_below=0.5, every_s=60, max_pairs=1000, max_megabytes=1000)
    capture.offer(left, right, infos, confident_share, meta)   # per pair, from the inference thread; never blocks
    capture.trigger()                                           # the ~/capture service: the next pair
    capture.counters()                                          # for /diagnostics
    capture.close()

`capture_policy.CapturePolicy` decides which pairs and enforces the limits; `CaptureWriter` writes them, in its own
thread behind a bounded queue, as samples of the project's dataset layout (`dataset_layout`: DATA/<sample>/left.png,
right.png, meta.json and DATA/camera_info.yaml), each made visible at once by a rename. So `stereo-distill label
DATA --teacher ...` works on the folder as it is. The caller's thread only decides and enqueues references to the
received images (no copy, no conversion): when the queue is full the pair is dropped and counted, never waited for.

Sample names are `<sequence:08d>_<left stamp ns>`: the sequence continues from the largest one in the folder, so
names sort in capture order and never collide across restarts (also when a replayed bag repeats stamps).
"""
from __future__ import annotations

import datetime
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stereo_depth_ros.capture_policy import CapturePolicy, pair_reserve
from stereo_depth_ros.dataset_layout import (CAMERA_INFO_FILE, DatasetError, camera_info_to_dict, folder_bytes,
                                             read_camera_info, remove_staging, sample_names, write_camera_info,
                                             write_sample)
from stereo_depth_ros.image_conversion import image_to_rgb

# Pairs waiting for the writer: enough to ride out a slow write or two, few enough to bound memory (each holds the
# two received images: 1.8 MB at 640x480 rgb8).
QUEUE_PAIRS = 4
# The writer thread runs at the lowest priority (Linux: per thread): PNG encoding takes the CPU inference leaves
# idle; on a saturated CPU it falls behind and the full queue drops pairs (counted) instead of slowing inference.
WRITER_NICENESS = 19
_SEQUENCE = re.compile(r"^(\d+)_")


class CaptureError(ValueError):
    """The capture folder cannot be used (not creatable, not writable); the message names it."""


@dataclass
class CaptureJob:
    """One pair on its way to disk: the images as received (Image messages or uint8 RGB arrays)."""

    left: Any
    right: Any
    infos: tuple[Any, Any] | None
    reason: str
    reserve: int  # bytes counted against capture_max_megabytes until written
    meta: dict


def _size(image: Any) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    return int(image.height), int(image.width)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _rgb(image: Any) -> np.ndarray:
    return image if isinstance(image, np.ndarray) else image_to_rgb(image)


class CaptureWriter:
    """Writes queued pairs as samples of `root`, in order, in a background thread. `submit` never blocks.

    done(job, name, written_bytes, error) is called from the writer thread after each job: name and bytes on
    success, error (one line) on failure.
    """

    def __init__(self, root: Path, *, first_index: int, done: Callable[[CaptureJob, str, int, str], None],
                 queue_size: int = QUEUE_PAIRS, warn: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self.next_index = first_index
        self._done = done
        self._warn = warn if warn is not None else (lambda kind, message: None)
        self._queue: queue.Queue[CaptureJob] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._infos_seen: tuple[dict, dict] | None = None
        self._thread = threading.Thread(target=self._run, name="stereo_depth_capture", daemon=True)
        self._thread.start()

    def submit(self, job: CaptureJob) -> bool:
        """Queue a pair; False (nothing queued) when the queue is full or the writer is closing."""
        if self._closing.is_set():
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within `timeout`), then stop. A pair cut short leaves no visible sample."""
        self._closing.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:  # Linux applies a thread id's niceness to that thread only; elsewhere this is best effort
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except (AttributeError, OSError):
            pass
        while True:
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                name, size = self._write(job)
            except (OSError, DatasetError, ValueError) as exc:  # disk full, unwritable, unconvertible image
                self._done(job, "", 0, f"{type(exc).__name__}: {exc}")
            else:
                self._done(job, name, size, "")

    def _write(self, job: CaptureJob) -> tuple[str, int]:
        left, right = _rgb(job.left), _rgb(job.right)
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x{right.shape[0]} "
                             "differ in size")
        size = self._save_camera_info(job.infos)
        stamp = job.meta.get("left_stamp_ns", 0)
        for _ in range(1000):  # another writer in the same folder may take a name first
            name = f"{self.next_index:08d}_{stamp}"
            self.next_index += 1
            try:
                return name, size + write_sample(self.root, name, left, right, job.meta)
            except FileExistsError:
                continue
        raise OSError(f"no free sample name in {self.root}")

    def _save_camera_info(self, infos: tuple[Any, Any] | None) -> int:
        """Write DATA/camera_info.yaml for the first pair with both camera_infos; warn if a later rig differs."""
        if infos is None or infos[0] is None or infos[1] is None:
            return 0
        current = (camera_info_to_dict(infos[0]), camera_info_to_dict(infos[1]))
        if current == self._infos_seen:
            return 0
        self._infos_seen = current
        path = self.root / CAMERA_INFO_FILE
        if not path.is_file():
            write_camera_info(path, *current)
            return path.stat().st_size
        try:
            same = read_camera_info(path) == current
        except DatasetError:
            same = False
        if not same:
            self._warn("capture:camera_info", f"capture: the stream's camera_info differs from {path}; the file "
                                              "is kept (capture another rig into another capture_dir)")
        return 0


class HardPairCapture:
    """The policy and the writer of one capture folder, as the node uses them (all methods are thread-safe)."""

    def __init__(self, root: Path, policy: CapturePolicy, *, first_index: int, existing_pairs: int,
                 warn: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic,
                 queue_size: int = QUEUE_PAIRS) -> None:
        self.root, self.policy, self.clock = root, policy, clock
        self._warn = warn
        self._lock = threading.Lock()
        self.captured = self.dropped = self.failed = 0
        self.folder_pairs = existing_pairs
        self.last_name = ""
        self.writer = CaptureWriter(root, first_index=first_index, done=self._written, queue_size=queue_size,
                                    warn=warn)

    @classmethod
    def open(cls, directory: str | Path, *, confidence_below: float = 0.0, every_s: float = 0.0,
             max_pairs: int = 0, max_megabytes: float = 0.0, warn: Callable[[str, str], None] | None = None,
             clock: Callable[[], float] = time.monotonic, queue_size: int = QUEUE_PAIRS) -> "HardPairCapture":
        """Prepare `directory` (created if needed; staging folders of a killed run removed) and count what it
        holds against the limits. Raises CaptureError naming the folder when it cannot be used."""
        root = Path(directory).expanduser().absolute()
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK | os.X_OK):
                raise PermissionError(f"no write permission on {root}")
            remove_staging(root)
            names = sample_names(root)
            existing_bytes = folder_bytes(root)
        except OSError as exc:
            raise CaptureError(f"capture_dir {str(directory)!r}: {exc.strerror or exc}") from None
        sequences = [int(m.group(1)) for m in map(_SEQUENCE.match, names) if m]
        policy = CapturePolicy(confidence_below=confidence_below, every_s=every_s, max_pairs=max_pairs,
                               max_bytes=int(max_megabytes * 1e6), existing_pairs=len(names),
                               existing_bytes=existing_bytes)
        return cls(root, policy, first_index=max(sequences, default=-1) + 1, existing_pairs=len(names),
                   warn=warn if warn is not None else (lambda kind, message: None), clock=clock, queue_size=queue_size)

    @property
    def wants_confidence(self) -> bool:
        return self.policy.wants_confidence

    def trigger(self) -> tuple[bool, str]:
        """The ~/capture service: (success, message)."""
        accepted, why = self.policy.trigger()
        return accepted, (f"capturing the next pair into {self.root}" if accepted else why)

    def offer(self, left: Any, right: Any, infos: tuple[Any, Any] | None, confident_share: float | None,
              meta: dict | None = None) -> str | None:
        """Consider one pair (images as received, or uint8 RGB arrays); returns why it was queued, or None.

        confident_share: the pair's share of confident pixels, None when no inference ran. Never blocks: a full
        queue drops the pair (counted in `dropped`)."""
        now = self.clock()
        reason = self.policy.reason(now, confident_share)
        if reason is not None:
            height, width = _size(left)
            reserve = pair_reserve(height, width)
            if self.policy.reserve(reason, reserve, now):
                info = dict(meta or {}, reason=reason, confident_share=confident_share,
                            captured_at=datetime.datetime.now(datetime.timezone.utc).isoformat())
                if self.writer.submit(CaptureJob(left, right, infos, reason, reserve, info)):
                    return reason
                self.policy.release(reason, reserve, retry=True)
                with self._lock:
                    self.dropped += 1
        stop = self.policy.take_stop_message()
        if stop is not None:
            self._warn("capture:stopped", f"capture stopped: {stop} ({self.root}); restart the node with another "
                                          "capture_dir or higher limits to capture more")
        return None

    def _written(self, job: CaptureJob, name: str, size: int, error: str) -> None:
        if error:
            self.policy.release(job.reason, job.reserve, retry=False)
            with self._lock:
                self.failed += 1
            self._warn("capture:write", f"capture: a {job.reason} pair could not be written into {self.root}: "
                                        f"{error}")
            return
        self.policy.settle(job.reserve, size)
        with self._lock:
            self.captured += 1
            self.folder_pairs += 1
            self.last_name = name

    def counters(self) -> dict[str, int | str]:
        """The /diagnostics figures: captured, dropped (queue full) and failed pairs of this run, and the folder."""
        with self._lock:
            return {"capture": f"stopped: {self.policy.stopped}" if self.policy.stopped else "on",
                    "captured_pairs": self.captured, "capture_dropped": self.dropped,
                    "capture_failed": self.failed, "capture_queued": self.writer.pending,
                    "capture_folder_pairs": self.folder_pairs}

    def offer_frame(self, frame: Any, confident_share: float | None, source: str = "") -> str | None:
        """`offer` for a synchronised pair of Image messages (sync.StereoFrame), with its provenance as meta."""
        left, right = frame.left_image, frame.right_image
        return self.offer(left, right, (frame.left_info, frame.right_info), confident_share, {
            "left_stamp_ns": _stamp_ns(left), "right_stamp_ns": _stamp_ns(right),
            "frame_id": str(left.header.frame_id), "encoding": str(left.encoding), "source": source})

    def close(self, timeout: float = 10.0) -> None:
        self.writer.close(timeout)


def open_capture(config: Any, warn: Callable[[str, str], None] | None = None) -> HardPairCapture | None:
    """The capture of a NodeConfig's capture_* parameters; None when capture_dir is ''. CaptureError as `open`."""
    if not config.capture_dir:
        return None
    return HardPairCapture.open(config.capture_dir, confidence_below=config.capture_confidence_below,
                                every_s=config.capture_every_s, max_pairs=config.capture_max_pairs,
                                max_megabytes=config.capture_max_megabytes, warn=warn)
