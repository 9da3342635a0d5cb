"""`stereo-distill record` over real DDS: its own process against a publisher process; the bag is read back
with rosbags and `extract`, which must give the published pixels exactly. Discovery stays on localhost in a
domain of this test process, so concurrent runs on one machine do not meet."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from stereo_distill import cli

pytest.importorskip("rclpy")
from ros_helpers import node_env

REPO = Path(__file__).resolve().parents[1]
LEFT, RIGHT = "/rig/left/image_rect", "/rig/right/image_rect"
HEIGHT, WIDTH = 24, 40
BASE_NS = 1_000 * 10**9
PERIOD_NS = 50_000_000

# Publishes pair i (stamp BASE + i * PERIOD) at ~20 Hz until stopped: rgb8 images whose pixels are a function
# of (i, side), and a CameraInfo beside each image topic. Default (reliable) QoS, as most camera drivers.
PUBLISHER = f"""
import time, numpy as np, rclpy
from sensor_msgs.msg import CameraInfo, Image
rclpy.init()
node = rclpy.create_node("fake_stereo_rig")
topics = {{"left": "{LEFT}", "right": "{RIGHT}"}}
images = {{s: node.create_publisher(Image, t, 10) for s, t in topics.items()}}
infos = {{s: node.create_publisher(CameraInfo, t.rsplit("/", 1)[0] + "/camera_info", 10) for s, t in topics.items()}}
i = 0
try:
    while rclpy.ok():
        stamp = {BASE_NS} + i * {PERIOD_NS}
        for side, seed in (("left", 2 * i), ("right", 2 * i + 1)):
            pixels = np.random.default_rng(seed).integers(0, 256, ({HEIGHT}, {WIDTH}, 3), dtype=np.uint8)
            msg = Image(height={HEIGHT}, width={WIDTH}, encoding="rgb8", step={WIDTH} * 3, data=pixels.tobytes())
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "rig_optical"
            images[side].publish(msg)
            info = CameraInfo(height={HEIGHT}, width={WIDTH}, distortion_model="plumb_bob")
            info.header = msg.header
            info.k[0] = info.k[4] = 50.0
            info.p[0] = info.p[5] = 50.0
            info.p[3] = -5.0 if side == "right" else 0.0
            infos[side].publish(info)
        i += 1
        time.sleep(0.05)
except KeyboardInterrupt:
    pass
"""


def expected_pixels(stamp_ns: int, side: str) -> np.ndarray:
    i = (stamp_ns - BASE_NS) // PERIOD_NS
    seed = 2 * i + (side == "right")
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    # A session of its own: SIGINT goes to this process only, as Ctrl-C would in its terminal.
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)


def wait_for_text(log: Path, text: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if text in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log within {timeout} s:\n{log.read_text()[-2000:]}")


def record_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stereo_distill.cli", "record", str(out), "--left-topic", LEFT, "--right-topic", RIGHT,
            *extra]


def check_bag_and_pixels(bag: Path, data: Path, capsys) -> int:
    """Every topic is in the bag; extract's pairs carry exactly the published pixels. Returns the pair count."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        types = {c.topic: c.msgtype for c in reader.connections}
    info_left, info_right = LEFT.rsplit("/", 1)[0] + "/camera_info", RIGHT.rsplit("/", 1)[0] + "/camera_info"
    assert set(counts) == {LEFT, RIGHT, info_left, info_right}
    assert all(n > 0 for n in counts.values()), counts
    assert types[LEFT] == types[RIGHT] == "sensor_msgs/msg/Image"
    assert types[info_left] == "sensor_msgs/msg/CameraInfo"

    assert cli.main(["extract", str(bag), "--left-topic", LEFT, "--right-topic", RIGHT, "--out", str(data)]) == 0, \
        capsys.readouterr().err
    samples = sorted(p for p in data.iterdir() if (p / "meta.json").is_file())
    for sample in samples:
        stamp = int(sample.name.split("_")[1])
        for side in ("left", "right"):
            pixels = cv2.cvtColor(cv2.imread(str(sample / f"{side}.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(pixels, expected_pixels(stamp, side), err_msg=f"{sample.name} {side}")
    assert (data / "camera_info.yaml").is_file()
    return len(samples)


@pytest.fixture
def publisher(tmp_path):
    env = node_env(tmp_path, fastdds_profile=None)
    process = start([sys.executable, "-c", PUBLISHER], env, tmp_path / "publisher.log")
    yield env
    process.send_signal(signal.SIGINT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_record_until_sigint_then_extract_pixel_exact(publisher, tmp_path, capsys):
    bag, log = tmp_path / "bag", tmp_path / "record.log"
    recorder = start(record_command(bag, "--storage", "mcap"), publisher, log)
    try:
        wait_for_text(log, "Ctrl-C stops", recorder)
        time.sleep(4.0)  # ~80 pairs published meanwhile; a loaded machine may deliver fewer
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(30) == 0, log.read_text()
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert "stopped (SIGINT)" in log.read_text()
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    assert check_bag_and_pixels(bag, tmp_path / "data", capsys) >= 3


def test_record_stops_after_max_pairs_sqlite3(publisher, tmp_path, capsys):
    bag, log = tmp_path / "bag", tmp_path / "record.log"
    recorder = start(record_command(bag, "--storage", "sqlite3", "--max-pairs", "4", "--duration", "60"),
                     publisher, log)
    try:
        assert recorder.wait(90) == 0, log.read_text()
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert "stopped (4 pairs)" in log.read_text()
    assert list(bag.glob("*.db3"))
    assert check_bag_and_pixels(bag, tmp_path / "data", capsys) == 4


def test_record_bad_input_is_one_line(tmp_path):
    existing = tmp_path / "bag"
    existing.mkdir()
    env = node_env(tmp_path, fastdds_profile=None)
    result = subprocess.run(record_command(existing), env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # No publisher: one line naming the topics, after --wait.
    result = subprocess.run(record_command(tmp_path / "new", "--wait", "1"), env=env, capture_output=True,
                            text=True, cwd=REPO, check=False)
    assert result.returncode == 2 and LEFT in result.stderr and "appeared within 1 s" in result.stderr
    assert not (tmp_path / "new").exists()
