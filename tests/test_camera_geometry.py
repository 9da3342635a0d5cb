"""Stereo geometry from camera_info: focal length and baseline, principal points, sizes, degenerate values."""
from types import SimpleNamespace

import pytest

from stereo_depth_ros.camera_geometry import CameraGeometryError, StereoCamera

F, B, CX, CY, W, H = 500.0, 0.12, 320.5, 240.25, 640, 480


def infos(f=F, baseline=B, cx_left=CX, cx_right=CX, cy=CY, width=W, height=H):
    """Rectified left/right camera_info as a ROS driver publishes them (P_right[0,3] = -f * baseline)."""
    def info(cx, tx):
        return SimpleNamespace(
            width=width, height=height,
            k=[f, 0, cx, 0, f, cy, 0, 0, 1],
            p=[f, 0, cx, tx, 0, f, cy, 0, 0, 0, 1, 0])
    return info(cx_left, 0.0), info(cx_right, -f * baseline)


def test_focal_and_baseline_from_the_right_projection():
    cam = StereoCamera.from_camera_info(*infos())
    assert cam.fx == F and cam.fy == F and cam.cx == CX and cam.cy == CY
    assert cam.baseline == pytest.approx(B)
    assert cam.doffs == 0.0 and (cam.width, cam.height) == (W, H) and (cam.right_width, cam.right_height) == (W, H)


def test_principal_point_offset_like_middlebury():
    left, right = infos(f=994.978, baseline=0.193001, cx_left=311.193, cx_right=311.193 + 31.086)
    assert StereoCamera.from_camera_info(left, right).doffs == pytest.approx(31.086)


@pytest.mark.parametrize("mutate, match", [
    (lambda left, r: setattr(r, "p", [0.0] * 12), "no projection"),
    (lambda left, r: r.p.__setitem__(0, 0.0), "focal length"),
    (lambda left, r: r.p.__setitem__(0, float("nan")), "NaN"),
    (lambda left, r: r.p.__setitem__(3, float("nan")), "NaN"),
    (lambda left, r: r.p.__setitem__(3, 0.0), "no baseline"),
    (lambda left, r: r.p.__setitem__(3, 60.0), "negative"),
    (lambda left, r: setattr(r, "p", [1.0] * 9), "12"),
    (lambda left, r: (setattr(left, "p", [0.0] * 12), setattr(left, "k", [0.0] * 9)), "neither"),
    (lambda left, r: left.p.__setitem__(5, float("nan")), "NaN"),
])
def test_degenerate_projection_raises_naming_the_problem(mutate, match):
    left, right = infos()
    mutate(left, right)
    with pytest.raises(CameraGeometryError, match=match):
        StereoCamera.from_camera_info(left, right)


@pytest.mark.parametrize("kwargs, match", [
    ({"f": 1e300}, "beyond float32's range"),  # finite in float64, inf in the DisparityImage's float32 f
    ({"f": 1e20, "baseline": 1e20}, "f \\* baseline .* beyond float32"),
    ({"cx_left": 1e39}, "principal point cx .* beyond float32"),
    ({"f": 1e-46}, "too small for float32"),
])
def test_values_float32_cannot_hold_are_refused(kwargs, match):
    with pytest.raises(CameraGeometryError, match=match):
        StereoCamera.from_camera_info(*infos(**kwargs))


def test_size_problem_checks_both_sides():
    left, right = infos()
    cam = StereoCamera.from_camera_info(left, right)
    assert cam.size_problem(W, H) is None
    assert cam.size_problem(W // 2, H // 2) == f"left camera_info is for {W}x{H} but the images are 320x240"
    right.width, right.height = W // 2, H // 2  # a right camera_info made for another size
    assert StereoCamera.from_camera_info(left, right).size_problem(W, H) == \
        f"right camera_info is for 320x240 but the images are {W}x{H}"
    left.width = left.height = right.width = right.height = 0  # no size given: taken to fit
    assert StereoCamera.from_camera_info(left, right).size_problem(W, H) is None


def test_missing_camera_info():
    left, _ = infos()
    with pytest.raises(CameraGeometryError, match="right"):
        StereoCamera.from_camera_info(left, None)


def test_left_intrinsics_fall_back_to_k():
    left, right = infos()
    left.p = [0.0] * 12
    assert StereoCamera.from_camera_info(left, right).cy == CY


def test_real_camera_info_messages():
    msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs not installed")
    left, right = msgs.CameraInfo(), msgs.CameraInfo()
    for msg, ns in zip((left, right), infos()):
        msg.width, msg.height, msg.k, msg.p = ns.width, ns.height, ns.k, ns.p
    cam = StereoCamera.from_camera_info(left, right)
    assert (cam.fx, cam.cx, cam.width) == (F, CX, W) and cam.baseline == pytest.approx(B)
    with pytest.raises(CameraGeometryError, match="no projection"):
        StereoCamera.from_camera_info(left, msgs.CameraInfo())  # a default (all-zero) camera_info
