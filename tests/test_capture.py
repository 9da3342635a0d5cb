"""Hard-pair capture without ROS: the policy (when to capture, the limits), the background writer (bounded queue,
atomic samples) and the folder it leaves, read back by stereo_distill as a dataset.

The writer's disk is real (tmp_path). Where a test needs the writer to be slow or to fail at a chosen moment it
replaces `write_sample`/`write_image` with a wrapper that waits on an Event or raises: the only way to hold a write
half-done deterministically.
"""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import stereo_depth_ros.capture as capture_module
import stereo_depth_ros.dataset_layout as layout
from stereo_depth_ros.capture import CaptureError, HardPairCapture
from stereo_depth_ros.capture_policy import CONFIDENCE, PERIODIC, TRIGGER, CapturePolicy, pair_reserve
from stereo_depth_ros.config import ConfigError, NodeConfig
from stereo_depth_ros.dataset_layout import sample_names

H, W = 24, 32


def images(seed: int = 0):
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 256, (H, W, 3), np.uint8)
    return left, np.roll(left, -3, axis=1)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Warnings(list):
    def __call__(self, kind: str, message: str) -> None:
        self.append((kind, message))


# ----------------------------------------------------------------------------------------------------------- policy
def test_policy_reasons_trigger_first_then_confidence_then_period():
    policy = CapturePolicy(confidence_below=0.4, every_s=10.0)
    assert policy.reason(0.0, 0.9) == PERIODIC  # the period starts with the first pair
    assert policy.reserve(PERIODIC, 100, now=0.0)
    assert policy.reason(5.0, 0.9) is None
    assert policy.reason(5.0, 0.39) == CONFIDENCE
    assert policy.reason(5.0, None) is None  # not judged (no inference ran): confidence cannot capture it
    assert policy.trigger() == (True, "")
    assert policy.reason(5.0, 0.39) == TRIGGER
    assert policy.reserve(TRIGGER, 100, now=5.0)
    assert policy.reason(14.0, 0.9) is None and policy.reason(15.0, 0.9) == PERIODIC  # 10 s after the last capture
    off = CapturePolicy()
    assert off.reason(0.0, 0.0) is None and not off.wants_confidence


def test_policy_trigger_survives_a_full_queue_not_a_failed_write():
    policy = CapturePolicy()
    policy.trigger()
    assert policy.reserve(TRIGGER, 100, now=0.0) and policy.reason(0.0, None) is None
    policy.release(TRIGGER, 100, retry=True)  # queue full: the request is kept for the next pair
    assert policy.reason(0.1, None) == TRIGGER and policy.pairs == 0 and policy.bytes == 0
    policy.reserve(TRIGGER, 100, now=0.1)
    policy.release(TRIGGER, 100, retry=False)  # the write failed: not retried on every pair
    assert policy.reason(0.2, None) is None


def test_policy_pair_limit_counts_the_folder_and_warns_once():
    policy = CapturePolicy(confidence_below=1.0, max_pairs=3, existing_pairs=2)
    assert policy.reserve(CONFIDENCE, 10, now=0.0)
    assert not policy.reserve(CONFIDENCE, 10, now=0.1)
    assert policy.stopped.startswith("capture_max_pairs (3) reached")
    assert policy.take_stop_message() == policy.stopped and policy.take_stop_message() is None
    assert policy.reason(0.2, 0.0) is None
    accepted, why = policy.trigger()
    assert not accepted and "capture_max_pairs (3)" in why
    full = CapturePolicy(max_pairs=3, existing_pairs=3)  # a restart on a full folder: stopped from the start
    assert full.stopped and "already holds 3 pairs" in full.stopped and not full.trigger()[0]


def test_policy_byte_limit_reserves_in_flight_pairs_and_settles_to_real_sizes():
    policy = CapturePolicy(every_s=1e-9, max_bytes=1000, existing_bytes=100)
    assert policy.reserve(PERIODIC, 400, now=0.0) and policy.reserve(PERIODIC, 400, now=1.0)  # 900 counted
    assert not policy.reserve(PERIODIC, 400, now=2.0)  # would pass 1000 while both are still in flight
    assert "capture_max_megabytes (0.001) reached" in policy.stopped
    policy = CapturePolicy(every_s=1e-9, max_bytes=1000, existing_bytes=100)
    policy.reserve(PERIODIC, 400, now=0.0)
    policy.settle(400, 150)  # written: 150 bytes really
    assert policy.bytes == 250 and policy.reserve(PERIODIC, 400, now=1.0) and policy.reserve(PERIODIC, 300, now=2.0)
    assert "already holds" in CapturePolicy(max_bytes=1000, existing_bytes=1000).stopped


def test_pair_reserve_bounds_a_png_of_noise():
    left = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)  # incompressible: PNG's worst case
    import cv2
    png = len(cv2.imencode(".png", left)[1])
    assert 2 * png + 2048 < pair_reserve(48, 64)


def test_capture_parameters_validated_with_one_message():
    config = NodeConfig(capture_dir="x", capture_confidence_below=0.3, capture_every_s=2, capture_max_pairs=0)
    config.validate(check_files=False)
    for name, value, text in (("capture_confidence_below", 1.5, "must be in 0..1"),
                              ("capture_every_s", -1.0, "must be a finite number >= 0"),
                              ("capture_max_megabytes", float("nan"), "must be a finite number >= 0"),
                              ("capture_max_pairs", -2, "must be >= 0")):
        with pytest.raises(ConfigError, match=f"parameter {name}: {text}"):
            NodeConfig.from_dict({name: value}).validate(check_files=False)


# ----------------------------------------------------------------------------------------------------------- writer
def test_queue_full_drops_and_counts_without_blocking(tmp_path, monkeypatch):
    release, started = threading.Event(), threading.Event()
    real_write = capture_module.write_sample

    def held_write(*args, **kwargs):  # a disk that does not answer until released
        started.set()
        release.wait(10)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(capture_module, "write_sample", held_write)
    capture = HardPairCapture.open(tmp_path / "cap", confidence_below=1.0, queue_size=2)
    try:
        left, right = images()
        assert capture.offer(left, right, None, 0.0, {"left_stamp_ns": 1}) == CONFIDENCE
        assert started.wait(10)  # the writer holds pair 1; the queue takes two more
        begin = time.monotonic()
        reasons = [capture.offer(left, right, None, 0.0, {"left_stamp_ns": 2 + i}) for i in range(4)]
        assert time.monotonic() - begin < 1.0  # (generous) offer never waits for the writer
        assert reasons == [CONFIDENCE, CONFIDENCE, None, None]
        counters = capture.counters()
        assert counters["capture_dropped"] == 2 and counters["captured_pairs"] == 0
        assert capture.policy.pairs == 3  # dropped pairs are not counted against the limits
        release.set()
        assert wait_until(lambda: capture.counters()["captured_pairs"] == 3)
    finally:
        release.set()
        capture.close()
    assert sample_names(tmp_path / "cap") == ["00000000_1", "00000001_2", "00000002_3"]


def test_sample_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    from stereo_distill.datasets import open_dataset

    halfway, release = threading.Event(), threading.Event()
    real_write_image = layout.write_image

    def write_image(path, image):
        real_write_image(path, image)
        if path.name == "left.png":  # left written, right not yet
            halfway.set()
            release.wait(10)

    monkeypatch.setattr(layout, "write_image", write_image)
    capture = HardPairCapture.open(tmp_path, every_s=1e-9)
    try:
        capture.offer(*images(), None, None, {"left_stamp_ns": 7})
        assert halfway.wait(10)
        assert sample_names(tmp_path) == []  # the half-written sample is staged in a hidden folder
        assert [p.name for p in tmp_path.iterdir()] == [".staging-00000000_7"]
        with pytest.raises(Exception, match="no stereo pairs"):
            open_dataset(tmp_path)
        release.set()
        assert wait_until(lambda: capture.counters()["captured_pairs"] == 1)
    finally:
        release.set()
        capture.close()
    sample = open_dataset(tmp_path)[0]
    np.testing.assert_array_equal(sample.load_left(), images()[0])  # lossless
    np.testing.assert_array_equal(sample.load_right(), images()[1])


def test_failed_write_leaves_nothing_and_is_counted(tmp_path, monkeypatch):
    def full_disk(path, image):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout, "write_image", full_disk)
    warnings = Warnings()
    capture = HardPairCapture.open(tmp_path, every_s=1e-9, warn=warnings)
    capture.offer(*images(), None, None, {"left_stamp_ns": 1})
    assert wait_until(lambda: capture.counters()["capture_failed"] == 1)
    capture.close()
    assert list(tmp_path.iterdir()) == [] and capture.policy.pairs == 0
    assert warnings and "No space left on device" in warnings[0][1]


def test_restart_continues_names_counts_the_folder_and_removes_staging(tmp_path):
    first = HardPairCapture.open(tmp_path, every_s=1e-9)
    for stamp in (5, 5):  # a replayed bag repeats stamps: the sequence keeps names apart
        first.offer(*images(), None, None, {"left_stamp_ns": stamp})
    assert wait_until(lambda: first.counters()["captured_pairs"] == 2)
    first.close()
    (tmp_path / ".staging-00000009_1").mkdir()  # a writer killed mid-sample
    (tmp_path / ".staging-00000009_1" / "left.png").write_bytes(b"half")
    size = layout.folder_bytes(tmp_path) - 4
    second = HardPairCapture.open(tmp_path, every_s=1e-9, max_pairs=3)
    assert not (tmp_path / ".staging-00000009_1").exists()
    assert second.policy.pairs == 2 and second.policy.bytes == size
    second.offer(*images(1), None, None, {"left_stamp_ns": 3})
    second.offer(*images(1), None, None, {"left_stamp_ns": 4})  # the limit counts the first run's pairs
    assert wait_until(lambda: second.counters()["captured_pairs"] == 1)
    second.close()
    assert sample_names(tmp_path) == ["00000000_5", "00000001_5", "00000002_3"]  # sorted = capture order
    assert second.counters()["capture"].startswith("stopped: capture_max_pairs (3)")


def test_camera_info_and_meta_are_written_for_the_dataset_readers(tmp_path):
    from stereo_depth_ros.dataset_layout import read_camera_info
    from stereo_distill.datasets import open_dataset

    def info(tx):
        return SimpleNamespace(width=W, height=H, d=[0.0] * 5, k=[50.0, 0, 16, 0, 50.0, 12, 0, 0, 1],
                               r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[50.0, 0, 16, tx, 0, 50.0, 12, 0, 0, 0, 1, 0],
                               distortion_model="plumb_bob", header=SimpleNamespace(frame_id="cam"))

    warnings = Warnings()
    capture = HardPairCapture.open(tmp_path, confidence_below=0.5, warn=warnings)
    capture.offer(*images(), (info(0.0), info(-5.0)), 0.2, {"left_stamp_ns": 11, "source": "/node"})
    capture.offer(*images(), (info(0.0), info(-6.0)), 0.2, {"left_stamp_ns": 12})  # another rig
    assert wait_until(lambda: capture.counters()["captured_pairs"] == 2)
    capture.close()
    dataset = open_dataset(tmp_path)
    assert dataset.names() == ["00000000_11", "00000001_12"]
    left_info, right_info = read_camera_info(tmp_path / "camera_info.yaml")
    p_left, p_right = left_info["projection_matrix"]["data"], right_info["projection_matrix"]["data"]
    assert p_left[0] == 50.0 and -p_right[3] / p_right[0] == pytest.approx(0.1)
    meta = json.loads((tmp_path / "00000000_11" / "meta.json").read_text())
    assert meta["reason"] == CONFIDENCE and meta["confident_share"] == 0.2 and meta["source"] == "/node"
    assert [kind for kind, _ in warnings] == ["capture:camera_info"]  # the file keeps the first rig


def test_unusable_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaptureError, match="capture_dir '.*file/cap'"):
        HardPairCapture.open(tmp_path / "file" / "cap")
