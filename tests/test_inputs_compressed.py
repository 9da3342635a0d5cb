"""Decoding sensor_msgs/CompressedImage (stereo_depth_ros/inputs/compressed.py): every format string
compressed_image_transport writes, the older bare "jpeg"/"png", colour order, and corrupt or unsupported payloads.

The payloads are made as compressed_image_transport's publisher makes them (its C++ plugin does not run here):
colour images are converted to BGR (8 or 16 bit) and handed to OpenCV's encoder, mono images as they are (JPEG
takes mono8), and the format is "<encoding>; <codec> compressed <what was encoded>".
"""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stereo_depth_ros.image_conversion import image_to_rgb
from stereo_depth_ros.inputs.compressed import CompressedImageError, compressed_to_image, decode_compressed
from stereo_devkit.motorcycle import motorcycle_pair

RGB = motorcycle_pair(96, 128)[0]  # real image content: JPEG on noise would be a poor test of "close"
GRAY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
GRAY16 = GRAY.astype(np.uint16) * 257 + 3


def encode(pixels: np.ndarray, codec: str, quality: int = 95) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if codec == "jpeg" else []
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", pixels, params)
    assert ok
    return data.tobytes()


def transport_message(encoding: str, codec: str) -> tuple[SimpleNamespace, np.ndarray]:
    """(CompressedImage-like message, the RGB the network should get) for an image of `encoding`."""
    if encoding in ("mono8", "mono16"):
        source = GRAY if encoding == "mono8" or codec == "jpeg" else GRAY16
        fmt = f"{encoding}; {codec} compressed " + ("mono8" if codec == "jpeg" else "")
        expected = np.repeat(((source >> 8) if source.dtype == np.uint16 else source)[..., None], 3, axis=2)
        return SimpleNamespace(format=fmt, data=encode(source, codec), header="h"), expected.astype(np.uint8)
    bgr = RGB[..., ::-1]
    return SimpleNamespace(format=f"{encoding}; {codec} compressed bgr8", data=encode(bgr, codec), header="h"), RGB


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
def test_png_as_image_transport_writes_it_decodes_exactly(encoding):
    msg, expected = transport_message(encoding, "png")
    image = compressed_to_image(msg)
    assert image.header == "h"
    np.testing.assert_array_equal(image_to_rgb(image), expected)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "bgra8", "mono8"])
def test_jpeg_as_image_transport_writes_it_decodes_close(encoding):
    msg, expected = transport_message(encoding, "jpeg")
    rgb = image_to_rgb(compressed_to_image(msg))
    assert rgb.shape == expected.shape
    # Quality 95 on real content: a few grey levels on average, far below what a swapped colour order gives.
    error = np.abs(rgb.astype(int) - expected).mean()
    assert error < 4.0
    if encoding != "mono8":
        assert np.abs(rgb[..., ::-1].astype(int) - expected).mean() > 4 * error


def test_sixteen_bit_mono_png_keeps_all_bits_and_sixteen_bit_colour_keeps_the_top_eight():
    pixels, encoding = decode_compressed(encode(GRAY16, "png"), "16UC1; png compressed mono16")
    assert encoding == "mono16"
    np.testing.assert_array_equal(pixels, GRAY16)
    bgr16 = RGB[..., ::-1].astype(np.uint16) * 256 + 255
    pixels, encoding = decode_compressed(encode(bgr16, "png"), "rgb16; png compressed bgr16")
    assert encoding == "bgr8"
    np.testing.assert_array_equal(pixels, RGB[..., ::-1])


def test_colour_order_follows_what_was_compressed():
    # An encoder given RGB data labelled "compressed rgb8": the decoded channels are RGB, not OpenCV's BGR.
    pixels, encoding = decode_compressed(encode(RGB, "png"), "rgb8; png compressed rgb8")
    assert encoding == "rgb8"
    np.testing.assert_array_equal(pixels, RGB)
    pixels, encoding = decode_compressed(encode(RGB[..., ::-1], "png"), "rgb8; png compressed bgr8")
    assert encoding == "bgr8"
    np.testing.assert_array_equal(pixels, RGB[..., ::-1])


@pytest.mark.parametrize("fmt", ["jpeg", "png", "JPEG", "jpg", ""])
def test_bare_and_empty_formats_of_older_publishers(fmt):
    codec = "png" if fmt in ("png", "") else "jpeg"
    for source, encoding in ((RGB[..., ::-1], "bgr8"), (GRAY, "mono8")):
        pixels, got = decode_compressed(encode(source, codec), fmt)
        assert got == encoding and pixels.shape == source.shape
        if codec == "png":
            np.testing.assert_array_equal(pixels, source)


def test_data_as_rclpy_array_and_as_list():
    import array

    data = encode(RGB[..., ::-1], "png")
    for form in (array.array("B", data), list(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(decode_compressed(form, "png")[0], RGB[..., ::-1])


@pytest.mark.parametrize("payload, fmt, message", [
    (encode(RGB, "jpeg")[:300], "rgb8; jpeg compressed bgr8", "corrupt or truncated jpeg data (300 bytes"),
    (encode(RGB, "png")[:-200], "rgb8; png compressed bgr8", "corrupt or truncated png data"),
    (b"\x00" * 64, "rgb8; png compressed bgr8", "corrupt or truncated png data (64 bytes"),
    (b"", "rgb8; jpeg compressed bgr8", "has no data"),
    (b"\x00" * 64, "", "empty format and data that is neither JPEG nor PNG"),
    (encode(RGB, "png"), "rgb8; tiff compressed", "unsupported CompressedImage format 'rgb8; tiff compressed'"),
    (b"\x00\x00\x00\x01", "h264", "unsupported CompressedImage format 'h264'"),
    (encode(RGB, "png"), "mono8; png compressed ", "says mono8 but the png data has 3 channels"),
    (encode(GRAY, "png"), "rgb8; png compressed bgr8", "says rgb8 (colour) but the png data has one channel"),
])
def test_corrupt_or_unsupported_payload_is_one_clear_error(payload, fmt, message):
    with pytest.raises(CompressedImageError) as info:
        decode_compressed(payload, fmt)
    text = str(info.value)
    assert message in text and "\n" not in text
