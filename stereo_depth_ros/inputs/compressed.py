"""sensor_msgs/CompressedImage (JPEG, PNG) -> pixels, as image_transport's `compressed` plugin writes them.

The project's one decoding of compressed images: the node (`image_transport: compressed`) and `stereo-distill
extract` (compressed topics in a bag) both use it. ROS-free: messages are duck-typed (`format`, `data`, `header`).

Offers:
- `decode_compressed(data, format) -> (array, encoding)`: the decoded pixels and the encoding they are in, one that
  `image_conversion` reads (mono8, mono16, bgr8, rgb8, bgra8, rgba8);
- `compressed_to_image(msg) -> ArrayImage`: the same, as an Image look-alike carrying the message's header;
- `CompressedImageError` (a ValueError): one line naming the problem (corrupt or truncated data, a codec other
  than JPEG or PNG, a format string that contradicts the data).

The `format` field, as compressed_image_transport writes it: `"<original encoding>; <jpeg|png> compressed
<compressed encoding>"`, e.g. "rgb8; jpeg compressed bgr8", "bgra8; png compressed bgr8", "mono16; png compressed "
(older releases write nothing after "compressed" for mono PNGs; newer ones "mono8" or "mono16"). Older publishers,
and many drivers that compress on the device, write only "jpeg" or "png"; an empty format is taken from the data's
own signature. Colour order is honoured: "compressed bgr8" means the encoder was given BGR, which OpenCV's decoder
gives back; "compressed rgb8" means it was given RGB (the file's channels are swapped), so the decoded pixels are
RGB. The original encoding is kept only for what it says about the pixels' meaning: a mono original must decode to
one channel, a colour one to three or four. The pixels are not converted back to it (a bgra8 camera compressed as
bgr8 comes back as bgr8, which the pipeline reads without the alpha channel a round trip would add); 16-bit colour
keeps its 8 most significant bits, as `image_conversion` does for 16-bit mono.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from stereo_depth_ros.image_conversion import ArrayImage

CODECS = ("jpeg", "png")
_SIGNATURES = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_MONO_ORIGINALS = ("mono8", "mono16", "8UC1", "16UC1")
_COLOUR_PREFIXES = ("rgb", "bgr", "bayer_", "yuv", "8UC3", "8UC4", "16UC3", "16UC4")


class CompressedImageError(ValueError):
    """A CompressedImage whose pixels cannot be decoded as its format says."""


def _codec(format_text: str, data: np.ndarray) -> str:
    """'jpeg' or 'png' from the format string (or the data's signature when the format is empty)."""
    text = format_text.split(";", 1)[1] if ";" in format_text else format_text
    words = text.replace(";", " ").lower().split()
    if not words:
        head = data[:8].tobytes()
        for signature, codec in _SIGNATURES.items():
            if head.startswith(signature):
                return codec
        raise CompressedImageError(f"CompressedImage with an empty format and data that is neither JPEG nor PNG "
                                   f"({data.size} bytes)")
    codecs = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
    if words[0] not in codecs:
        raise CompressedImageError(f"unsupported CompressedImage format {format_text!r}: only JPEG and PNG "
                                   f"({', '.join(CODECS)}) are decoded")
    return codecs[words[0]]


def decode_compressed(data: Any, format_text: str) -> tuple[np.ndarray, str]:
    """(pixels, encoding) of compressed image bytes: [H, W] uint8/uint16 for mono8/mono16, [H, W, 3|4] uint8 for
    bgr8/rgb8/bgra8/rgba8. Raises CompressedImageError naming the problem."""
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints (a message built by hand)
        buffer = np.asarray(data, dtype=np.uint8).reshape(-1)
    format_text = str(format_text).strip()
    codec = _codec(format_text, buffer)
    if buffer.size == 0:
        raise CompressedImageError(f"{codec} CompressedImage (format {format_text!r}) has no data")
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # some codec errors raise instead of returning None
        raise CompressedImageError(f"corrupt {codec} data ({buffer.size} bytes, format {format_text!r}): "
                                   f"{' '.join(str(exc).split())}") from None
    if pixels is None or pixels.size == 0:
        raise CompressedImageError(f"corrupt or truncated {codec} data ({buffer.size} bytes, format "
                                   f"{format_text!r}): the decoder returned no image")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    original, _, compressed = format_text.partition(";")
    original = original.strip() if compressed else ""
    if original in _MONO_ORIGINALS and channels != 1:
        raise CompressedImageError(f"CompressedImage format {format_text!r} says {original} but the {codec} data "
                                   f"has {channels} channels")
    if original.startswith(_COLOUR_PREFIXES) and channels == 1:
        raise CompressedImageError(f"CompressedImage format {format_text!r} says {original} (colour) but the "
                                   f"{codec} data has one channel")
    if channels == 1:
        return np.ascontiguousarray(pixels), "mono16" if pixels.dtype == np.uint16 else "mono8"
    if channels not in (3, 4):
        raise CompressedImageError(f"{codec} data with {channels} channels is not a camera image")
    if pixels.dtype == np.uint16:
        pixels = np.right_shift(pixels, 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise CompressedImageError(f"{codec} data of {pixels.dtype} pixels is not a camera image")
    rgb_order = "compressed rgb" in compressed.lower()
    encoding = ("rgb" if rgb_order else "bgr") + ("a8" if channels == 4 else "8")
    return np.ascontiguousarray(pixels), encoding


def compressed_to_image(msg: Any) -> ArrayImage:
    """The decoded pixels of a CompressedImage message with its header (CompressedImageError as above)."""
    pixels, encoding = decode_compressed(msg.data, msg.format)
    return ArrayImage(pixels, encoding, msg.header)
