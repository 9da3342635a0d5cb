"""DATA/camera_info.yaml: both cameras' calibration in camera_calibration_parsers' YAML layout.

`extract` writes it from the bag's sensor_msgs/CameraInfo; it is kept with the data for whoever needs depth.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from stereo_depth_ros.atomic_io import atomic_write_bytes

from .image_files import DatasetError

CAMERA_INFO_FILE = "camera_info.yaml"


def camera_info_to_dict(msg) -> dict:
    """A sensor_msgs/CameraInfo (rclpy or rosbags object) -> the camera_calibration_parsers YAML layout."""

    def matrix(values, rows: int, cols: int) -> dict:
        return {"rows": rows, "cols": cols, "data": [float(v) for v in values]}

    distortion = [float(v) for v in msg.d]
    return {
        "image_width": int(msg.width),
        "image_height": int(msg.height),
        "camera_name": str(msg.header.frame_id),
        "frame_id": str(msg.header.frame_id),
        "camera_matrix": matrix(msg.k, 3, 3),
        "distortion_model": str(msg.distortion_model),
        "distortion_coefficients": matrix(distortion, 1, len(distortion)),
        "rectification_matrix": matrix(msg.r, 3, 3),
        "projection_matrix": matrix(msg.p, 3, 4),
    }


def write_camera_info(path: str | Path, left: dict, right: dict) -> None:
    """DATA/camera_info.yaml: `{left: <calibration yaml>, right: <calibration yaml>}`, written atomically."""
    text = yaml.safe_dump({"left": left, "right": right}, sort_keys=False)
    atomic_write_bytes(path, text.encode())


def read_camera_info(path: str | Path) -> tuple[dict, dict]:
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read camera info {path}: {error}") from None
    if not isinstance(content, dict) or not {"left", "right"} <= set(content):
        raise DatasetError(f"camera info {path} must map 'left' and 'right' to calibration blocks")
    return content["left"], content["right"]
