"""Camera presets (`camera:=realsense|zed|oakd` of launch/stereo.launch.py): one params file per camera, read here.

A preset is a ROS 2 params file, `config/cameras/<name>.yaml`, with two sections:
- `stereo_depth_node`: the node's parameters for that camera (sync mode and tolerance, QoS, image_transport, ...),
  loaded by the launch file between config/stereo.yaml and the user's own `params_file:=`;
- `stereo_launch`: what a params file cannot say, for the launch file: the topics the node's four inputs are
  remapped to (`left_image`, `right_image`, `left_camera_info`, `right_camera_info`), the RViz `fixed_frame`, and
  the driver's own launch file that `driver:=true` includes (`driver_launch: <package>/<file>`, looked up in the
  package's share/<package>/launch/) with its arguments (`driver_arguments: [name:=value, ...]`; `{config}`
  stands for the folder of the preset files, for driver parameter files shipped here). No node has that name, so
  the section is inert for ROS; it sits under `ros__parameters` because rcl refuses a params file with any other
  layout.

Offers `load_preset(name, folder) -> CameraPreset`, `parse_arguments(items)` (`name:=value` strings, as `ros2
launch` takes them, into pairs), `merge_arguments(base, extra)` (extra wins by name) and `PresetError`: one line
naming the file and the problem. ROS-free (the launch file resolves packages).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

PRESETS = ("realsense", "zed", "oakd")
NODE_SECTION = "stereo_depth_node"
LAUNCH_SECTION = "stereo_launch"
TOPIC_KEYS = ("left_image", "right_image", "left_camera_info", "right_camera_info")
LAUNCH_KEYS = (*TOPIC_KEYS, "fixed_frame", "driver_launch", "driver_arguments")


class PresetError(ValueError):
    """A camera preset that cannot be used; the message names it and the problem."""


@dataclass(frozen=True)
class CameraPreset:
    name: str
    params_file: Path
    topics: dict[str, str]  # TOPIC_KEYS -> absolute topic names
    fixed_frame: str
    driver_launch: str  # "<package>/<launch file>"
    driver_arguments: tuple[tuple[str, str], ...]

    @property
    def driver_package(self) -> str:
        return self.driver_launch.split("/", 1)[0]

    @property
    def driver_file(self) -> str:
        return self.driver_launch.split("/", 1)[1]


def parse_arguments(items: Iterable[str], what: str = "driver argument") -> list[tuple[str, str]]:
    """`name:=value` strings -> (name, value) pairs (the value may itself contain ':=')."""
    pairs = []
    for item in items:
        name, sep, value = str(item).partition(":=")
        if not sep or not name.strip() or " " in name.strip():
            raise PresetError(f"{what} {item!r} is not name:=value")
        pairs.append((name.strip(), value))
    return pairs


def merge_arguments(base: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """base with extra's values put over it by name (extra's new names appended, in order)."""
    merged = dict(base)
    merged.update(extra)
    return list(merged.items())


def split_launch_spec(spec: str, what: str = "driver_launch") -> tuple[str, str]:
    """'<package>/<launch file>' -> (package, file)."""
    package, sep, file = spec.strip().partition("/")
    if not sep or not package or not file:
        raise PresetError(f"{what} {spec!r} is not <package>/<launch file> (e.g. realsense2_camera/rs_launch.py)")
    return package, file


def load_preset(name: str, folder: str | Path) -> CameraPreset:
    """The preset `name` from `folder` (the installed share/stereo_depth_ros/config/cameras)."""
    if name not in PRESETS:
        raise PresetError(f"camera:={name!r} is not a preset; presets: {', '.join(PRESETS)} (or leave camera empty "
                          "and remap the topics yourself)")
    path = Path(folder) / f"{name}.yaml"
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PresetError(f"camera preset {path}: cannot be read: {exc}") from None
    try:
        section = document[LAUNCH_SECTION]["ros__parameters"]
        assert isinstance(document[NODE_SECTION]["ros__parameters"], dict) and isinstance(section, dict)
    except (TypeError, KeyError, AssertionError):
        raise PresetError(f"camera preset {path}: needs {NODE_SECTION}: and {LAUNCH_SECTION}: sections, each with "
                          "ros__parameters") from None
    unknown = sorted(set(section) - set(LAUNCH_KEYS))
    missing = [key for key in LAUNCH_KEYS if key not in section]
    if unknown or missing:
        raise PresetError(f"camera preset {path}: {LAUNCH_SECTION} has " + "; ".join(
            part for part in (f"unknown keys {', '.join(unknown)}" if unknown else "",
                              f"no {', '.join(missing)}" if missing else "") if part))
    topics = {key: str(section[key]) for key in TOPIC_KEYS}
    relative = [topic for topic in topics.values() if not topic.startswith("/")]
    if relative:
        raise PresetError(f"camera preset {path}: topics must be absolute (the driver's), got {', '.join(relative)}")
    split_launch_spec(str(section["driver_launch"]))
    if not isinstance(section["driver_arguments"], list):
        raise PresetError(f"camera preset {path}: driver_arguments must be a list of name:=value")
    arguments = [str(item).replace("{config}", str(Path(folder))) for item in section["driver_arguments"]]
    return CameraPreset(name=name, params_file=path, topics=topics, fixed_frame=str(section["fixed_frame"]),
                        driver_launch=str(section["driver_launch"]),
                        driver_arguments=tuple(parse_arguments(arguments, f"camera preset {path}: driver argument")))
