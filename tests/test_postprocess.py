"""Post-processing at known pixels: depth, points, the DisparityImage map, masks, bands, and numpy == torch."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import stereo_depth_ros.array_ops as array_ops
from stereo_depth_ros.camera_geometry import StereoCamera
from stereo_depth_ros.postprocess import OutputBuffers, OutputRequest, pack_rgb, postprocess, rescale

F, B, CX, CY, W, H = 500.0, 0.12, 320.5, 240.25, 640, 480


def camera(cx_right=CX, f=F, width=W, height=H):
    def info(cx, tx):
        return SimpleNamespace(width=width, height=height, k=[f, 0, cx, 0, f, CY, 0, 0, 1],
                               p=[f, 0, cx, tx, 0, f, CY, 0, 0, 0, 1, 0])
    return StereoCamera.from_camera_info(info(CX, 0.0), info(cx_right, -f * B))


def run(disparity, confidence=None, rgb=None, cam=None, request=None, threshold=0.0, drange=192.0):
    h, w = disparity.shape
    request = request or OutputRequest()
    return postprocess(disparity, confidence, rgb, cam, request, OutputBuffers(h, w),
                       confidence_threshold=threshold, disparity_range=drange)


def test_depth_points_and_disparity_map_at_known_pixels():
    d = np.full((H, W), np.nan, np.float32)
    d[10, 600], d[240, 320], d[300, 5] = 30.0, 60.0, 0.0  # 0: no depth
    d[400, 400], d[401, 401] = -2.0, np.inf
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[10, 600] = (0x12, 0x34, 0x56)
    conf = np.full((H, W), 0.5, np.float32)
    out = run(d, conf, rgb, camera())
    depth, points, disp = out.depth.array, out.points.array, out.disparity.array
    assert depth[10, 600] == pytest.approx(F * B / 30.0, rel=1e-6)
    assert depth[240, 320] == pytest.approx(F * B / 60.0, rel=1e-6)
    for v, u in ((300, 5), (400, 400), (401, 401), (0, 0)):
        assert np.isnan(depth[v, u]) and np.isnan(points[v, u, :3]).all() and disp[v, u] == -1.0
    z = F * B / 30.0
    np.testing.assert_allclose(points[10, 600, :3], [(600 - CX) * z / F, (10 - CY) * z / F, z], rtol=1e-5)
    assert points[10, 600, 3:].view(np.uint32)[0] == 0xFF123456
    assert disp[10, 600] == 30.0 and disp[240, 320] == 60.0
    assert out.valid_window == (320, 10, 281, 231) and out.valid_share == pytest.approx(2 / (H * W))
    assert (out.f, out.min_disparity, out.max_disparity) == (F, 0.0, 192.0) and out.t == pytest.approx(B)
    np.testing.assert_array_equal(out.confidence.array, conf)
    # Message-ready: the bytes the message will carry are these arrays.
    assert bytes(out.depth.data) == depth.tobytes() and len(out.points.data) == H * W * 16


def test_principal_point_offset_like_middlebury():
    cam = camera(cx_right=CX + 31.086)
    d = np.full((4, 4), 100.0, np.float32)
    d[0, 0] = -40.0  # d + doffs < 0: invalid
    out = run(d, cam=camera(cx_right=CX + 31.086, width=4, height=4))
    assert cam.doffs == pytest.approx(31.086)
    assert out.disparity.array[1, 1] == pytest.approx(131.086, rel=1e-6)
    assert out.depth.array[1, 1] == pytest.approx(F * B / 131.086, rel=1e-5)
    assert out.f * out.t / out.disparity.array[1, 1] == pytest.approx(out.depth.array[1, 1], rel=1e-5)
    assert out.min_disparity == pytest.approx(31.086) and out.disparity.array[0, 0] == pytest.approx(30.086)


def test_confidence_threshold_masks_depth_and_disparity_once():
    d = np.full((2, 3), 50.0, np.float32)
    conf = np.array([[0.9, 0.5, 0.49], [np.nan, 1.0, 0.0]], np.float32)
    out = run(d, conf, cam=camera(width=3, height=2), threshold=0.5)
    expected = np.array([[True, True, False], [False, True, False]])
    np.testing.assert_array_equal(np.isfinite(out.depth.array), expected)
    np.testing.assert_array_equal(out.disparity.array >= 0, expected)
    assert out.valid_share == pytest.approx(0.5)
    assert np.isfinite(run(d, conf, cam=camera(width=3, height=2)).depth.array).all()


def test_only_requested_outputs_and_disparity_only_without_camera():
    d = np.full((8, 8), 10.0, np.float32)
    out = run(d, np.ones((8, 8), np.float32), cam=camera(width=8, height=8),
              request=OutputRequest(disparity=False, depth=True, points=False, confidence=False))
    assert out.depth is not None and out.disparity is None and out.points is None and out.confidence is None
    out = run(d, None, cam=None)
    assert out.depth is None and out.points is None and (out.f, out.t) == (0.0, 0.0)
    assert out.disparity is not None and (out.disparity.array == 10.0).all()


def test_bands_give_the_same_outputs_as_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    d = rng.uniform(-5, 100, (97, 131)).astype(np.float32)
    d[rng.random(d.shape) < 0.2] = np.nan
    conf = rng.random(d.shape).astype(np.float32)
    rgb = rng.integers(0, 256, (97, 131, 3), np.uint8)
    cam = camera(width=131, height=97)
    whole = run(d, conf, rgb, cam, threshold=0.3)
    monkeypatch.setattr(array_ops, "BAND_PIXELS", 131 * 7)  # 14 bands, the last one short
    banded = run(d, conf, rgb, cam, threshold=0.3)
    for name in ("disparity", "depth", "points", "confidence"):
        np.testing.assert_array_equal(getattr(banded, name).array, getattr(whole, name).array)
    assert banded.valid_window == whole.valid_window and banded.valid_share == whole.valid_share


def test_torch_tensors_give_the_numpy_values():
    """The one definition on CPU torch tensors (how a CUDA backend's device outputs run through it)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    d = rng.uniform(0.5, 90, (48, 64)).astype(np.float32)
    d[rng.random(d.shape) < 0.15] = np.nan
    d[3, 4], d[5, 6] = -1.0, np.inf
    conf = rng.random(d.shape).astype(np.float32)
    rgb = rng.integers(0, 256, (48, 64, 3), np.uint8)
    cam = camera(cx_right=CX + 3.5, width=64, height=48)
    expected = run(d, conf, rgb, cam, threshold=0.25)
    got = run(torch.from_numpy(d), torch.from_numpy(conf), rgb, cam, threshold=0.25)
    for name in ("disparity", "depth", "points", "confidence"):
        a, b = getattr(expected, name).array, getattr(got, name).array
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
    # known pixels, exactly
    for v, u in ((0, 0), (10, 20), (3, 4), (5, 6), (47, 63)):
        assert np.array_equal(got.depth.array[v, u], expected.depth.array[v, u], equal_nan=True)
        assert got.disparity.array[v, u] == expected.disparity.array[v, u]
    assert (got.valid_share, got.valid_window) == (expected.valid_share, expected.valid_window)
    # Working-size rescale: nearest neighbour, values scaled by the width ratio, on both kinds.
    small = d[::2, ::2].copy()
    np_full, _ = rescale(small, None, 64, 48)
    torch_full, _ = rescale(torch.from_numpy(small), None, 64, 48)
    np.testing.assert_array_equal(torch_full.numpy(), np_full)
    small[1, 1] = 7.0
    assert rescale(small, None, 64, 48)[0][2, 2] == 14.0


def test_pack_rgb_bits():
    packed = pack_rgb(np.array([[[255, 0, 1]]], np.uint8))
    assert packed.dtype == np.float32 and packed.view(np.uint32)[0, 0] == 0xFFFF0001


def test_messages_wrap_the_buffers():
    from stereo_depth_ros import messages as msgs  # the ROS message packages are part of every install
    d = np.full((3, 4), np.nan, np.float32)
    d[1, 1:3] = 40.0
    out = run(d, None, np.zeros((3, 4, 3), np.uint8), camera(width=4, height=3), drange=64.0)
    header = SimpleNamespace()
    from std_msgs.msg import Header
    header = Header(frame_id="cam")
    disparity = msgs.disparity_message(out, header)
    assert disparity.image.encoding == "32FC1" and disparity.image.step == 16 and disparity.max_disparity == 64.0
    assert (disparity.valid_window.x_offset, disparity.valid_window.width) == (1, 2)
    assert np.frombuffer(disparity.image.data, np.float32)[5] == 40.0
    cloud = msgs.cloud_message(out.points, header)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step, cloud.is_dense) == (3, 4, 16, 64, False)
    # Reused messages follow the reused buffers: same object, new header.
    builder = msgs.OutputMessages()
    first = builder.image("depth", out.depth, header)
    assert builder.image("depth", out.depth, Header(frame_id="other")) is first and first.header.frame_id == "other"


@pytest.mark.parametrize("threshold, confident_at", [(0.0, 0.5), (0.3, 0.6), (0.3, 0.3)])
def test_confident_share_in_bands_and_on_torch(monkeypatch, threshold, confident_at):
    """The hard-pair capture's figure: valid disparity and confidence >= confident_at, over all pixels; the same
    in bands, in one pass and on torch tensors (and the valid share when it is the same mask)."""
    rng = np.random.default_rng(2)
    d = rng.uniform(-5, 100, (97, 131)).astype(np.float32)
    d[rng.random(d.shape) < 0.2] = np.nan
    conf = rng.random(d.shape).astype(np.float32)
    cam = camera(cx_right=CX + 2.0, width=131, height=97)
    expected = float(np.mean(np.isfinite(d) & (d + 2.0 > 0) & (conf >= confident_at)))

    def share(disparity, confidence):
        return postprocess(disparity, confidence, None, cam, OutputRequest(points=False), OutputBuffers(97, 131),
                           confidence_threshold=threshold, confident_at=confident_at)

    whole = share(d, conf)
    assert whole.confident_share == pytest.approx(expected, abs=1e-12) and 0.1 < expected < 0.9
    if confident_at == threshold:
        assert whole.confident_share == whole.valid_share
    monkeypatch.setattr(array_ops, "BAND_PIXELS", 131 * 7)
    banded = share(d, conf)
    assert banded.confident_share == whole.confident_share
    np.testing.assert_array_equal(banded.depth.array, whole.depth.array)  # the capture mask left the outputs alone
    torch = pytest.importorskip("torch")
    assert share(torch.from_numpy(d), torch.from_numpy(conf)).confident_share == whole.confident_share
    # Not asked for: not computed. Without a confidence map every valid pixel counts.
    assert run(d, conf, cam=cam).confident_share is None
    assert share(d, None).confident_share == pytest.approx(float(np.mean(np.isfinite(d) & (d + 2.0 > 0))))


# Camera and working sides between 160 and 1920: every multiple of 8 (what sensors and working sizes use:
# 240, 376, 480, 720, 752, 1080, 1200...) and KITTI's odd 375 x 1242.
RESCALE_SIDES = [*range(160, 1921, 8), 375, 1242]


def test_device_rescale_picks_the_pixels_opencv_picks_for_every_size_pair():
    """The torch rescale (outputs left on the GPU) must equal cv2.resize(INTER_NEAREST), the numpy path, for any
    (working, camera) pair; torch's own "nearest" differs for thousands of these. Rows and columns are
    independent, so each side pair is checked along one axis: 49,729 pairs, as rows and as columns."""
    torch = pytest.importorskip("torch")
    ops = array_ops.array_ops(torch.ones(1))
    wrong = []
    for src in RESCALE_SIDES:
        columns = np.arange(src, dtype=np.float32)[None].repeat(2, axis=0)  # value = source column
        rows = torch.arange(src, dtype=torch.float32)[:, None]
        for dst in RESCALE_SIDES:
            expected = cv2.resize(columns, (dst, 2), interpolation=cv2.INTER_NEAREST)[0]
            by_column = ops.rescale(torch.from_numpy(columns), dst, 2, 1.0)[0]
            by_row = ops.rescale(rows, 1, dst, 1.0)[:, 0]
            if not (np.array_equal(by_column.numpy(), expected) and np.array_equal(by_row.numpy(), expected)):
                wrong.append((src, dst))
    assert not wrong, f"{len(wrong)} size pairs differ from OpenCV, e.g. {wrong[:5]}"
    # and a whole frame through `rescale` (disparity scaled by the width ratio), on both kinds
    rng = np.random.default_rng(0)
    small = rng.uniform(1, 50, (416 * 3 // 4, 416)).astype(np.float32)
    small[rng.random(small.shape) < 0.1] = np.nan
    expected, _ = rescale(small, None, 640, 480)
    got, _ = rescale(torch.from_numpy(small), None, 640, 480)
    np.testing.assert_array_equal(got.numpy(), expected)
