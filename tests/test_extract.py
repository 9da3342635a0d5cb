"""`stereo-distill extract` on real rosbag2 bags written with rosbags, in both storage formats."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from file_modes import assert_new_file_modes
from stereo_distill import cli
from stereo_distill.bag_reader import Frame, match_frames
from stereo_depth_ros.dataset_layout import read_camera_info
from stereo_distill.datasets import open_dataset

TS = get_typestore(Stores.ROS2_KILTED)
H, W = 20, 28
N_FRAMES = 8
UNMATCHED = 3  # this frame's right stamp is 30 ms off: no pair
RAW_ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "rgba8", "bgra8"]
PERIOD_NS = 100_000_000
BASE_NS = 1_700_000_000 * 10**9 + 123_456_789


def run_extract(argv: list[str]) -> int:
    """The real dispatcher (it imports only the module of the subcommand it runs)."""
    return cli.main(["extract", *argv])


def _rgb(frame: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(100 * frame + side)
    return rng.integers(0, 256, (H, W, 3), np.uint8)


def _header(stamp_ns: int, frame_id: str):
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def _raw_message(rgb: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """An Image in `encoding` and the RGB the network must receive for it (the node's conversion rules)."""
    grey16 = rgb[..., 0].astype(np.uint16) * 256 + rgb[..., 2]
    pixels, expected = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[..., ::-1], rgb),
        "rgba8": (np.dstack([rgb, np.full((H, W), 7, np.uint8)]), rgb),
        "bgra8": (np.dstack([rgb[..., ::-1], np.full((H, W), 9, np.uint8)]), rgb),
        "mono8": (rgb[..., 1], np.repeat(rgb[..., 1:2], 3, axis=2)),
        "mono16": (grey16, np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, axis=2)),
    }[encoding]
    pixels = np.ascontiguousarray(pixels)
    Image = TS.types["sensor_msgs/msg/Image"]
    msg = Image(header=_header(stamp_ns, frame_id), height=H, width=W, encoding=encoding, is_bigendian=0,
                step=pixels.strides[0], data=pixels.reshape(-1).view(np.uint8))
    return msg, expected


def _compressed_message(rgb: np.ndarray, stamp_ns: int, frame_id: str):
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
    return CompressedImage(header=_header(stamp_ns, frame_id), format="rgb8; png compressed bgr8",
                           data=png.reshape(-1))


def _camera_info(stamp_ns: int, frame_id: str, tx: float):
    CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
    RegionOfInterest = TS.types["sensor_msgs/msg/RegionOfInterest"]
    k = np.array([50.0, 0, 14, 0, 50.0, 10, 0, 0, 1])
    p = np.array([50.0, 0, 14, tx, 0, 50.0, 10, 0, 0, 0, 1, 0])
    return CameraInfo(header=_header(stamp_ns, frame_id), height=H, width=W, distortion_model="plumb_bob",
                      d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
                      roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def stamps() -> list[tuple[int, int]]:
    """(left, right) header stamps: right jittered by up to +-2 ms, frame UNMATCHED 30 ms off."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(N_FRAMES):
        left = BASE_NS + i * PERIOD_NS + int(rng.integers(-500_000, 500_000))
        jitter = 30_000_000 if i == UNMATCHED else int(rng.integers(-2_000_000, 2_000_000))
        out.append((left, left + jitter))
    return out


def write_bag(path, storage: StoragePlugin, corrupt_after: int | None = None, odd_encoding_at: int | None = None) -> dict:
    """A bag with raw topics (encodings cycling per frame), compressed topics and camera_info.

    Returns the expected RGB per (frame, side) for raw and compressed topics. With `corrupt_after`, the left raw
    message of that frame is replaced by bytes that are not a valid CDR Image (a corrupt recording). With
    `odd_encoding_at`, that frame's left raw image says "yuv422", which the node does not accept.
    """
    expected = {"raw": {}, "compressed": {}}
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {
            name: writer.add_connection(name, msgtype, typestore=TS)
            for name, msgtype in [
                ("/cam/left/image_raw", "sensor_msgs/msg/Image"),
                ("/cam/right/image_raw", "sensor_msgs/msg/Image"),
                ("/cam/left/image_raw/compressed", "sensor_msgs/msg/CompressedImage"),
                ("/cam/right/image_raw/compressed", "sensor_msgs/msg/CompressedImage"),
                ("/cam/left/camera_info", "sensor_msgs/msg/CameraInfo"),
                ("/cam/right/camera_info", "sensor_msgs/msg/CameraInfo"),
                ("/tf_static_like", "std_msgs/msg/String"),
            ]
        }
        for i, (left_ns, right_ns) in enumerate(stamps()):
            encoding = RAW_ENCODINGS[i % len(RAW_ENCODINGS)]
            # Log times out of stamp order on purpose: the right frame of odd pairs is recorded first.
            records = []
            for side, stamp in (("left", left_ns), ("right", right_ns)):
                rgb = _rgb(i, side == "right")
                msg, expected["raw"][i, side] = _raw_message(rgb, encoding, stamp, f"{side}_optical")
                if i == odd_encoding_at and side == "left":
                    msg.encoding = "yuv422"
                raw = TS.serialize_cdr(msg, "sensor_msgs/msg/Image")
                if corrupt_after is not None and i == corrupt_after and side == "left":
                    raw = raw[:30]
                comp = TS.serialize_cdr(_compressed_message(rgb, stamp, f"{side}_optical"),
                                        "sensor_msgs/msg/CompressedImage")
                expected["compressed"][i, side] = rgb
                tx = 0.0 if side == "left" else -50.0 * 0.1
                info = TS.serialize_cdr(_camera_info(stamp, f"{side}_optical", tx), "sensor_msgs/msg/CameraInfo")
                log = stamp + (1_000_000 if (i % 2 == 0) == (side == "right") else 0)
                records += [(log, f"/cam/{side}/image_raw", raw), (log, f"/cam/{side}/image_raw/compressed", comp),
                            (log, f"/cam/{side}/camera_info", info)]
            for log, topic, raw in sorted(records, key=lambda r: r[0]):
                writer.write(conns[topic], log, raw)
    return expected


def expected_names() -> list[str]:
    pairs = [left for i, (left, _) in enumerate(stamps()) if i != UNMATCHED]
    return [f"{k:06d}_{stamp}" for k, stamp in enumerate(pairs)]


def frames_of(name: str) -> int:
    """Frame number in the bag of a sample name (pair index skips the unmatched frame)."""
    k = int(name.split("_")[0])
    return k if k < UNMATCHED else k + 1


STORAGES = [StoragePlugin.SQLITE3, StoragePlugin.MCAP]


@pytest.fixture(scope="module", params=STORAGES, ids=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param.name.lower()) / "bag"
    return path, write_bag(path, request.param)


@pytest.mark.parametrize("kind", ["raw", "compressed"])
def test_pairs_pixels_stamps_and_camera_info(bag, kind, tmp_path, capsys):
    path, expected = bag
    suffix = "" if kind == "raw" else "/compressed"
    out = tmp_path / "data"
    rc = run_extract([str(path), "--left-topic", f"/cam/left/image_raw{suffix}",
                      "--right-topic", f"/cam/right/image_raw{suffix}", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "7 pairs written" in err and "1 left and 1 right frames unmatched" in err

    data = open_dataset(out)
    assert data.names() == expected_names()
    all_stamps = stamps()
    for sample in data:
        i = frames_of(sample.name)
        np.testing.assert_array_equal(sample.load_left(), expected[kind][i, "left"])
        np.testing.assert_array_equal(sample.load_right(), expected[kind][i, "right"])
        meta = json.loads((out / sample.name / "meta.json").read_text())
        assert (meta["left_stamp_ns"], meta["right_stamp_ns"]) == all_stamps[i]
        assert meta["left_frame_id"] == "left_optical"
    assert_new_file_modes(out)  # PNGs, meta.json, camera_info.yaml: 0644 under umask 022
    left_info, right_info = read_camera_info(out / "camera_info.yaml")
    p_left, p_right = left_info["projection_matrix"]["data"], right_info["projection_matrix"]["data"]
    assert p_left[0] == 50.0 and -p_right[3] / p_right[0] == pytest.approx(0.1)


def test_rerun_skips_and_completes_interrupted_samples(bag, tmp_path, capsys):
    path, expected = bag
    out = tmp_path / "data"
    argv = [str(path), "--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw",
            "--out", str(out)]
    assert run_extract(argv) == 0
    names = expected_names()
    before = {n: os.stat(out / n / "left.png").st_mtime_ns for n in names}
    # An interrupted run leaves a sample without its completion marker: the rerun redoes exactly that one.
    (out / names[2] / "meta.json").unlink()
    (out / names[2] / "right.png").unlink()
    capsys.readouterr()
    assert run_extract(argv) == 0
    err = capsys.readouterr().err
    assert "1 pairs written, 6 already present" in err
    after = {n: os.stat(out / n / "left.png").st_mtime_ns for n in names}
    assert all(after[n] == before[n] for n in names if n != names[2])
    np.testing.assert_array_equal(open_dataset(out)[2].load_right(), expected["raw"][frames_of(names[2]), "right"])
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_stride_and_limit_keep_full_sequence_names(bag, tmp_path):
    path, _ = bag
    out = tmp_path / "data"
    assert run_extract([str(path), "--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw",
                        "--out", str(out), "--stride", "2", "--limit", "3"]) == 0
    names = expected_names()
    assert open_dataset(out).names() == [names[0], names[2], names[4]]


def test_wrong_topic_lists_available_topics(bag, tmp_path, capsys):
    path, _ = bag
    rc = run_extract([str(path), "--left-topic", "/cam/left/image_rect", "--right-topic", "/cam/right/image_raw",
                      "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "'/cam/left/image_rect' is not in the bag" in err and "/cam/right/image_raw/compressed" in err
    rc = run_extract([str(path), "--left-topic", "/cam/left/camera_info", "--right-topic", "/cam/right/image_raw",
                      "--out", str(tmp_path / "d")])
    assert rc == 2 and "sensor_msgs/msg/CameraInfo" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("storage", STORAGES, ids=["sqlite3", "mcap"])
def test_truncated_bag_is_a_clear_error_and_keeps_earlier_samples(storage, tmp_path, capsys):
    path = tmp_path / "bag"
    write_bag(path, storage)
    out = tmp_path / "data"
    argv = ["--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw", "--out", str(out)]
    assert run_extract([str(path), *argv]) == 0
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    storage_file = next(p for p in broken.iterdir() if p.suffix in (".db3", ".mcap"))
    os.truncate(storage_file, storage_file.stat().st_size // 2)
    capsys.readouterr()
    assert run_extract([str(broken), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot open bag" in err and str(broken) in err
    assert open_dataset(out).names() == expected_names()


@pytest.mark.parametrize("storage", STORAGES, ids=["sqlite3", "mcap"])
def test_corrupt_message_stops_with_error_after_valid_samples(storage, tmp_path, capsys):
    path = tmp_path / "bag"
    expected = write_bag(path, storage, corrupt_after=5)
    out = tmp_path / "data"
    rc = run_extract([str(path), "--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw",
                      "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "truncated or corrupt" in err and "Traceback" not in err
    data = open_dataset(out)
    # Frames 0-4 minus the unmatched frame 3 are complete; nothing at or after the corrupt message is.
    assert data.names() == expected_names()[:4]
    for sample in data:
        np.testing.assert_array_equal(sample.load_left(), expected["raw"][frames_of(sample.name), "left"])


def test_bag_damaged_mid_file_reports_what_was_not_read(tmp_path, capsys):
    # A zeroed region in the middle of an mcap: rosbags' reader then ends early without an error, so only the
    # bag's own message counts tell that messages are missing.
    path = tmp_path / "bag"
    write_bag(path, StoragePlugin.MCAP)
    storage_file = next(path.glob("*.mcap"))
    data = bytearray(storage_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    storage_file.write_bytes(bytes(data))
    out = tmp_path / "data"
    rc = run_extract([str(path), "--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw",
                      "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert "damaged" in err and "/cam/left/image_raw" in err and "of 8" in err, err
    names = open_dataset(out).names()
    assert 0 < len(names) < len(expected_names()) and names == expected_names()[:len(names)]


def test_match_frames_mutual_nearest_within_tolerance():
    left = [Frame(0, 1000), Frame(1, 2000), Frame(2, 3000), Frame(3, 3000)]
    right = [Frame(0, 1004), Frame(1, 2990), Frame(2, 3001), Frame(3, 5000)]
    pairs = match_frames(left, right, tolerance_ns=5)
    assert [(p.left.index, p.right.index) for p in pairs] == [(0, 0), (2, 2)]
    assert [p.index for p in pairs] == [0, 1]
    assert match_frames(left, right, tolerance_ns=3) == [pairs[1].__class__(0, left[2], right[2])]


def test_unconvertible_frame_skips_its_pair_and_the_run_goes_on(tmp_path, capsys):
    path = tmp_path / "bag"
    expected = write_bag(path, StoragePlugin.SQLITE3, odd_encoding_at=1)
    out = tmp_path / "data"
    rc = run_extract([str(path), "--left-topic", "/cam/left/image_raw", "--right-topic", "/cam/right/image_raw",
                      "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "6 pairs written" in err and "1 failed" in err and "yuv422" in err
    names = expected_names()
    assert open_dataset(out).names() == [n for n in names if n != names[1]]
    np.testing.assert_array_equal(open_dataset(out)[1].load_left(), expected["raw"][2, "left"])
