"""The node's camera inputs end to end: compressed images (`image_transport: compressed`) and raw images rectified by
the node (`rectify: true`), the node in its own process, real DDS, real messages.

The test client publishes like a stock driver: reliable QoS, no project Fast DDS profile on its side (the node
runs with the profile, as the launch file starts it). Disparity is compared with the same SGBM estimator run in
this process on the pixels that should reach it (the rectified Motorcycle pair), which is deterministic.
"""
from __future__ import annotations

import numpy as np
import pytest

from ros_helpers import TIMEOUT, StampCounter, float_image, node_env, start_node
from stereo_devkit.client import StereoClient, compressed_message, image_message
from stereo_devkit.motorcycle import FRAME_ID, motorcycle_rig
from stereo_devkit.raw_camera import raw_stereo_rig
from stereo_depth_ros.inference import create_estimator
from stereo_depth_ros.pipeline import StereoPipeline
from stereo_depth_ros.postprocess import OutputRequest

SGBM = {"backend": "opencv_sgbm", "max_disparity": 64, "diagnostics_period": 0.5}
RIG = motorcycle_rig(320)
COMPRESSED_INPUTS = {"left_image": "left/image_rect/compressed", "right_image": "right/image_rect/compressed"}


def reference_disparity(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """What the node's pipeline gives for these RGB pixels (the disparity image's values, shifted by doffs)."""
    pipeline = StereoPipeline(create_estimator("opencv_sgbm", max_disparity=64, block_size=5), max_disparity=64)
    infos = RIG.camera_infos()
    result = pipeline.process(left, right, OutputRequest(), infos=infos)
    return result.outputs.disparity.array.copy()


def driver_env(env: dict[str, str]) -> dict[str, str]:
    """The publisher's environment: the node's domain and discovery range, Fast DDS's default transports."""
    return {key: value for key, value in env.items() if key != "FASTDDS_DEFAULT_PROFILES_FILE"}


@pytest.fixture(scope="module")
def compressed_node(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compressed_node")
    env = node_env(workdir)
    node = start_node(workdir, env, {**SGBM, "image_transport": "compressed"})
    client = StereoClient(driver_env(env), inputs=COMPRESSED_INPUTS, compressed=True)
    try:
        assert client.wait_for_node(TIMEOUT), f"node not discovered; log:\n{node.log()}"
        yield node, client, StampCounter()
    finally:
        client.close()
        code = node.stop()
    assert code == 0, node.log()


def publish_compressed(client, stamps, codec, left=RIG.left, right=RIG.right, info_lead=0.3):
    stamp = stamps.next()
    client.publish(compressed_message(left, "rgb8", stamp, FRAME_ID, codec), compressed_message(right, "rgb8", stamp,
                                                                                                FRAME_ID, codec),
                   *RIG.camera_infos(stamp), info_lead=info_lead)
    return stamp


def test_png_input_gives_exactly_the_raw_disparity(compressed_node):
    node, client, stamps = compressed_node
    stamp = publish_compressed(client, stamps, "png")
    disparity = client.wait_for_stamp("disparity", stamp, TIMEOUT)
    assert disparity is not None, node.log()
    np.testing.assert_array_equal(float_image(disparity.image), reference_disparity(RIG.left, RIG.right))
    depth = client.wait_for_stamp("depth", stamp, TIMEOUT)
    assert depth is not None and np.isfinite(float_image(depth)).mean() > 0.3


def test_jpeg_input_gives_nearly_the_raw_disparity(compressed_node):
    node, client, stamps = compressed_node
    stamp = publish_compressed(client, stamps, "jpeg")
    disparity = client.wait_for_stamp("disparity", stamp, TIMEOUT)
    assert disparity is not None, node.log()
    got, want = float_image(disparity.image), reference_disparity(RIG.left, RIG.right)
    both = (got >= disparity.min_disparity) & (want >= disparity.min_disparity)
    assert not np.array_equal(got, want)  # lossy: not the same pixels
    assert both.mean() > 0.5 and np.median(np.abs(got - want)[both]) < 0.5


def test_corrupt_payload_is_a_warning_and_a_skipped_pair(compressed_node):
    node, client, stamps = compressed_node
    start = len(node.log())
    stamp = stamps.next()
    left = compressed_message(RIG.left, "rgb8", stamp, FRAME_ID, "png")
    right = compressed_message(RIG.right, "rgb8", stamp, FRAME_ID, "png")
    right.data = right.data[:500]
    client.publish(left, right, *RIG.camera_infos(stamp))
    assert node.wait_for_log_regex(r"\[WARN\].*pair skipped: right image: corrupt or truncated png data \(500 bytes",
                                   TIMEOUT, start=start), node.log()[start:]
    follow = publish_compressed(client, stamps, "png", info_lead=0.0)
    assert client.wait_for_stamp("disparity", follow, TIMEOUT) is not None, node.log()
    assert client.received_at("disparity", stamp) is None
    assert "Traceback" not in node.log()


def test_raw_distorted_pair_is_rectified_by_the_node(tmp_path):
    raw = raw_stereo_rig(RIG)
    env = node_env(tmp_path)
    node = start_node(tmp_path, env, {**SGBM, "rectify": True})
    inputs = {"left_image": "left/image_raw", "right_image": "right/image_raw"}
    stamps = StampCounter()
    with node, StereoClient(driver_env(env), inputs=inputs) as client:
        assert client.wait_for_node(TIMEOUT), node.log()
        stamp = stamps.next()
        client.publish(image_message(raw.left, "rgb8", stamp, FRAME_ID), image_message(raw.right, "rgb8", stamp,
                                                                                        FRAME_ID),
                       *raw.camera_infos(stamp), info_lead=0.3)
        disparity = client.wait_for_stamp("disparity", stamp, TIMEOUT)
        depth = client.wait_for_stamp("depth", stamp, TIMEOUT)
        assert disparity is not None and depth is not None, node.log()
        # Depth from the rectified camera_info: f and baseline of the rectified projections.
        assert disparity.f == pytest.approx(RIG.fx, rel=1e-6) and disparity.t == pytest.approx(RIG.baseline)
        got, want = float_image(disparity.image), reference_disparity(RIG.left, RIG.right)
        answered_got, answered_want = got >= disparity.min_disparity, want >= disparity.min_disparity
        both = answered_got & answered_want
        assert answered_got.mean() > 0.8 * answered_want.mean()
        assert np.median(np.abs(got - want)[both]) < 0.5
        valid_depth = np.isfinite(float_image(depth))
        assert 2.0 < float(np.median(float_image(depth)[valid_depth])) < 4.5  # the scene is 2-4 m away

        # A camera_info the node cannot rectify with: one warning, the pair skipped, the node keeps serving.
        start = len(node.log())
        stamp = stamps.next()
        left_info, right_info = raw.camera_infos(stamp)
        left_info.distortion_model = "fisheye"
        client.publish(image_message(raw.left, "rgb8", stamp, FRAME_ID), image_message(raw.right, "rgb8", stamp,
                                                                                        FRAME_ID),
                       left_info, right_info)
        assert node.wait_for_log_regex(r"\[WARN\].*pair skipped: left camera_info: camera_info distortion model "
                                       r"'fisheye' is not supported", TIMEOUT, start=start), node.log()[start:]
        stamp = stamps.next()
        client.publish(image_message(raw.left, "rgb8", stamp, FRAME_ID), image_message(raw.right, "rgb8", stamp,
                                                                                        FRAME_ID),
                       *raw.camera_infos(stamp))
        assert client.wait_for_stamp("disparity", stamp, TIMEOUT) is not None, node.log()
        code = node.stop()
    assert code == 0 and "Traceback" not in node.log(), node.log()
