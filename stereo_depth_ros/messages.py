"""The node's outgoing messages, wrapped around the pipeline's message buffers without copying their pixels.

`diagnostic_array` wraps a diagnostics snapshot in a diagnostic_msgs/DiagnosticArray.
`disparity_message`, `float_image_message` and `cloud_message` build stereo_msgs/DisparityImage, a 32FC1
sensor_msgs/Image and an organised sensor_msgs/PointCloud2 from a `postprocess.Postprocessed` result. Messages are
built with `check_fields=True`, under which rclpy keeps an array.array as the `data` field as it is (any other
type is copied, element by element for a numpy array); the publish then copies it once into the DDS sample.
The buffers are reused by the next frame: publish (or copy) a message before processing the next pair.
"""
from __future__ import annotations

import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, PointCloud2, PointField
from stereo_msgs.msg import DisparityImage

from stereo_depth_ros.diagnostics import format_value, status_message
from stereo_depth_ros.postprocess import MessageBuffer, Postprocessed

BIG_ENDIAN = int(sys.byteorder == "big")
# PointCloud2 layout of postprocess's cloud: (name, byte offset, PointField.FLOAT32 == 7, count); rgb is PCL's
# packed 0xAARRGGBB float.
POINT_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1))
POINT_STEP = 16


def float_image_message(buffer: MessageBuffer, header: Any, msg: Any = None) -> Any:
    """A 32FC1 Image over `buffer` (float32 [H, W]); `msg` (e.g. a DisparityImage's image) is filled when given."""
    msg = Image(check_fields=True) if msg is None else msg
    height, width = buffer.shape[:2]
    msg.header = header
    msg.height, msg.width = height, width
    msg.encoding = "32FC1"
    msg.is_bigendian = BIG_ENDIAN
    msg.step = width * 4
    msg.data = buffer.data
    return msg


def disparity_message(result: Postprocessed, header: Any) -> Any:
    """stereo_msgs/DisparityImage of a frame whose disparity was requested."""
    if result.disparity is None:
        raise ValueError("the frame has no disparity output (it was not requested)")
    msg = DisparityImage(check_fields=True)
    msg.header = header
    msg.image = float_image_message(result.disparity, header, Image(check_fields=True))
    msg.f = result.f
    msg.t = result.t
    msg.min_disparity = result.min_disparity
    msg.max_disparity = result.max_disparity
    msg.delta_d = result.delta_d
    x, y, w, h = result.valid_window
    msg.valid_window.x_offset, msg.valid_window.y_offset = x, y
    msg.valid_window.width, msg.valid_window.height = w, h
    return msg


def cloud_message(buffer: MessageBuffer, header: Any) -> Any:
    """Organised PointCloud2 (one point per pixel, NaN x/y/z where invalid) over a float32 [H, W, 4] buffer."""
    height, width, channels = buffer.shape
    if channels != 4:
        raise ValueError(f"expected a float32 [H, W, 4] cloud, got shape {buffer.shape}")
    msg = PointCloud2(check_fields=True)
    msg.header = header
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in POINT_FIELDS]
    msg.is_bigendian = bool(BIG_ENDIAN)
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * width
    msg.is_dense = False
    msg.data = buffer.data
    return msg


class OutputMessages:
    """The node's output messages, built once per buffer and reused: the pipeline reuses its buffers frame after
    frame, so only the header (and the DisparityImage's scalar fields) change. Publish before the next frame."""

    def __init__(self) -> None:
        self._messages: dict[str, tuple[Any, Any]] = {}  # name -> (the buffer's data object, message)

    def _cached(self, name: str, buffer: MessageBuffer) -> Any:
        entry = self._messages.get(name)
        return entry[1] if entry is not None and entry[0] is buffer.data else None

    def image(self, name: str, buffer: MessageBuffer, header: Any) -> Any:
        msg = self._cached(name, buffer)
        if msg is None:
            msg = float_image_message(buffer, header)
            self._messages[name] = (buffer.data, msg)
        msg.header = header
        return msg

    def cloud(self, buffer: MessageBuffer, header: Any) -> Any:
        msg = self._cached("points", buffer)
        if msg is None:
            msg = cloud_message(buffer, header)
            self._messages["points"] = (buffer.data, msg)
        msg.header = header
        return msg

    def disparity(self, result: Postprocessed, header: Any) -> Any:
        if result.disparity is None:
            raise ValueError("the frame has no disparity output (it was not requested)")
        msg = self._cached("disparity", result.disparity)
        if msg is None:
            self._messages["disparity"] = (result.disparity.data, disparity_message(result, header))
            return self._messages["disparity"][1]
        msg.header = msg.image.header = header
        msg.f, msg.t = result.f, result.t
        msg.min_disparity, msg.max_disparity, msg.delta_d = (result.min_disparity, result.max_disparity,
                                                             result.delta_d)
        x, y, w, h = result.valid_window
        msg.valid_window.x_offset, msg.valid_window.y_offset = x, y
        msg.valid_window.width, msg.valid_window.height = w, h
        return msg


def diagnostic_array(snap: dict[str, float | int | str], name: str, hardware_id: str, labels: dict[str, str],
                     stamp: Any, problems: list[str] | None = None) -> Any:
    """One DiagnosticStatus (level and message from `diagnostics.status_message`; WARN with the problems' text
    when the input health found any) holding `labels` and every figure of the snapshot as key/value pairs, in a
    DiagnosticArray stamped `stamp`."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    warn, status.message = status_message(snap, problems or [])
    status.level = DiagnosticStatus.WARN if warn else DiagnosticStatus.OK
    status.values = [KeyValue(key=key, value=value) for key, value in labels.items()]
    status.values += [KeyValue(key=key, value=format_value(value)) for key, value in snap.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array
