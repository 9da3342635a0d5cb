"""The node's input sources (stereo_depth_ros/inputs/sources.py): the topic table for `image_transport` x `rectify`,
image_transport's remapping rule for the compressed sub-topic, and the frame decoder (decompress, rectify, or pass
through untouched; a bad pair is a PairError of a kind the node throttles its warning by)."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stereo_depth_ros.config import ConfigError, NodeConfig
from stereo_depth_ros.image_conversion import ArrayImage, image_to_rgb
from stereo_depth_ros.inputs.rectify import Rectifier
from stereo_depth_ros.inputs.sources import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, FrameDecoder, input_topics
from stereo_depth_ros.inputs.sync import StereoFrame
from stereo_depth_ros.pipeline import PairError
from stereo_devkit.motorcycle import motorcycle_rig
from stereo_devkit.raw_camera import raw_stereo_rig

RIG = motorcycle_rig(160)


@pytest.mark.parametrize("transport, rectify, left, right, image_type", [
    ("raw", False, "left/image_rect", "right/image_rect", IMAGE_TYPE),
    ("compressed", False, "left/image_rect/compressed", "right/image_rect/compressed", COMPRESSED_IMAGE_TYPE),
    ("raw", True, "left/image_raw", "right/image_raw", IMAGE_TYPE),
    ("compressed", True, "left/image_raw/compressed", "right/image_raw/compressed", COMPRESSED_IMAGE_TYPE),
])
def test_topic_table(transport, rectify, left, right, image_type):
    topics = input_topics(transport, rectify)
    assert (topics.image_topic("left"), topics.image_topic("right")) == (left, right)
    assert (topics.left_info, topics.right_info) == ("left/camera_info", "right/camera_info")
    assert topics.image_type == image_type


def test_compressed_sub_topic_follows_the_remapped_base_topic():
    remaps = {"left/image_rect": "/cam/left/image_rect", "right/image_rect": "/stereo/right/image_rect"}
    resolve = lambda name: remaps.get(name, "/ns/" + name)  # noqa: E731  (a node's resolve_topic_name)
    topics = input_topics("compressed", False)
    assert topics.image_topic("left", resolve) == "/cam/left/image_rect/compressed"
    assert topics.image_topic("right", resolve) == "/stereo/right/image_rect/compressed"
    # raw: the relative name, which ROS remaps itself
    assert input_topics("raw", True).image_topic("left", resolve) == "left/image_raw"


def test_image_transport_and_rectify_are_validated_parameters():
    assert NodeConfig().image_transport == "raw" and NodeConfig().rectify is False
    with pytest.raises(ConfigError, match="parameter image_transport: unknown value 'theora'; expected one of raw, "
                                          "compressed"):
        NodeConfig(image_transport="theora").validate(check_files=False)
    with pytest.raises(ConfigError, match="parameter rectify: expected bool"):
        NodeConfig.from_dict({"rectify": "yes"})
    with pytest.raises(ValueError, match="unknown image_transport 'theora'"):
        input_topics("theora", False)


def _png_message(rgb: np.ndarray, stamp: str) -> SimpleNamespace:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return SimpleNamespace(format="rgb8; png compressed bgr8", data=data.tobytes(), header=stamp)


def test_raw_rectified_input_passes_through_untouched():
    frame = StereoFrame(object(), object(), object(), None)
    assert FrameDecoder().decode(frame) is frame


def test_compressed_pair_is_decoded_with_its_camera_infos_unchanged():
    infos = (object(), object())
    frame = StereoFrame(_png_message(RIG.left, "L"), _png_message(RIG.right, "R"), *infos)
    decoded = FrameDecoder(compressed=True).decode(frame)
    assert isinstance(decoded.left_image, ArrayImage) and decoded.left_image.header == "L"
    np.testing.assert_array_equal(image_to_rgb(decoded.left_image), RIG.left)
    np.testing.assert_array_equal(image_to_rgb(decoded.right_image), RIG.right)
    assert (decoded.left_info, decoded.right_info) == infos


def _raw_infos(raw):
    return [SimpleNamespace(width=raw.width, height=raw.height, distortion_model=camera.model, d=list(camera.d),
                            k=camera.k.reshape(-1).tolist(), r=camera.r.reshape(-1).tolist(),
                            p=camera.p.reshape(-1).tolist(), header=side)
            for side, camera in (("L", raw.left_camera), ("R", raw.right_camera))]


@pytest.mark.parametrize("compressed", [False, True])
def test_raw_pair_is_rectified_and_gets_the_rectified_camera_infos(compressed):
    raw = raw_stereo_rig(RIG)
    if compressed:
        left, right = _png_message(raw.left, "L"), _png_message(raw.right, "R")
    else:
        left, right = (SimpleNamespace(encoding="rgb8", height=raw.height, width=raw.width, step=raw.width * 3,
                                       is_bigendian=0, data=image.tobytes(), header=side)
                       for side, image in (("L", raw.left), ("R", raw.right)))
    decoder = FrameDecoder(compressed=compressed, rectify=True)
    for _ in range(2):
        decoded = decoder.decode(StereoFrame(left, right, *_raw_infos(raw)))
    assert decoder.rectifiers["left"].builds == decoder.rectifiers["right"].builds == 1
    for image, info, raw_image, raw_info, camera in (
            (decoded.left_image, decoded.left_info, raw.left, _raw_infos(raw)[0], raw.left_camera),
            (decoded.right_image, decoded.right_info, raw.right, _raw_infos(raw)[1], raw.right_camera)):
        # exactly the rectifier's output for the raw pixels (which tests/test_inputs_rectify.py checks)
        np.testing.assert_array_equal(image_to_rgb(image), Rectifier().rectify(raw_image, raw_info)[0])
        np.testing.assert_allclose(np.reshape(info.p, (3, 4)), camera.p)
        assert not any(info.d)
    assert decoded.left_image.header == "L"


def test_a_bad_pair_is_a_pair_error_naming_the_side_and_the_problem():
    raw = raw_stereo_rig(RIG)
    left_info, right_info = _raw_infos(raw)
    good = _png_message(raw.left, "L")
    corrupt = SimpleNamespace(format="rgb8; png compressed bgr8", data=b"\x89PNG\r\n\x1a\n" + b"\0" * 40, header="R")
    cases = [
        (FrameDecoder(compressed=True), StereoFrame(good, corrupt, None, None), "decode:right",
         "right image: corrupt or truncated png data"),
        (FrameDecoder(compressed=True, rectify=True), StereoFrame(good, good, left_info, None), "rectify:right",
         "no right camera_info came with it"),
        (FrameDecoder(compressed=True, rectify=True),
         StereoFrame(good, good, SimpleNamespace(**dict(vars(left_info), distortion_model="fisheye")), right_info),
         "rectify:left", "left camera_info: camera_info distortion model 'fisheye' is not supported"),
        (FrameDecoder(rectify=True),
         StereoFrame(SimpleNamespace(encoding="yuv422", height=2, width=2, step=4, is_bigendian=0, data=b"\0" * 8,
                                     header="L"), good, left_info, right_info),
         "image:left", "unsupported image encoding 'yuv422'"),
    ]
    for decoder, frame, kind, message in cases:
        with pytest.raises(PairError) as info:
            decoder.decode(frame)
        assert info.value.kind == kind and message in str(info.value), str(info.value)


def test_hard_pair_capture_writes_the_rectified_pair_and_camera_info(tmp_path):
    """What the node's capture gets from a decoded frame: rectified pixels and the rectified camera_info."""
    from stereo_depth_ros.capture import HardPairCapture
    from stereo_depth_ros.dataset_layout import read_camera_info, read_image, sample_names

    raw = raw_stereo_rig(RIG)
    stamp = SimpleNamespace(stamp=SimpleNamespace(sec=5, nanosec=0), frame_id="cam")
    left, right = (SimpleNamespace(encoding="rgb8", height=raw.height, width=raw.width, step=raw.width * 3,
                                   is_bigendian=0, data=image.tobytes(), header=stamp)
                   for image in (raw.left, raw.right))
    infos = _raw_infos(raw)
    for info in infos:
        info.header = stamp
    decoded = FrameDecoder(rectify=True).decode(StereoFrame(left, right, *infos))
    capture = HardPairCapture.open(tmp_path / "captures")
    assert capture.trigger()[0]
    assert capture.offer_frame(decoded, None, "test") == "trigger"
    capture.close()
    (name,) = sample_names(tmp_path / "captures")
    written = read_image(tmp_path / "captures" / name / "left.png")
    np.testing.assert_array_equal(written, image_to_rgb(decoded.left_image))
    left_yaml, right_yaml = read_camera_info(tmp_path / "captures" / "camera_info.yaml")
    assert left_yaml["distortion_coefficients"]["data"] == [0.0] * 5
    assert right_yaml["projection_matrix"]["data"] == raw.right_camera.p.reshape(-1).tolist()
