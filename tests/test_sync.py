"""Stereo synchroniser: the same cases against the real message_filters and our builtin equivalent."""
import random
from types import SimpleNamespace

import pytest

from stereo_depth_ros.inputs.sync import StereoSynchronizer, message_filters_available

MF_OK, MF_WHY = message_filters_available()
MF_SKIP = f"needs the ROS tooling wheels (message_filters, from ../shared/ros/wheels): {MF_WHY}"
IMPLEMENTATIONS = [
    "builtin",
    pytest.param("message_filters", marks=pytest.mark.skipif(not MF_OK, reason=MF_SKIP)),
]

try:  # real messages where ROS 2 is installed (message_filters needs builtin_interfaces stamps)
    from sensor_msgs.msg import CameraInfo, Image

    def image(t_ns: int, frame: str = "left"):
        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
        msg.header.frame_id = frame
        return msg

    def info(t_ns: int, frame: str = "left"):
        msg = CameraInfo()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
        msg.header.frame_id = frame
        return msg
except ImportError:  # the builtin synchroniser only needs header.stamp.sec/nanosec
    def image(t_ns: int, frame: str = "left"):
        sec, nanosec = divmod(t_ns, 1_000_000_000)
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec),
                                                      frame_id=frame))

    info = image

MS = 1_000_000
PERIOD = 33 * MS
T0 = 1_700_000_000 * 1_000_000_000


def stamps(frames):
    return [(f.left_image.header.stamp.sec * 10**9 + f.left_image.header.stamp.nanosec,
             f.right_image.header.stamp.sec * 10**9 + f.right_image.header.stamp.nanosec) for f in frames]


def make(impl, **kwargs):
    """A synchroniser collecting its frames; no first-pair wait for camera_info unless a test asks for one."""
    kwargs.setdefault("info_wait_seconds", 0.0)
    frames = []
    sync = StereoSynchronizer(frames.append, implementation=impl, **kwargs)
    assert sync.implementation == impl
    return sync, frames


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_exact_pairs_equal_stamps_in_either_arrival_order(impl):
    sync, frames = make(impl)
    for k in range(6):
        t = T0 + k * PERIOD
        if k % 2:
            sync.add_right_image(image(t, "right"))
            sync.add_left_image(image(t))
        else:
            sync.add_left_image(image(t))
            sync.add_right_image(image(t, "right"))
    sync.add_left_image(image(T0 + 10 * PERIOD))
    sync.add_right_image(image(T0 + 10 * PERIOD + 1, "right"))  # 1 ns apart: not exact
    assert stamps(frames) == [(T0 + k * PERIOD,) * 2 for k in range(6)]
    assert all(f.left_image.header.frame_id == "left" and f.right_image.header.frame_id == "right"
               for f in frames)
    assert sync.stats.pairs == 6


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_approximate_pairs_jittered_stamps(impl):
    rng = random.Random(3)
    sync, frames = make(impl, approximate=True, tolerance_seconds=0.010)
    expected = []
    for k in range(40):
        t_left = T0 + k * PERIOD + rng.randint(-4 * MS, 4 * MS)
        t_right = T0 + k * PERIOD + rng.randint(-4 * MS, 4 * MS)
        msgs = [lambda: sync.add_left_image(image(t_left)), lambda: sync.add_right_image(image(t_right, "right"))]
        rng.shuffle(msgs)
        for add in msgs:
            add()
        expected.append((t_left, t_right))
    assert stamps(frames) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_approximate_rejects_pairs_beyond_the_tolerance(impl):
    sync, frames = make(impl, approximate=True, tolerance_seconds=0.005)
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0 + 6 * MS))
    assert frames == []
    sync.add_left_image(image(T0 + 10 * MS))  # 4 ms from the waiting right image
    assert stamps(frames) == [(T0 + 10 * MS, T0 + 6 * MS)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_approximate_zero_tolerance_is_unbounded_like_stereo_image_proc(impl):
    sync, frames = make(impl, approximate=True, tolerance_seconds=0.0)
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0 + 400 * MS))
    assert stamps(frames) == [(T0, T0 + 400 * MS)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("approximate", [False, True])
def test_out_of_order_and_duplicated_stamps_are_dropped(impl, approximate):
    sync, frames = make(impl, approximate=approximate, tolerance_seconds=0.002)
    t1, t2, t3 = T0, T0 + PERIOD, T0 + 2 * PERIOD
    sync.add_left_image(image(t2))
    sync.add_right_image(image(t2))
    # late pair from before the last one
    sync.add_left_image(image(t1))
    sync.add_right_image(image(t1))
    # the same pair again (a replay or a duplicating driver)
    sync.add_left_image(image(t2))
    sync.add_right_image(image(t2))
    sync.add_left_image(image(t3))
    sync.add_right_image(image(t3))
    assert stamps(frames) == [(t2, t2), (t3, t3)]
    assert sync.stats.dropped_stale >= 4


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_output_never_goes_backwards_when_an_old_image_waits(impl):
    sync, frames = make(impl, approximate=True, tolerance_seconds=0.020)
    sync.add_left_image(image(T0))  # its partner is lost
    sync.add_left_image(image(T0 + PERIOD))
    sync.add_right_image(image(T0 + PERIOD + 1 * MS))
    sync.add_right_image(image(T0 + 5 * MS))  # late partner of the first left image: older than the last pair
    sync.add_left_image(image(T0 + 2 * PERIOD))
    sync.add_right_image(image(T0 + 2 * PERIOD))
    pairs = stamps(frames)
    assert pairs == [(T0 + PERIOD, T0 + PERIOD + 1 * MS), (T0 + 2 * PERIOD, T0 + 2 * PERIOD)]


def waiting(sync):
    matcher = sync._matcher
    queues = matcher._queues if sync.implementation == "builtin" else matcher._sync.queues
    return [len(q) for q in queues]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_queues_stay_bounded_and_keep_the_newest(impl):
    sync, frames = make(impl, queue_size=3)
    for k in range(200):
        sync.add_left_image(image(T0 + k * PERIOD))
        sync.add_left_info(info(T0 + k * PERIOD))
    assert max(waiting(sync)) <= 3 and len(sync._infos[0]) <= 3
    sync.add_right_image(image(T0 + 10 * PERIOD))  # its partner was evicted long ago
    assert frames == []
    sync.add_right_image(image(T0 + 198 * PERIOD))
    assert stamps(frames) == [(T0 + 198 * PERIOD,) * 2]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_camera_info_is_attached_by_stamp_and_waited_for(impl):
    sync, frames = make(impl)
    t = T0
    sync.add_left_info(info(t))
    sync.add_right_info(info(t, "right"))
    sync.add_left_image(image(t))
    sync.add_right_image(image(t, "right"))
    assert len(frames) == 1 and frames[0].left_info.header.frame_id == "left"
    assert frames[0].right_info.header.frame_id == "right"
    # images first: the pair waits for its camera_info
    t = T0 + PERIOD
    sync.add_left_image(image(t))
    sync.add_right_image(image(t, "right"))
    assert len(frames) == 1 and sync.pending()
    sync.add_left_info(info(t))
    assert len(frames) == 1
    sync.add_right_info(info(t, "right"))
    assert len(frames) == 2 and not sync.pending()
    assert stamps([frames[1]]) == [(t, t)] and frames[1].right_info.header.stamp.nanosec == \
        frames[1].right_image.header.stamp.nanosec
    # camera_info lost for one frame: the pair goes out when the next pair is ready, with the newest camera_info
    # of each side (a calibration does not change between frames), counted as reused, not as missing
    t2, t3 = T0 + 2 * PERIOD, T0 + 3 * PERIOD
    sync.add_left_image(image(t2))
    sync.add_right_image(image(t2, "right"))
    sync.add_left_info(info(t3))
    sync.add_right_info(info(t3, "right"))
    sync.add_left_image(image(t3))
    sync.add_right_image(image(t3, "right"))
    assert stamps(frames[2:]) == [(t2, t2), (t3, t3)]
    assert frames[2].left_info.header.stamp == frames[3].left_info.header.stamp  # t3's, the newest
    assert frames[2].right_info.header.frame_id == "right"
    assert sync.stats.reused_info == 1 and sync.stats.missing_info == 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_side_that_never_sent_camera_info_is_missing_not_reused(impl):
    sync, frames = make(impl)
    sync.add_left_info(info(T0))
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0, "right"))
    sync.add_left_image(image(T0 + PERIOD))
    sync.add_right_image(image(T0 + PERIOD, "right"))
    sync.poll()  # its wait for the left camera_info of T0 + PERIOD is over (info_wait_seconds 0)
    assert len(frames) == 2 and frames[1].left_info is not None and frames[1].right_info is None
    assert sync.stats.missing_info == 0  # the right side never sent one: nothing was expected of it
    assert sync.stats.reused_info == 1  # the second pair got the left camera_info of the first


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("sec, nanosec, why", [(-5, 0, "negative stamp -5 s"),
                                               (-1, 999_999_999, "negative stamp -1 s"),
                                               (1, 1_000_000_000, "nanoseconds 1000000000 outside"),
                                               (2**31 - 1, 2**32 - 1, "outside 0..999999999")])
def test_stamps_no_clock_gives_are_dropped_with_a_warning(impl, sec, nanosec, why):
    """message_filters calls rclpy's Time.from_msg, which raises on negative seconds: such a stamp once killed the
    node. Now it is dropped, counted and named; the stream goes on pairing."""
    warnings = []
    sync, frames = make(impl, warn=lambda kind, message: warnings.append(message))
    for add in (sync.add_left_info, sync.add_left_image, sync.add_right_image):
        bad = image(T0)
        bad.header.stamp.sec, bad.header.stamp.nanosec = sec, nanosec
        add(bad)
    assert frames == [] and sync.stats.invalid_stamps == 3
    assert any(why in message for message in warnings), warnings
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0, "right"))
    assert stamps(frames) == [(T0, T0)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_zero_stamps_pair_once_then_count_as_stale(impl):
    """A driver that does not stamp (all zero): the first pair goes out, later ones are duplicates of it."""
    sync, frames = make(impl)
    for _ in range(3):
        sync.add_left_image(image(0))
        sync.add_right_image(image(0, "right"))
    assert stamps(frames) == [(0, 0)] and sync.stats.dropped_stale == 4


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_images_that_never_pair_are_counted_per_side(impl):
    """Exact sync with the right camera 3 ms late: no pair forms, and every image that leaves a queue is counted
    as unpaired, on its side (what the node's input health reads to suggest approximate_sync)."""
    sync, frames = make(impl, queue_size=3)
    for k in range(10):
        sync.add_left_image(image(T0 + k * PERIOD))
        sync.add_right_image(image(T0 + k * PERIOD + 3 * MS, "right"))
    assert frames == []
    assert sync.stats.unpaired == [7, 7]  # 10 sent per side, 3 still queued
    sync.add_left_image(image(T0 + 9 * PERIOD + 3 * MS))  # a left partner for the newest right image
    assert len(frames) == 1
    assert sync.stats.unpaired == [7 + 3, 7 + 2]  # the older ones left their queues without a partner


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_without_any_camera_info_pairs_go_out_at_once(impl):
    sync, frames = make(impl, approximate=True, tolerance_seconds=0.01)
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0 + MS))
    assert len(frames) == 1 and frames[0].left_info is None and frames[0].right_info is None
    assert sync.stats.missing_info == 0  # nothing was expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="queue_size"):
        StereoSynchronizer(print, queue_size=0, implementation="builtin")
    with pytest.raises(ValueError, match="tolerance"):
        StereoSynchronizer(print, tolerance_seconds=-1.0, implementation="builtin")
    with pytest.raises(ValueError, match="implementation"):
        StereoSynchronizer(print, implementation="ros1")


def test_auto_picks_message_filters_when_importable():
    sync = StereoSynchronizer(print)
    assert sync.implementation == ("message_filters" if MF_OK else "builtin")


@pytest.mark.skipif(not MF_OK, reason=MF_SKIP)
@pytest.mark.parametrize("approximate, tolerance", [(False, 0.0), (True, 0.008), (True, 0.0)])
@pytest.mark.parametrize("seed", range(4))
def test_builtin_matches_message_filters_on_a_messy_stream(approximate, tolerance, seed):
    """Jitter, lost images, reordering across topics and sides, duplicates: both give the same pairs."""
    rng = random.Random(seed)
    events = []
    for k in range(60):
        base = T0 + k * PERIOD
        for side in ("left", "right"):
            if rng.random() < 0.1:
                continue  # lost
            t = base + (rng.randint(-3 * MS, 3 * MS) if approximate else 0)
            events.append((base + rng.randint(0, 2 * PERIOD), side, t))  # (arrival, side, stamp)
            if rng.random() < 0.05:
                events.append((base + rng.randint(0, 3 * PERIOD), side, t))  # duplicated
    events.sort()
    results = {}
    for impl in ("builtin", "message_filters"):
        sync, frames = make(impl, approximate=approximate, tolerance_seconds=tolerance, queue_size=4)
        for _, side, t in events:
            (sync.add_left_image if side == "left" else sync.add_right_image)(image(t, side))
        results[impl] = stamps(frames)
        pairs = results[impl]
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pairs, pairs[1:])), "output went backwards"
    assert len(results["builtin"]) > 20
    assert results["builtin"] == results["message_filters"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_first_pair_waits_for_a_late_camera_info(impl):
    # image_transport's CameraPublisher sends the image before its camera_info: the first pair must not go
    # out without depth just because its camera_info is a few milliseconds behind.
    clock = FakeClock()
    sync, frames = make(impl, info_wait_seconds=0.5, clock=clock)
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0, "right"))
    assert frames == [] and sync.pending()
    clock.now += 0.01
    sync.poll()
    sync.add_left_info(info(T0))
    assert frames == []
    sync.add_right_info(info(T0, "right"))
    assert len(frames) == 1 and frames[0].left_info is not None and frames[0].right_info is not None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_first_pair_goes_out_without_camera_info_after_the_wait(impl):
    clock = FakeClock()
    sync, frames = make(impl, info_wait_seconds=0.5, clock=clock)
    sync.add_left_image(image(T0))
    sync.add_right_image(image(T0, "right"))
    clock.now += 0.49
    sync.poll()
    assert frames == []
    clock.now += 0.02
    sync.poll()  # no further pair needed: the timer releases it
    assert len(frames) == 1 and frames[0].left_info is None and frames[0].right_info is None
    # The stream has no camera_info: later pairs are not held back.
    sync.add_left_image(image(T0 + PERIOD))
    sync.add_right_image(image(T0 + PERIOD, "right"))
    assert len(frames) == 2 and not sync.pending()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("approximate", [False, True])
def test_unpaired_images_stamped_far_ahead_do_not_block_the_stream(impl, approximate):
    warnings = []
    sync, frames = make(impl, approximate=approximate, tolerance_seconds=0.01, queue_size=3,
                        warn=lambda kind, message: warnings.append(message))
    future = T0 + 10**6 * 10**9  # about 11 days ahead
    for k in range(5):
        sync.add_left_image(image(future + k * PERIOD))
    for k in range(1, 8):
        t = T0 + k * PERIOD
        sync.add_left_image(image(t))
        sync.add_right_image(image(t, "right"))
    assert stamps(frames) == [(T0 + k * PERIOD,) * 2 for k in range(1, 8)]
    assert any("left image stamped" in w and "ahead of the stream" in w for w in warnings), warnings


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_camera_info_stamped_far_ahead_does_not_starve_later_pairs(impl):
    warnings = []
    sync, frames = make(impl, queue_size=3, warn=lambda kind, message: warnings.append(message))
    future = T0 + 10**6 * 10**9
    for k in range(5):
        sync.add_left_info(info(future + k * PERIOD))
        sync.add_right_info(info(future + k * PERIOD, "right"))
    for k in range(1, 6):
        t = T0 + k * PERIOD
        sync.add_left_info(info(t))
        sync.add_right_info(info(t, "right"))
        sync.add_left_image(image(t))
        sync.add_right_image(image(t, "right"))
    assert len(frames) == 5
    assert all(f.left_info is not None and f.right_info is not None for f in frames)
    assert any("camera_info stamped" in w for w in warnings), warnings


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_pair_stamped_far_ahead_does_not_stop_the_stream_for_good(impl):
    warnings = []
    sync, frames = make(impl, warn=lambda kind, message: warnings.append(message))
    future = T0 + 10**6 * 10**9
    sync.add_left_image(image(future))
    sync.add_right_image(image(future, "right"))
    for k in range(1, 4):
        t = T0 + k * PERIOD
        sync.add_left_image(image(t))
        sync.add_right_image(image(t, "right"))
    assert stamps(frames)[1:] == [(T0 + k * PERIOD,) * 2 for k in range(1, 4)]
    assert any("jumped back" in w for w in warnings), warnings
