"""The node's parameters through rclpy: declared from `NodeConfig`, read and validated once at start-up, and the
runtime changes `ros2 param set` may make (`RUNTIME_PARAMETERS`), validated with the same rules.

Kept apart from `node.py` so the node stays wiring: this module decides what a parameter may be, the node only
applies the result.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor

from stereo_depth_ros.config import RUNTIME_PARAMETERS, ConfigError, NodeConfig, is_ros_own_parameter
from stereo_depth_ros.file_search import FileSearchError, find_file

EXIT_BAD_PARAMETERS = 2
EXIT_BACKEND_FAILED = 1


class StartupError(RuntimeError):
    """The node cannot start (bad parameters or a backend that fails to load); `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def resolve_params_files(argv: list[str]) -> list[str]:
    """`argv` with each `--params-file PATH` after `--ros-args` replaced by the file that PATH names, found in
    the order of stereo_depth_ros.file_search (working directory, share folders, checkout), as the launch file
    does. Raises StartupError (exit 2) listing the places looked: rcl would end in a traceback at rclpy.init."""
    resolved = list(argv)
    in_ros_args = False
    for index, arg in enumerate(argv):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and argv[index - 1] == "--params-file":
            try:
                resolved[index] = str(find_file(arg, "params"))
            except FileSearchError as exc:
                raise StartupError(f"--params-file: {exc}", EXIT_BAD_PARAMETERS) from None
    return resolved


def declare_and_read(node: Any) -> NodeConfig:
    """Declare every NodeConfig parameter on `node` (runtime ones writable, the rest read-only) and return the
    validated config. Raises StartupError (exit 2) naming an unknown or invalid parameter."""
    defaults = NodeConfig().as_dict()
    descriptions = NodeConfig.parameter_descriptions()
    for name, default in defaults.items():
        # Typing is left to NodeConfig (one validator, one message format: an int for a float parameter is
        # fine, a string for an int names the parameter).
        descriptor = ParameterDescriptor(description=descriptions[name], dynamic_typing=True,
                                         read_only=name not in RUNTIME_PARAMETERS)
        node.declare_parameter(name, default, descriptor)
    values = {name: node.get_parameter(name).value for name in defaults}
    overrides = getattr(node, "_parameter_overrides", {})
    # rclpy's own parameters (use_sim_time, qos_overrides.*) may sit in a shared params file.
    unknown = sorted(name for name in overrides if not node.has_parameter(name) and not is_ros_own_parameter(name))
    try:
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
        return NodeConfig.from_dict(values).validate()
    except ConfigError as exc:
        raise StartupError(f"invalid parameters: {exc}", EXIT_BAD_PARAMETERS) from None


def runtime_change(config: NodeConfig, estimator: Any, parameters: list) -> NodeConfig:
    """The config after a `ros2 param set` of runtime parameters (others are rclpy's to refuse: read-only).

    Validated with the start-up rules; an `iters` change goes to the estimator at once, which refuses what it
    cannot do (ONNX: fixed at export). Raises ValueError with the reason; nothing changes then.
    """
    changes = {p.name: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
    if not changes:
        return config
    values = config.as_dict()
    values.update(changes)
    checked = NodeConfig.from_dict(values).validate(check_files=False)
    iters = checked.iters or None
    if "iters" in changes and iters != estimator.iters:
        estimator.iters = iters
    return dataclasses.replace(config, **{name: getattr(checked, name) for name in changes})


def ready_line(config: NodeConfig, estimator: Any, sync_implementation: str, capture: Any, qos: str) -> str:
    """The one log line that says the node is up and what it runs; `qos`: the input QoS in force."""
    providers = getattr(estimator, "providers", None)  # onnxruntime: the provider in use first
    return (f"ready: backend {config.backend}"
            + (f" ({config.model}, {config.model_path})" if config.backend != "opencv_sgbm" else "")
            + (f" on {providers[0]}" if providers else "")
            + f", {config.image_transport} images{' rectified here' if config.rectify else ''}"
            + f", {'approximate' if config.approximate_sync else 'exact'} sync ({sync_implementation}), "
            f"{qos}, capture "
            + (f"into {capture.root} ({capture.counters()['capture']})" if capture else "off"))


def fit_to_backend(config: NodeConfig, estimator: Any) -> tuple[NodeConfig, str | None]:
    """The config adjusted to what the loaded backend can run, and a line to log when it changed.

    - `iters` is checked with the run-time rule (`ros2 param set iters`): a backend without iterations
      (opencv_sgbm) or with a count fixed at export (an ONNX file) refuses another value: StartupError, exit 2.
    - A fixed-size ONNX export takes images of one size only: with no working size set (input_width/height 0)
      that size becomes the working size (the node resizes each pair to it), instead of every pair failing.
    """
    if config.iters and config.backend != "torch":  # torch got `iters` when it was built
        try:
            estimator.iters = config.iters
        except ValueError as exc:
            raise StartupError(f"invalid parameters: parameter iters: {exc}; set iters: 0", EXIT_BAD_PARAMETERS) \
                from None
    fixed = getattr(estimator, "fixed_size", None)
    if fixed is None or (config.input_width and config.input_height):
        return config, None
    height, width = fixed
    note = (f"the ONNX export takes {width}x{height} images only: working size {width}x{height} (each pair is "
            "resized to it; set input_width/input_height to choose, or export --dynamic)")
    return dataclasses.replace(config, input_width=int(width), input_height=int(height)), note


USAGE = """stereo_depth_node: learned stereo depth for ROS 2 (rectified stereo pair + camera_info in; disparity,
depth, points2, confidence and /diagnostics out).

    stereo_depth_node --ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r left/image_rect:=TOPIC ...]
    ros2 launch stereo_depth_ros stereo.launch.py [backend:=opencv_sgbm] [camera:=realsense|zed|oakd] ...

Parameters (with their defaults and descriptions): config/stereo.yaml, or `ros2 param describe`. Topics, QoS,
diagnostics and the launch file: docs/node.md; cameras: docs/cameras.md.
"""


def wants_help(argv: list[str]) -> bool:
    """-h or --help before any --ros-args (rcl would take them for ROS arguments and fail)."""
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return any(arg in ("-h", "--help") for arg in own)


def first_line(exc: Exception) -> str:
    """rcl's errors carry a C file and line after the first line; the first says what is wrong."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
