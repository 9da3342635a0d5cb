"""The project's one conversion between sensor_msgs/Image and numpy.

Offers:
- `image_to_array(msg)`: the pixels as a numpy array ([H, W] or [H, W, C]), a zero-copy view where the layout
  allows, honouring `step` (padded rows) and `is_bigendian`.
- `image_to_rgb(msg)`: uint8 [H, W, 3] RGB for the networks (mono replicated, 16-bit scaled to 8 bits).
- `array_to_image(array, encoding, msg=None)`: the fields of an Image for an array (`32FC1`, `mono8`, `rgb8`, ...),
  written onto `msg` when given, else returned as a dict; `byte_array(array)` for other uint8[] fields.
- `ArrayImage(array, encoding, header)`: an image the node made itself (decompressed, rectified) with an Image
  message's fields over a numpy array, so that `image_to_array`/`image_to_rgb` read it like a received message.
- `ImageConversionError` (a ValueError) naming the problem for unsupported encodings, empty or truncated data,
  and a `step` that does not fit the width.

No rclpy import: messages are duck-typed (encoding, height, width, step, is_bigendian, data). cv_bridge is not on
PyPI and the encodings a stereo camera sends are few, so this is a small table over numpy instead.
"""
from __future__ import annotations

import array as pyarray
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An Image message whose pixels cannot be read (or an array that cannot be written) as asked."""


class _Layout(NamedTuple):
    dtype: np.dtype  # little-endian element type; big-endian messages flip it
    channels: int
    to_rgb: int | None  # cv2 colour conversion code to RGB, None when already RGB


_LAYOUTS: dict[str, _Layout] = {
    "mono8": _Layout(np.dtype("u1"), 1, cv2.COLOR_GRAY2RGB),
    "8UC1": _Layout(np.dtype("u1"), 1, cv2.COLOR_GRAY2RGB),
    "mono16": _Layout(np.dtype("<u2"), 1, cv2.COLOR_GRAY2RGB),
    "16UC1": _Layout(np.dtype("<u2"), 1, cv2.COLOR_GRAY2RGB),
    "rgb8": _Layout(np.dtype("u1"), 3, None),
    "bgr8": _Layout(np.dtype("u1"), 3, cv2.COLOR_BGR2RGB),
    # cv_bridge treats untyped 3- and 4-channel 8-bit images as OpenCV's native BGR(A); so do we.
    "8UC3": _Layout(np.dtype("u1"), 3, cv2.COLOR_BGR2RGB),
    "rgba8": _Layout(np.dtype("u1"), 4, cv2.COLOR_RGBA2RGB),
    "bgra8": _Layout(np.dtype("u1"), 4, cv2.COLOR_BGRA2RGB),
    "8UC4": _Layout(np.dtype("u1"), 4, cv2.COLOR_BGRA2RGB),
    "32FC1": _Layout(np.dtype("<f4"), 1, None),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
# Encodings image_to_rgb accepts (colour or mono camera images, not float maps).
CAMERA_ENCODINGS: tuple[str, ...] = tuple(e for e in _LAYOUTS if e != "32FC1")


def _layout(encoding: str) -> _Layout:
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    return layout


def image_to_array(msg: Any) -> np.ndarray:
    """Pixels of an Image message: [H, W] for one channel, [H, W, C] otherwise, in the message's channel order.

    A read-only view of `msg.data` when the data is little-endian (rows may be strided when `step` pads them);
    a native-endian copy for big-endian multi-byte data.
    Raises ImageConversionError for an unsupported encoding, zero size, empty or truncated data, or a `step`
    smaller than one row.
    """
    encoding = msg.encoding
    layout = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"{encoding} image has zero size ({width}x{height})")
    pixel_bytes = layout.dtype.itemsize * layout.channels
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f"{encoding} image step {step} is smaller than one row of {width} px ({row_bytes} bytes)")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageConversionError(f"{encoding} image {width}x{height} has no data")
    # The last row needs only its pixels, not its padding; producers usually send step * height anyway.
    needed = step * (height - 1) + row_bytes
    if buffer.size < needed:
        raise ImageConversionError(
            f"{encoding} image {width}x{height} (step {step}) is truncated: {buffer.size} bytes, "
            f"{step * height} expected")
    dtype = layout.dtype.newbyteorder(">") if msg.is_bigendian and layout.dtype.itemsize > 1 else layout.dtype
    shape = (height, width, layout.channels) if layout.channels > 1 else (height, width)
    strides = (step, pixel_bytes, layout.dtype.itemsize) if layout.channels > 1 else (step, pixel_bytes)
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=0, strides=strides)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array


def image_to_rgb(msg: Any, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] contiguous RGB for the estimators (for unpadded rgb8, a read-only view of msg.data).

    mono is replicated into three channels; 16-bit mono keeps its 8 most significant bits (a fixed scale, so that
    left and right, and successive frames, stay photometrically consistent). Raises ImageConversionError as
    `image_to_array` does, and for float images, which are not camera images.
    out: an optional uint8 [H, W, 3] array that a colour conversion writes into (reused frame after frame, it
    saves a large allocation per image); ignored when its shape differs or no conversion is needed.
    """
    if msg.encoding not in CAMERA_ENCODINGS:
        raise ImageConversionError(
            f"image encoding {msg.encoding!r} is not a camera image; supported: {', '.join(CAMERA_ENCODINGS)}")
    array = image_to_array(msg)
    layout = _LAYOUTS[msg.encoding]
    if array.dtype != np.uint8:
        array = (array >> 8).astype(np.uint8)
    if layout.to_rgb is None:
        return np.ascontiguousarray(array)  # zero-copy when the rows are not padded
    if out is not None and (out.shape != (array.shape[0], array.shape[1], 3) or out.dtype != np.uint8):
        out = None
    return cv2.cvtColor(array, layout.to_rgb, dst=out)  # OpenCV reads padded rows in place


def byte_array(array: np.ndarray) -> pyarray.array:
    """The bytes of `array` as array.array('B'), the type rclpy keeps uint8[] fields in.

    One copy. rclpy stores an array.array as is when the message was built with `check_fields=True`, and copies
    anything else once more; a numpy array assigned directly is read element by element (hundreds of times
    slower), and bytes under `check_fields=True` are validated element by element too.
    """
    data = pyarray.array("B")
    data.frombytes(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return data


def array_to_image(array: np.ndarray, encoding: str, msg: Any = None) -> Any:
    """Image fields for `array` in `encoding`: height, width, encoding, is_bigendian (0), step, data.

    The array must already have the encoding's element type and channel count (float32 [H, W] for 32FC1,
    uint8 [H, W, 3] for rgb8...). Sets the fields on `msg` and returns it when given (the header is the caller's),
    else returns them as a dict. `data` is an array.array('B') (see `byte_array`): build outgoing messages with
    `Image(check_fields=True)` to save rclpy's extra copy.
    """
    layout = _layout(encoding)
    array = np.asarray(array)
    expected_ndim = 2 if layout.channels == 1 else 3
    if array.ndim == 3 and layout.channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (expected_ndim == 3 and array.shape[2] != layout.channels):
        raise ImageConversionError(
            f"cannot write an array of shape {array.shape} as {encoding} ({layout.channels} channel(s))")
    if array.dtype.kind != layout.dtype.kind or array.dtype.itemsize != layout.dtype.itemsize:
        raise ImageConversionError(f"cannot write a {array.dtype} array as {encoding} (needs {layout.dtype})")
    array = np.ascontiguousarray(array, dtype=layout.dtype)
    height, width = array.shape[:2]
    fields = {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * layout.channels * layout.dtype.itemsize,
        "data": byte_array(array),
    }
    if msg is None:
        return fields
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@dataclass(frozen=True)
class ArrayImage:
    """A sensor_msgs/Image look-alike over a C-contiguous numpy array: [H, W] or [H, W, C] of the encoding's
    element type (see `_LAYOUTS`), in native byte order. `header` is the message's it was made from (stamp and
    frame_id go on to the outputs)."""

    array: np.ndarray
    encoding: str
    header: Any = None

    def __post_init__(self) -> None:
        layout = _layout(self.encoding)
        array = self.array
        channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else -1
        if channels != layout.channels or array.dtype.itemsize != layout.dtype.itemsize or \
                not array.flags.c_contiguous:
            raise ImageConversionError(f"an array of shape {array.shape} ({array.dtype}) is not a contiguous "
                                       f"{self.encoding} image")

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def step(self) -> int:
        return int(self.array.strides[0])

    @property
    def is_bigendian(self) -> int:
        return 0

    @property
    def data(self) -> np.ndarray:
        return self.array.reshape(-1).view(np.uint8)  # bytes, as np.frombuffer reads a message's data
