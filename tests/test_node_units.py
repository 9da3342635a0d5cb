"""The node's ROS-free helpers: the one-slot mailbox between callbacks and worker, frame statistics, throttling."""
from __future__ import annotations

import threading
import time

import numpy as np

from stereo_depth_ros.diagnostics import EventWindow, FrameStats, Throttle, summary_line
from stereo_depth_ros.mailbox import LatestMailbox


def test_mailbox_keeps_newest_and_counts_drops():
    box: LatestMailbox[int] = LatestMailbox()
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.dropped == 2
    assert box.get(timeout=0.1) == 3
    assert box.get(timeout=0.05) is None  # empty again: nothing is queued behind the newest


def test_mailbox_close_wakes_a_waiting_consumer():
    box: LatestMailbox[int] = LatestMailbox()
    got = []
    worker = threading.Thread(target=lambda: got.append(box.get()))
    worker.start()
    time.sleep(0.05)
    box.close()
    worker.join(timeout=5.0)
    assert not worker.is_alive() and got == [None] and box.closed


def test_mailbox_under_concurrent_producer_never_loses_the_last_item():
    box: LatestMailbox[int] = LatestMailbox()
    consumed = []

    def consume():
        while True:
            item = box.get(timeout=1.0)
            if item is None:
                return
            consumed.append(item)
            time.sleep(0.001)

    worker = threading.Thread(target=consume)
    worker.start()
    for i in range(2000):
        box.put(i)
    time.sleep(0.05)
    box.close()
    worker.join(timeout=5.0)
    assert consumed[-1] == 1999
    assert consumed == sorted(consumed)
    assert len(consumed) + box.dropped == 2000


def test_event_window_rate_and_expiry():
    window = EventWindow(window=1.0, keep=3, max_age=10.0)
    for k in range(11):
        window.add(float(k), now=10.0 + 0.1 * k)
    assert abs(window.rate(now=11.0) - 10.0) < 1e-9
    np.testing.assert_array_equal(window.values(now=11.0), np.arange(11, dtype=float))
    # Past the window only the last `keep` events remain, and the rate decays once events are overdue.
    np.testing.assert_array_equal(window.values(now=12.5), [8.0, 9.0, 10.0])
    assert 0.0 < window.rate(now=12.5) < 2.0
    assert window.values(now=30.0).size == 0 and window.rate(now=30.0) == 0.0


def test_event_window_slow_stream_keeps_figures():
    window = EventWindow(window=5.0, keep=3)
    for k in range(4):
        window.add(8.0, now=100.0 + 8.0 * k)  # one inference every 8 s
    assert abs(window.rate(now=124.5) - 1 / 8) < 1e-9
    np.testing.assert_array_equal(window.values(now=124.5), [8.0, 8.0, 8.0])


def test_frame_stats_snapshot_and_summary():
    stats = FrameStats(window=5.0)
    stats.pair_received(dropped_older=False)
    stats.pair_received(dropped_older=True)
    stats.pair_rejected("left image: truncated")
    stats.pair_published(latency_s=0.040, inference_s=0.030, valid_share=0.75)
    stats.pair_published(latency_s=0.060, inference_s=0.050, valid_share=0.5)
    snap = stats.snapshot()
    assert snap["received_pairs"] == 2 and snap["dropped_pairs"] == 1 and snap["rejected_pairs"] == 1
    assert snap["processed_pairs"] == 2 and snap["valid_depth_share"] == 0.5
    assert abs(snap["latency_ms_median"] - 50.0) < 1e-6 and abs(snap["latency_ms_max"] - 60.0) < 1e-6
    assert abs(snap["inference_ms_median"] - 40.0) < 1e-6
    assert snap["last_problem"] == "left image: truncated"
    line = summary_line(snap)
    assert "dropped 1" in line and "latency 50.000 ms" in line


def test_throttle_is_per_key():
    throttle = Throttle(period=5.0)
    assert throttle.ready("a", now=0.0) and throttle.ready("b", now=0.1)
    assert not throttle.ready("a", now=4.9)
    assert throttle.ready("a", now=5.1)


def test_throttle_memory_is_bounded():
    # issue 12, hidden fuzz: 400 pairs with 400 different bad encodings grew the node by 120-150 MB, one entry
    # per distinct warning text kept forever.
    throttle = Throttle(period=5.0, max_keys=64)
    for k in range(10_000):
        assert throttle.ready(f"image:left:unsupported image encoding 'enc{k}'", now=1.0 + k * 1e-4)
    assert len(throttle) <= 65
    # Recent keys still throttle; a key whose period is over is forgotten.
    assert not throttle.ready("image:left:unsupported image encoding 'enc9999'", now=2.5)
    assert throttle.ready("image:left:unsupported image encoding 'enc9999'", now=10.0)
    assert len(throttle) == 1


def test_frame_stats_idle_iterations_and_budget_misses():
    stats = FrameStats(window=5.0)
    stats.pair_idle()
    stats.pair_published(latency_s=0.01, inference_s=0.01, valid_share=1.0, iterations=6, budget_missed=False)
    stats.pair_published(latency_s=0.01, inference_s=0.01, valid_share=1.0, iterations=1, budget_missed=True)
    snap = stats.snapshot()
    assert (snap["idle_pairs"], snap["iterations"], snap["budget_misses"]) == (1, 1, 1)
    stats.pair_published(latency_s=0.01, inference_s=0.01, valid_share=1.0)
    assert stats.snapshot()["iterations"] == "none"


def test_fit_to_backend_takes_a_fixed_export_size_and_refuses_iters_a_backend_cannot_run():
    """A fixed-size ONNX export with no working size set runs at its size (pairs used to fail one by one); an
    `iters` that the backend would refuse at run time is refused at start-up too (exit 2)."""
    import pytest

    from stereo_depth_ros.config import NodeConfig
    from stereo_depth_ros.inference import create_estimator
    from stereo_depth_ros.node_parameters import EXIT_BAD_PARAMETERS, StartupError, fit_to_backend

    class FixedExport:  # the two attributes fit_to_backend reads from an OnnxEstimator (a real one needs an export)
        fixed_size = (96, 160)
        iters = 8

    config, note = fit_to_backend(NodeConfig(backend="onnxruntime", model_path="x.onnx"), FixedExport())
    assert (config.input_width, config.input_height) == (160, 96) and "160x96 images only" in note
    chosen = NodeConfig(backend="onnxruntime", model_path="x.onnx", input_width=320, input_height=192)
    assert fit_to_backend(chosen, FixedExport()) == (chosen, None)  # the user's working size stands
    sgbm = create_estimator("opencv_sgbm", max_disparity=64)
    with pytest.raises(StartupError, match="parameter iters: backend opencv_sgbm has no refinement") as raised:
        fit_to_backend(NodeConfig(backend="opencv_sgbm", iters=4), sgbm)
    assert raised.value.code == EXIT_BAD_PARAMETERS
