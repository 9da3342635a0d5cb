"""A raw stereo camera made from a rectified pair: lens distortion and a small rotation per side, with the
camera_infos (K, D, R, P) that rectify it back. For the tests and the bench of the node's `rectify: true`.

`raw_stereo_rig(rig)` takes a `motorcycle.StereoRig` (rectified, with its projections) and gives each side a raw
camera: its own K (a shorter focal length and an off-centre principal point, so that the raw view covers the
rectified one), distortion (plumb_bob or equidistant) and the rectifying rotation R of a few tenths of a degree.
Each raw pixel is filled by the inverse mapping: the pixel is undistorted, rotated by R and projected by the
rectified P (OpenCV's `undistortPoints`, iterated to convergence), and the rectified image is sampled there.
Rectifying the raw image with these camera_infos gives the rectified pair back, up to interpolation and the raw
view's edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from stereo_devkit.motorcycle import FRAME_ID, StereoRig

# Fixed, moderate lens parameters (a typical 70-90 degree USB stereo camera): barrel distortion with a little
# decentring, and fisheye coefficients of a similar strength.
PLUMB_BOB_D = (-0.28, 0.09, 0.0012, -0.0007, -0.012)
EQUIDISTANT_D = (-0.03, 0.006, -0.002, 0.0004)
# Rotation (degrees about x, y, z) from each raw camera to the rectified frame.
LEFT_ROTATION_DEG = (0.4, -0.7, 0.5)
RIGHT_ROTATION_DEG = (0.35, -0.9, -0.3)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation of the given angles (degrees) about x, then y, then z."""
    rx, ry, rz = (np.deg2rad(a) for a in degrees)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


@dataclass(frozen=True)
class RawCamera:
    """One raw camera: intrinsics k (3x3), distortion d, rectifying rotation r (3x3), rectified projection p
    (3x4), `model` the camera_info distortion model."""

    k: np.ndarray
    d: np.ndarray
    r: np.ndarray
    p: np.ndarray
    model: str = "plumb_bob"

    def raw_view(self, rectified: np.ndarray) -> np.ndarray:
        """The raw image of a rectified one (same size; black where the raw camera sees past it)."""
        height, width = rectified.shape[:2]
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        points = np.stack([u, v], axis=-1).reshape(-1, 1, 2)
        if self.model == "equidistant":
            target = cv2.fisheye.undistortPoints(points, self.k, self.d.reshape(1, 4), R=self.r, P=self.p[:, :3],
                                                 criteria=_UNDISTORT_CRITERIA)
        else:
            iterated = getattr(cv2, "undistortPointsIter", None)  # OpenCV 4; OpenCV 5 folds it into undistortPoints
            if iterated is not None:
                target = iterated(points, self.k, self.d, self.r, self.p[:, :3], _UNDISTORT_CRITERIA)
            else:
                target = cv2.undistortPoints(points, self.k, self.d, R=self.r, P=self.p[:, :3],
                                             criteria=_UNDISTORT_CRITERIA)
        maps = target.reshape(height, width, 2).astype(np.float32)
        return cv2.remap(rectified, maps[..., 0], maps[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)

    def camera_info(self, width: int, height: int, stamp: Any = None, frame_id: str = FRAME_ID) -> Any:
        """The raw camera's sensor_msgs/CameraInfo (needs the ROS message packages)."""
        from sensor_msgs.msg import CameraInfo

        info = CameraInfo()
        info.width, info.height = int(width), int(height)
        info.distortion_model = self.model
        info.d = [float(x) for x in self.d]
        info.k = [float(x) for x in self.k.reshape(-1)]
        info.r = [float(x) for x in self.r.reshape(-1)]
        info.p = [float(x) for x in self.p.reshape(-1)]
        if stamp is not None:
            info.header.stamp = stamp
        info.header.frame_id = frame_id
        return info


@dataclass(frozen=True)
class RawStereoRig:
    """A raw pair (uint8 RGB, distorted and rotated) with its cameras; `rig` is the rectified truth."""

    rig: StereoRig
    left_camera: RawCamera
    right_camera: RawCamera
    left: np.ndarray
    right: np.ndarray

    @property
    def width(self) -> int:
        return self.rig.width

    @property
    def height(self) -> int:
        return self.rig.height

    def camera_infos(self, stamp: Any = None) -> tuple[Any, Any]:
        """(left, right) raw sensor_msgs/CameraInfo: rectifying with them gives the rig's rectified pair."""
        return (self.left_camera.camera_info(self.width, self.height, stamp),
                self.right_camera.camera_info(self.width, self.height, stamp))


def rectified_projections(rig: StereoRig) -> tuple[np.ndarray, np.ndarray]:
    """(P_left, P_right) 3x4 of the rectified rig, as camera_calibration writes them (P_right[0,3] = -f B)."""
    left = np.array([[rig.fx, 0, rig.cx_left, 0], [0, rig.fx, rig.cy, 0], [0, 0, 1, 0]], np.float64)
    right = np.array([[rig.fx, 0, rig.cx_right, -rig.fx * rig.baseline], [0, rig.fx, rig.cy, 0], [0, 0, 1, 0]],
                     np.float64)
    return left, right


def raw_stereo_rig(rig: StereoRig, model: str = "plumb_bob") -> RawStereoRig:
    """The raw stereo camera of `rig` (see the module docstring); `model`: plumb_bob or equidistant."""
    d = np.array(EQUIDISTANT_D if model == "equidistant" else PLUMB_BOB_D, np.float64)
    p_left, p_right = rectified_projections(rig)
    cameras = []
    for p, degrees, shift in ((p_left, LEFT_ROTATION_DEG, (6.3, -4.1)), (p_right, RIGHT_ROTATION_DEG, (-5.2, 3.7))):
        focal = 1.0 * rig.fx
        k = np.array([[focal, 0, rig.width / 2 + shift[0]], [0, focal * 1.002, rig.height / 2 + shift[1]], [0, 0, 1]])
        cameras.append(RawCamera(k=k, d=d, r=rotation(degrees), p=p, model=model))
    return RawStereoRig(rig, cameras[0], cameras[1], cameras[0].raw_view(rig.left), cameras[1].raw_view(rig.right))
