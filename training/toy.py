"""Real toy stereo data that every machine has: scikit-image's Motorcycle pair cut into crops at several scales.

Used by the end-to-end loop (`make loop`), the training/export tests and the training benchmark. Crops take the
same window from both views, so each crop is still a rectified pair; its ground-truth disparity is the
Middlebury one resized with nearest neighbour and multiplied by the scale (disparity is in pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class ToyPair:
    name: str
    left: np.ndarray   # uint8 [H, W, 3] RGB
    right: np.ndarray  # uint8 [H, W, 3] RGB
    disp: np.ndarray   # float32 [H, W], NaN where unknown


def motorcycle_crops(size: tuple[int, int] = (96, 160), scales: tuple[float, ...] = (0.25, 0.35),
                     crops_per_scale: int = 3, seed: int = 0, rows: tuple[float, float] = (0.0, 1.0),
                     prefix: str = "moto") -> list[ToyPair]:
    """`crops_per_scale` random windows of `size` from Motorcycle resized by each of `scales`.

    rows: the band of the image (fractions of its height) the windows come from. Bands that do not overlap give
    sets that share no scene point: in a rectified pair a point stays in its row in both views, so a held-out
    band is unseen however the training band is cropped or scaled.
    """
    from stereo_devkit.motorcycle import load_motorcycle

    left, right, disp = load_motorcycle()
    rng = np.random.default_rng(seed)
    out = []
    h, w = size
    for scale in scales:
        sw, sh = int(round(left.shape[1] * scale)), int(round(left.shape[0] * scale))
        if sh < h or sw < w:
            raise ValueError(f"scale {scale} gives {sh}x{sw}, smaller than the crop {h}x{w}")
        l_s = cv2.resize(left, (sw, sh), interpolation=cv2.INTER_AREA)
        r_s = cv2.resize(right, (sw, sh), interpolation=cv2.INTER_AREA)
        d_s = cv2.resize(disp, (sw, sh), interpolation=cv2.INTER_NEAREST) * np.float32(sw / left.shape[1])
        top, bottom = int(np.ceil(rows[0] * sh)), int(np.floor(rows[1] * sh))
        if bottom - top < h:
            raise ValueError(f"rows {rows} at scale {scale} span {bottom - top} rows, fewer than the crop's {h}")
        for i in range(crops_per_scale):
            y0, x0 = int(rng.integers(top, bottom - h + 1)), int(rng.integers(0, sw - w + 1))
            window = (slice(y0, y0 + h), slice(x0, x0 + w))
            out.append(ToyPair(f"{prefix}_s{int(round(scale * 100)):03d}_{i:02d}", np.ascontiguousarray(l_s[window]),
                               np.ascontiguousarray(r_s[window]), np.ascontiguousarray(d_s[window])))
    return out


def write_data(root: str | Path, pairs: list[ToyPair], with_ground_truth: bool = True) -> Path:
    """DATA/<name>/left.png, right.png and (optionally) left_disp.png (uint16, disparity x 100, 0 = invalid)."""
    from stereo_depth_ros.dataset_layout import write_image

    from .image_files import write_scaled_disparity_png

    root = Path(root)
    for pair in pairs:
        folder = root / pair.name
        folder.mkdir(parents=True, exist_ok=True)
        write_image(folder / "left.png", pair.left)
        write_image(folder / "right.png", pair.right)
        if with_ground_truth:
            write_scaled_disparity_png(folder / "left_disp.png", pair.disp, 100.0)
    return root


def write_label(root: str | Path, name: str, disp: np.ndarray, valid: np.ndarray) -> None:
    """LABELS/<name>/ exactly as `stereo-distill label` writes it (for tests that need labels but no teacher)."""
    from .label import write_label as write_label_folder

    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    write_label_folder(folder, np.nan_to_num(disp, nan=0.0).astype(np.float32), np.asarray(valid, bool))


def write_bag(path: str | Path, pairs: list[ToyPair], left_topic: str, right_topic: str,
              period_ns: int = 100_000_000, storage: str = "sqlite3") -> list[int]:
    """A rosbag2 with one rgb8 Image per view per pair (same stamp) and camera_info beside each image topic.

    Returns the left stamps in pair order. The calibration is Motorcycle's, scaled to the crop (approximate for
    crops of different scales: the toy loop does not use depth).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image = ts.types["sensor_msgs/msg/Image"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    RegionOfInterest = ts.types["sensor_msgs/msg/RegionOfInterest"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    stamps = []
    base = 1_700_000_000 * 10**9
    info_topic = lambda topic: topic.rsplit("/", 1)[0] + "/camera_info"  # noqa: E731
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, "sensor_msgs/msg/Image", typestore=ts) for t in (left_topic, right_topic)}
        info_conns = {t: writer.add_connection(info_topic(t), "sensor_msgs/msg/CameraInfo", typestore=ts)
                      for t in (left_topic, right_topic)}
        for i, pair in enumerate(pairs):
            stamp = base + i * period_ns
            stamps.append(stamp)
            h, w = pair.left.shape[:2]
            f = 994.978 * w / 741.0
            for topic, image, tx in ((left_topic, pair.left, 0.0), (right_topic, pair.right, -f * 0.193001)):
                header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                frame_id="left_optical" if topic == left_topic else "right_optical")
                pixels = np.ascontiguousarray(image)
                msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                            data=pixels.reshape(-1))
                writer.write(conns[topic], stamp, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
                info = CameraInfo(
                    header=header, height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5),
                    k=np.array([f, 0, w / 2, 0, f, h / 2, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
                    p=np.array([f, 0, w / 2, tx, 0, f, h / 2, 0, 0, 0, 1, 0]), binning_x=0, binning_y=0,
                    roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
                writer.write(info_conns[topic], stamp, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
    return stamps
