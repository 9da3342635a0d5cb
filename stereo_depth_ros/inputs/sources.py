"""Where the node's images come from and what turns them into the pair the pipeline gets. ROS-free.

Two parameters choose the source (stereo_image_proc's names and habits):
- `image_transport`: `raw` (sensor_msgs/Image) or `compressed` (sensor_msgs/CompressedImage, JPEG or PNG, on
  `<image topic>/compressed`, decoded by `inputs.compressed`);
- `rectify`: false (the images are rectified already: `left/image_rect`, `right/image_rect`) or true (raw images,
  `left/image_raw`, `right/image_raw`, rectified here from their camera_info by `inputs.rectify`).

Offers:
- `input_topics(image_transport, rectify) -> InputTopics`: the four topics the node subscribes to, the image
  message type, and `image_topic(side, resolve)`, the name to subscribe with. As image_transport does, a remapping
  applies to the base topic (`left/image_rect:=/cam/left/image_rect`) and the transport's sub-topic follows it
  (`/cam/left/image_rect/compressed`); camera_info topics are always `left/camera_info`, `right/camera_info`.
- `FrameDecoder(compressed, rectify).decode(frame) -> StereoFrame`: the synchronised pair as the pipeline takes
  it: images decoded and/or rectified (as `image_conversion.ArrayImage`), camera_infos replaced by the rectified
  ones when rectifying. A raw, rectified stream passes through untouched. A pair that cannot be decoded or
  rectified raises `pipeline.PairError` (kind `decode:<side>`, `rectify:<side>` or `image:<side>`), which the node
  reports as a throttled warning and a skipped pair. The node calls it on its worker thread, never on the
  executor's, and only for pairs whose pixels are wanted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stereo_depth_ros.config import IMAGE_TRANSPORTS
from stereo_depth_ros.image_conversion import ArrayImage, ImageConversionError, image_to_array
from stereo_depth_ros.inputs.compressed import CompressedImageError, compressed_to_image
from stereo_depth_ros.inputs.rectify import RectificationError, Rectifier
from stereo_depth_ros.inputs.sync import SIDES, StereoFrame
from stereo_depth_ros.pipeline import PairError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"


@dataclass(frozen=True)
class InputTopics:
    """The node's input topics (relative names, before remapping) and the image message type."""

    left_image: str
    right_image: str
    left_info: str = "left/camera_info"
    right_info: str = "right/camera_info"
    compressed: bool = False

    @property
    def image_type(self) -> str:
        return COMPRESSED_IMAGE_TYPE if self.compressed else IMAGE_TYPE

    def image_topic(self, side: str, resolve: Callable[[str], str] | None = None) -> str:
        """The name to subscribe to for `side`'s image. raw: the base name (ROS applies remappings to it).
        compressed: the base name resolved by `resolve` (the node's `resolve_topic_name`, which applies
        remappings and the namespace) plus `/compressed`."""
        base = self.left_image if side == "left" else self.right_image
        if not self.compressed:
            return base
        return (resolve(base) if resolve is not None else base).rstrip("/") + "/compressed"


def input_topics(image_transport: str, rectify: bool) -> InputTopics:
    """The topics for these parameter values (ValueError for an unknown transport)."""
    if image_transport not in IMAGE_TRANSPORTS:
        raise ValueError(f"unknown image_transport {image_transport!r}; expected one of {', '.join(IMAGE_TRANSPORTS)}")
    suffix = "image_raw" if rectify else "image_rect"
    return InputTopics(f"left/{suffix}", f"right/{suffix}", compressed=image_transport == "compressed")


class FrameDecoder:
    """Synchronised pair as received -> pair as the pipeline takes it (see the module docstring).

    `rectifiers` keeps one `inputs.rectify.Rectifier` per side (their `builds` count the maps built)."""

    def __init__(self, compressed: bool = False, rectify: bool = False) -> None:
        self.compressed, self.rectify = compressed, rectify
        self.rectifiers = {side: Rectifier() for side in SIDES}

    @property
    def passthrough(self) -> bool:
        return not (self.compressed or self.rectify)

    def decode(self, frame: StereoFrame) -> StereoFrame:
        if self.passthrough:
            return frame
        left, left_info = self._side("left", frame.left_image, frame.left_info)
        right, right_info = self._side("right", frame.right_image, frame.right_info)
        return StereoFrame(left, right, left_info, right_info)

    def _side(self, side: str, msg: Any, info: Any) -> tuple[Any, Any]:
        try:
            image = compressed_to_image(msg) if self.compressed else msg
            if not self.rectify:
                return image, info
            if info is None:
                raise PairError(f"rectify:{side}", f"{side} image is raw (rectify is true) but no {side} "
                                                   "camera_info came with it: it cannot be rectified")
            pixels = image.array if isinstance(image, ArrayImage) else image_to_array(image)
            rectified, rectified_info = self.rectifiers[side].rectify(pixels, info)
            return ArrayImage(np.ascontiguousarray(rectified), image.encoding, msg.header), rectified_info
        except CompressedImageError as exc:
            raise PairError(f"decode:{side}", f"{side} image: {exc}") from None
        except RectificationError as exc:
            raise PairError(f"rectify:{side}", f"{side} camera_info: {exc}; the raw image cannot be rectified") \
                from None
        except ImageConversionError as exc:
            raise PairError(f"image:{side}", f"{side} image: {exc}") from None
