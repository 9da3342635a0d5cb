"""Stereo geometry from camera_info: formula at known pixels, point geometry, scaling, degenerate projections."""
from types import SimpleNamespace

import numpy as np
import pytest

from stereo_depth_ros.camera_geometry import (
    POINT_STEP, CameraGeometryError, StereoCamera, cloud_array, depth_to_points, disparity_image_fields,
    disparity_to_camera, disparity_to_depth, fill_disparity_image, fill_pointcloud2, pack_rgb, resize_pair,
    working_size)
from stereo_depth_ros.image_conversion import image_to_array

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
    assert cam.doffs == 0.0 and (cam.width, cam.height) == (W, H)


def test_depth_formula_at_known_pixels_and_nan_for_invalid():
    cam = StereoCamera.from_camera_info(*infos())
    disparity = np.array([[60.0, 30.0, 0.0], [-2.0, np.nan, np.inf]], np.float32)
    depth = disparity_to_depth(disparity, cam)
    assert depth.dtype == np.float32
    assert depth[0, 0] == pytest.approx(F * B / 60.0, rel=1e-6)
    assert depth[0, 1] == pytest.approx(F * B / 30.0, rel=1e-6)
    assert np.isnan(depth[0, 2]) and np.isnan(depth[1]).all()


def test_confidence_threshold_masks_depth():
    cam = StereoCamera.from_camera_info(*infos())
    disparity = np.full((2, 2), 50.0, np.float32)
    confidence = np.array([[0.9, 0.5], [0.49, np.nan]], np.float32)
    depth = disparity_to_depth(disparity, cam, confidence, confidence_threshold=0.5)
    assert np.isfinite(depth[0]).all() and np.isnan(depth[1]).all()
    assert np.isfinite(disparity_to_depth(disparity, cam, confidence, 0.0)).all()


def test_principal_point_offset_like_middlebury():
    # skimage's Motorcycle: cx_right - cx_left = doffs; depth = f * B / (d + doffs)
    left, right = infos(f=994.978, baseline=0.193001, cx_left=311.193, cx_right=311.193 + 31.086)
    cam = StereoCamera.from_camera_info(left, right)
    assert cam.doffs == pytest.approx(31.086)
    depth = disparity_to_depth(np.array([[100.0]], np.float32), cam)
    assert depth[0, 0] == pytest.approx(994.978 * 0.193001 / 131.086, rel=1e-5)
    fields = disparity_image_fields(np.array([[100.0, np.nan]], np.float32), cam, max_disparity=192)
    # the DisparityImage carries d + doffs so that Z = f * t / d holds for its consumers
    assert fields.image[0, 0] == pytest.approx(131.086, rel=1e-6)
    assert fields.f * fields.t / fields.image[0, 0] == pytest.approx(depth[0, 0], rel=1e-5)


def test_point_geometry_at_known_pixels():
    cam = StereoCamera.from_camera_info(*infos())
    depth = np.full((H, W), np.nan, np.float32)
    depth[10, 600] = 2.0
    depth[int(CY), int(CX)] = 5.0
    points = depth_to_points(depth, cam)
    assert points.shape == (H, W, 3)
    np.testing.assert_allclose(points[10, 600], [(600 - CX) * 2.0 / F, (10 - CY) * 2.0 / F, 2.0], rtol=1e-5)
    np.testing.assert_allclose(points[240, 320], [(320 - CX) * 5 / F, (240 - CY) * 5 / F, 5.0], rtol=1e-5)
    assert np.isnan(points[0, 0]).all()
    # re-projecting the point gives back the pixel
    x, y, z = points[10, 600]
    assert F * x / z + CX == pytest.approx(600, abs=1e-3) and F * y / z + CY == pytest.approx(10, abs=1e-3)


def test_cloud_layout_and_packed_colour_in_a_real_pointcloud2():
    msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs not installed")
    cam = StereoCamera.from_camera_info(*infos(width=4, height=3, cx_left=1.5, cx_right=1.5, cy=1.0))
    depth = np.array([[1, 2, np.nan, 4], [1, 1, 1, 1], [3, 3, 3, 3]], np.float32)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 1] = (0x12, 0x34, 0x56)
    cloud = cloud_array(depth, cam, rgb)
    msg = fill_pointcloud2(msgs.PointCloud2(check_fields=True), cloud, msgs.PointField)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (3, 4, POINT_STEP, 64)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, msgs.PointField.FLOAT32, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert not msg.is_dense and len(msg.data) == 3 * 4 * 16
    raw = np.frombuffer(bytes(msg.data), np.float32).reshape(3, 4, 4)
    assert raw[0, 1, 2] == 2.0 and raw[0, 1, 0] == pytest.approx((1 - 1.5) * 2 / F)
    assert raw[0, 1, 3:].view(np.uint32)[0] & 0xFFFFFF == 0x123456
    assert np.isnan(raw[0, 2, :3]).all()


def test_pack_rgb_bits():
    packed = pack_rgb(np.array([[[255, 0, 1]]], np.uint8))
    assert packed.dtype == np.float32 and packed.view(np.uint32)[0, 0] == 0xFFFF0001


def test_disparity_image_fields_and_message():
    cam = StereoCamera.from_camera_info(*infos())
    disparity = np.full((6, 8), np.nan, np.float32)
    disparity[2:4, 3:7] = 40.0
    fields = disparity_image_fields(disparity, cam, max_disparity=192)
    assert (fields.f, fields.min_disparity, fields.max_disparity) == (F, 0.0, 192.0)
    assert fields.t == pytest.approx(B)
    assert fields.valid_window == (3, 2, 4, 2)
    assert fields.image[0, 0] == -1.0 and fields.image[2, 3] == 40.0
    assert np.isnan(disparity[0, 0])  # input untouched
    empty = disparity_image_fields(np.full((2, 2), np.nan, np.float32), None, 64)
    assert empty.valid_window == (0, 0, 0, 0) and empty.f == 0.0 and empty.t == 0.0
    stereo = pytest.importorskip("stereo_msgs.msg", reason="ROS 2 stereo_msgs not installed")
    msg = fill_disparity_image(stereo.DisparityImage(check_fields=True), fields)
    assert msg.image.encoding == "32FC1" and msg.valid_window.width == 4 and msg.delta_d == 1 / 16
    np.testing.assert_array_equal(image_to_array(msg.image), fields.image)


@pytest.mark.parametrize("mutate, match", [
    (lambda l, r: setattr(r, "p", [0.0] * 12), "no projection"),
    (lambda l, r: r.p.__setitem__(0, 0.0), "focal length"),
    (lambda l, r: r.p.__setitem__(0, float("nan")), "NaN"),
    (lambda l, r: r.p.__setitem__(3, float("nan")), "NaN"),
    (lambda l, r: r.p.__setitem__(3, 0.0), "no baseline"),
    (lambda l, r: r.p.__setitem__(3, 60.0), "negative"),
    (lambda l, r: setattr(r, "p", [1.0] * 9), "12"),
    (lambda l, r: (setattr(l, "p", [0.0] * 12), setattr(l, "k", [0.0] * 9)), "neither"),
    (lambda l, r: l.p.__setitem__(5, float("nan")), "NaN"),
])
def test_degenerate_projection_raises_naming_the_problem(mutate, match):
    left, right = infos()
    mutate(left, right)
    with pytest.raises(CameraGeometryError, match=match):
        StereoCamera.from_camera_info(left, right)


def test_missing_camera_info():
    left, _ = infos()
    with pytest.raises(CameraGeometryError, match="right"):
        StereoCamera.from_camera_info(left, None)


def test_left_intrinsics_fall_back_to_k():
    left, right = infos()
    left.p = [0.0] * 12
    assert StereoCamera.from_camera_info(left, right).cy == CY


def test_scaling_keeps_depth_consistent():
    cam = StereoCamera.from_camera_info(*infos())
    half = cam.scaled(W // 2, H // 2)
    assert half.fx == F / 2 and half.baseline == cam.baseline
    assert half.cx == pytest.approx((CX + 0.5) / 2 - 0.5)
    # the same scene point: disparity halves with the image, depth is unchanged
    assert disparity_to_depth(np.array([[20.0]], np.float32), half)[0, 0] == pytest.approx(
        disparity_to_depth(np.array([[40.0]], np.float32), cam)[0, 0])
    with pytest.raises(CameraGeometryError, match="width"):
        StereoCamera(1, 1, 0, 0, 0.1).scaled(10, 10)


def test_working_resolution_round_trip():
    assert working_size(640, 480, 0, 0) == (640, 480)
    assert working_size(640, 480, 320, 240) == (320, 240)
    left = np.zeros((480, 640, 3), np.uint8)
    small_l, small_r = resize_pair(left, left, 320, 240)
    assert small_l.shape == (240, 320, 3) and resize_pair(left, left, 640, 480)[0] is left
    disparity = np.full((240, 320), 10.0, np.float32)
    disparity[0, 0] = np.nan
    confidence = np.full((240, 320), 0.5, np.float32)
    full, conf = disparity_to_camera(disparity, 640, 480, confidence)
    assert full.shape == (480, 640) and conf.shape == (480, 640)
    assert full[100, 100] == 20.0  # disparity values scale with the width
    assert np.isnan(full[0, 0]) and np.isnan(full[1, 1]) and np.isfinite(full[2, 2])


def test_real_camera_info_messages():
    msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs not installed")
    left, right = msgs.CameraInfo(), msgs.CameraInfo()
    for msg, ns in zip((left, right), infos()):
        msg.width, msg.height, msg.k, msg.p = ns.width, ns.height, ns.k, ns.p
    cam = StereoCamera.from_camera_info(left, right)
    assert (cam.fx, cam.cx, cam.width) == (F, CX, W) and cam.baseline == pytest.approx(B)
    with pytest.raises(CameraGeometryError, match="no projection"):
        StereoCamera.from_camera_info(left, msgs.CameraInfo())  # a default (all-zero) camera_info
