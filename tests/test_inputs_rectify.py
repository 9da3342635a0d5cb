"""Rectification from camera_info (stereo_depth_ros/inputs/rectify.py): a raw pair synthesised from the rectified
Motorcycle pair with a known K, D, R, P (stereo_devkit/raw_camera.py, the inverse mapping) comes back to the
rectified pair; equidistant and rational_polynomial too; maps are built once per camera_info content; every kind
of camera_info that cannot rectify its image is one clear error."""
from types import SimpleNamespace

import numpy as np
import pytest

from stereo_depth_ros.inputs.rectify import RectificationError, RectificationMap, Rectifier
from stereo_devkit.motorcycle import motorcycle_rig
from stereo_devkit.raw_camera import RawCamera, raw_stereo_rig, rotation

RIG = motorcycle_rig(320)


def info_of(camera: RawCamera, width: int = RIG.width, height: int = RIG.height, **changes) -> SimpleNamespace:
    fields = dict(width=width, height=height, distortion_model=camera.model, d=list(camera.d),
                  k=camera.k.reshape(-1).tolist(), r=camera.r.reshape(-1).tolist(), p=camera.p.reshape(-1).tolist(),
                  binning_x=0, binning_y=0, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0),
                  header="hdr")
    fields.update(changes)
    return SimpleNamespace(**fields)


def interior_error(rectified: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(median |difference| inside the part the raw view covers, 15 px from the edges; that part's share)."""
    covered = rectified.max(axis=2) > 0
    covered[:15], covered[-15:], covered[:, :15], covered[:, -15:] = False, False, False, False
    return float(np.median(np.abs(rectified.astype(int) - truth)[covered])), float(covered.mean())


@pytest.mark.parametrize("model", ["plumb_bob", "equidistant"])
def test_synthesised_raw_pair_rectifies_back_to_the_rectified_pair(model):
    raw = raw_stereo_rig(RIG, model)
    for camera, image, truth in ((raw.left_camera, raw.left, RIG.left), (raw.right_camera, raw.right, RIG.right)):
        # The distortion is real: the raw image is far from the rectified one.
        assert np.abs(image.astype(int) - truth).mean() > 20
        rectified, info = Rectifier().rectify(image, info_of(camera))
        error, share = interior_error(rectified, truth)
        assert error <= 2.0 and share > 0.7, (error, share)
        # The rectified camera_info: K and P from P, no distortion, identity R.
        assert info.header == "hdr" and (info.width, info.height) == (RIG.width, RIG.height)
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), camera.p[:, :3])
        np.testing.assert_allclose(np.reshape(info.p, (3, 4)), camera.p)
        assert info.distortion_model == "plumb_bob" and not any(info.d) and info.r == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_rational_polynomial_with_zero_extra_terms_matches_plumb_bob():
    raw = raw_stereo_rig(RIG)
    camera = raw.left_camera
    rational = info_of(camera, distortion_model="rational_polynomial", d=list(camera.d) + [0.0, 0.0, 0.0])
    plumb = Rectifier().rectify(raw.left, info_of(camera))[0]
    np.testing.assert_array_equal(Rectifier().rectify(raw.left, rational)[0], plumb)


def test_mono_and_sixteen_bit_images_keep_their_layout():
    raw = raw_stereo_rig(RIG)
    grey = raw.left[..., 1].copy()
    rectified, _ = Rectifier().rectify(grey, info_of(raw.left_camera))
    assert rectified.shape == grey.shape and rectified.dtype == np.uint8
    wide = grey.astype(np.uint16) * 256
    rectified16, _ = Rectifier().rectify(wide, info_of(raw.left_camera))
    assert rectified16.dtype == np.uint16
    assert np.abs((rectified16 >> 8).astype(int) - rectified).max() <= 1


def test_an_already_rectified_camera_passes_its_pixels_through():
    p = np.array([[300.0, 0, 160, -30], [0, 300, 100, 0], [0, 0, 1, 0]])
    info = SimpleNamespace(width=RIG.width, height=RIG.height, distortion_model="plumb_bob", d=[0.0] * 5,
                           k=p[:, :3].reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                           p=p.reshape(-1).tolist(), header=None)
    rectified, _ = Rectifier().rectify(RIG.left, info)
    assert rectified is RIG.left


def test_maps_are_built_once_per_camera_info_content():
    raw = raw_stereo_rig(RIG)
    rectifier = Rectifier()
    first, _ = rectifier.rectify(raw.left, info_of(raw.left_camera))
    for _ in range(3):  # new messages, same content (as every frame of a stream)
        again, _ = rectifier.rectify(raw.left, info_of(raw.left_camera, header="other stamp"))
        np.testing.assert_array_equal(again, first)
    assert rectifier.builds == 1
    tilted = RawCamera(raw.left_camera.k, raw.left_camera.d, rotation((0.0, 0.0, 1.0)), raw.left_camera.p)
    changed, _ = rectifier.rectify(raw.left, info_of(tilted))
    assert rectifier.builds == 2 and np.abs(changed.astype(int) - first).mean() > 3
    # A bad camera_info is remembered too: one validation for a stream of it.
    bad = info_of(raw.left_camera, distortion_model="fisheye")
    for _ in range(3):
        with pytest.raises(RectificationError):
            rectifier.rectify(raw.left, bad)
    assert rectifier.builds == 3


CAMERA = raw_stereo_rig(RIG).left_camera


@pytest.mark.parametrize("changes, message", [
    (dict(distortion_model="fisheye"), "distortion model 'fisheye' is not supported; supported: plumb_bob, "),
    (dict(d=[0.1, 0.2, 0.0]), "D has 3 coefficients; plumb_bob takes 4 or 5"),
    (dict(distortion_model="equidistant", d=[0.1] * 5), "D has 5 coefficients; equidistant takes 4"),
    (dict(k=[0.0] * 9), "K is singular (fx 0, fy 0)"),
    (dict(k=[300.0, 0, 160, 0, 300, 100, 0, 0]), "K has 8 values, expected 9 (3x3)"),
    (dict(r=[0.0] * 9), "R is all zero"),
    (dict(r=[1.0, 0, 0, 0, 2.0, 0, 0, 0, 1]), "R is not a rotation matrix"),
    (dict(p=[300.0, 0, 160, 0, 300, 100, 0, 0, 1]), "P has 9 values, expected 12 (3x4)"),
    (dict(p=[0.0] * 12), "P has no usable focal length"),
    (dict(p=[float("nan")] * 12), "P has values that are not finite"),
    (dict(width=0, height=0), "camera_info has no image size (0x0)"),
    (dict(binning_x=2, binning_y=2), "binning 2x2: the node does not rectify binned images"),
    (dict(roi=SimpleNamespace(x_offset=8, y_offset=4, width=100, height=80)), "region of interest (x 8, y 4"),
])
def test_camera_info_that_cannot_rectify_is_one_clear_error(changes, message):
    with pytest.raises(RectificationError) as info:
        RectificationMap.from_camera_info(info_of(CAMERA, **changes))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_camera_info_for_another_image_size_is_one_clear_error():
    with pytest.raises(RectificationError, match=r"camera_info is for 640x432 images but the image is 320x216"):
        Rectifier().rectify(RIG.left, info_of(CAMERA, width=640, height=432))
