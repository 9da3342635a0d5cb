"""Image <-> numpy conversion: every encoding, padded rows, big-endian 16-bit, and each kind of bad input."""
from types import SimpleNamespace

import numpy as np
import pytest

from stereo_depth_ros.image_conversion import (
    CAMERA_ENCODINGS, ImageConversionError, array_to_image, image_to_array, image_to_rgb)

RNG = np.random.default_rng(0)
H, W = 5, 7
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)

# encoding -> (pixels in the message's channel order, expected RGB for the network)
CASES = {
    "mono8": (GRAY, np.repeat(GRAY[..., None], 3, axis=2)),
    "8UC1": (GRAY, np.repeat(GRAY[..., None], 3, axis=2)),
    "mono16": (GRAY16, np.repeat((GRAY16 >> 8).astype(np.uint8)[..., None], 3, axis=2)),
    "16UC1": (GRAY16, np.repeat((GRAY16 >> 8).astype(np.uint8)[..., None], 3, axis=2)),
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[..., ::-1], RGB),
    "8UC3": (RGB[..., ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], axis=2), RGB),
    "bgra8": (np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
    "8UC4": (np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
}


def make_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> SimpleNamespace:
    """An Image-like message; `pad` extra bytes at the end of each row."""
    height, width = pixels.shape[:2]
    array = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = array.reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=padded.shape[1],
                           is_bigendian=int(bigendian), data=padded.tobytes())


@pytest.mark.parametrize("encoding", sorted(CASES))
@pytest.mark.parametrize("pad", [0, 3])
def test_every_encoding_reads_back_with_and_without_padded_rows(encoding, pad):
    pixels, rgb = CASES[encoding]
    msg = make_msg(pixels, encoding, pad=pad)
    np.testing.assert_array_equal(image_to_array(msg), pixels)
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_multibyte_is_converted_to_native(encoding):
    pixels = GRAY16 if encoding != "32FC1" else RNG.standard_normal((H, W)).astype(np.float32)
    msg = make_msg(pixels, encoding, pad=2, bigendian=True)
    array = image_to_array(msg)
    assert array.dtype.isnative
    np.testing.assert_array_equal(array, pixels)
    # and the same bytes read as little-endian would differ: the flag is honoured, not ignored
    msg.is_bigendian = 0
    assert not np.array_equal(image_to_array(msg), pixels)


def test_zero_copy_view_for_little_endian():
    msg = make_msg(RGB, "rgb8")
    msg.data = bytearray(msg.data)
    view = image_to_array(msg)
    msg.data[0] = (int(RGB[0, 0, 0]) + 1) % 256
    assert view[0, 0, 0] == (int(RGB[0, 0, 0]) + 1) % 256


def test_last_row_without_padding_is_accepted():
    msg = make_msg(RGB, "rgb8", pad=4)
    msg.data = msg.data[:-4]
    np.testing.assert_array_equal(image_to_array(msg), RGB)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
    (lambda m: setattr(m, "encoding", "bayer_rggb8"), "unsupported"),
    (lambda m: setattr(m, "data", b""), "no data"),
    (lambda m: setattr(m, "data", m.data[: len(m.data) // 2]), "truncated"),
    (lambda m: setattr(m, "step", W * 3 - 1), "smaller than one row"),
    (lambda m: setattr(m, "step", W * 3 * 2), "truncated"),
    (lambda m: setattr(m, "height", 0), "zero size"),
    (lambda m: setattr(m, "width", 0), "zero size"),
])
def test_bad_messages_raise_one_clear_error(mutate, match):
    msg = make_msg(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=match):
        image_to_array(msg)
    assert issubclass(ImageConversionError, ValueError)


def test_odd_step_for_16_bit_is_read_unaligned():
    msg = make_msg(GRAY16, "mono16", pad=1)
    np.testing.assert_array_equal(image_to_array(msg), GRAY16)
    np.testing.assert_array_equal(image_to_rgb(msg)[..., 1], (GRAY16 >> 8).astype(np.uint8))


def test_float_image_is_not_a_camera_image():
    msg = make_msg(np.zeros((H, W), np.float32), "32FC1")
    assert "32FC1" not in CAMERA_ENCODINGS
    with pytest.raises(ImageConversionError, match="not a camera image"):
        image_to_rgb(msg)


@pytest.mark.parametrize("encoding, array", [
    ("32FC1", np.array([[1.5, np.nan], [np.inf, -2.0]], np.float32)),
    ("mono8", GRAY),
    ("rgb8", RGB),
    ("bgr8", RGB),
    ("mono16", GRAY16),
])
def test_array_to_image_round_trip(encoding, array):
    fields = array_to_image(array, encoding)
    assert fields["encoding"] == encoding and fields["is_bigendian"] == 0
    assert fields["step"] == array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    assert bytes(fields["data"]) == np.ascontiguousarray(array).tobytes()
    back = image_to_array(SimpleNamespace(**fields))
    np.testing.assert_array_equal(back, array)


def test_array_to_image_fills_a_message_and_rejects_wrong_arrays():
    msg = SimpleNamespace()
    assert array_to_image(np.zeros((2, 3, 1), np.float32), "32FC1", msg) is msg
    assert (msg.height, msg.width, msg.step) == (2, 3, 12)
    with pytest.raises(ImageConversionError, match="float64"):
        array_to_image(np.zeros((2, 3)), "32FC1")
    with pytest.raises(ImageConversionError, match="shape"):
        array_to_image(np.zeros((2, 3), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="unsupported"):
        array_to_image(np.zeros((2, 3), np.uint8), "jpeg")


@pytest.mark.parametrize("check_fields", [False, True])
def test_real_sensor_msgs_image(check_fields):
    image_mod = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs not installed")
    msg = image_mod.Image(check_fields=check_fields)
    array_to_image(RGB[..., ::-1], "bgr8", msg)
    assert msg.step == W * 3 and len(msg.data) == H * W * 3
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    depth = image_mod.Image()
    array_to_image(np.full((H, W), 2.5, np.float32), "32FC1", depth)
    assert image_to_array(depth)[H - 1, W - 1] == np.float32(2.5)
