"""Launch stereo_depth_node: learned stereo disparity, metric depth and a coloured point cloud.

    ros2 launch stereo_depth_ros stereo.launch.py namespace:=front \
        left_image:=/cam/left/image_rect right_image:=/cam/right/image_rect \
        left_camera_info:=/cam/left/camera_info right_camera_info:=/cam/right/camera_info \
        backend:=onnxruntime model_path:=/path/to/student.onnx rviz:=true

Camera presets (docs/cameras.md): `camera:=realsense|zed|oakd` loads config/cameras/<camera>.yaml, the node's
parameters for that camera, and remaps the four inputs to that driver's topics; `driver:=true` also includes the
driver's own launch file (`driver_launch:=<package>/<file>` names another, `driver_args:='a:=1 b:=2'` adds or
changes its arguments), so that the driver runs under the same environment (the Fast DDS profile below) and one
Ctrl-C stops both.

    ros2 launch stereo_depth_ros stereo.launch.py camera:=realsense driver:=true backend:=opencv_sgbm

Parameters come from config/stereo.yaml, then the camera preset, then your own `params_file:=` (each overrides the
one before); `backend`, `model_path`, `approximate_sync`, `approximate_sync_tolerance_seconds`, `image_transport`
and `rectify`, when given, override them all (any other node parameter given as a launch argument stops the launch
with one line: it belongs in a params file). A remap argument (`left_image:=` ...) overrides the preset's topic; it
names the base topic: with `image_transport:=compressed` the node reads its `/compressed` sub-topic, and with
`rectify:=true` it is the raw image. Relative `params_file` and `model_path` values are looked for in the working
directory, the package's share folder and the checkout (stereo_depth_ros/file_search.py gives the order); a params
file found nowhere stops the launch with the list of places looked. When the node exits with an error (e.g. it
cannot start: bad parameters, no model file), the launch ends too, with the node's message and a non-zero exit
status. Every argument is checked before anything starts: `rviz:=true` where RViz is not installed, a params file
with no section for the node, or a Fast DDS profile that is not readable XML stops the launch with one line. By
default the Fast DDS profile config/fastdds_shm.xml is put in the environment of the launched processes: its large
shared-memory segment carries camera-sized images between processes on one host, where Fast DDS's defaults lose or
delay them (`use_fastdds_profile:=false` turns it off, e.g. when your own profile is already set).
"""
import os
import re

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.launch_description_sources import AnyLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from stereo_depth_ros.camera_presets import (PRESETS, CameraPreset, PresetError, load_preset, merge_arguments,
                                             parse_arguments, split_launch_spec)
from stereo_depth_ros.config import IMAGE_TRANSPORTS, ConfigError, NodeConfig, load_params_file
from stereo_depth_ros.file_search import FileSearchError, find_file

PACKAGE = "stereo_depth_ros"
NODE_NAME = "stereo_depth_node"
# Node parameters that are also arguments of this launch file; any other node parameter given as a launch argument
# is refused (it would be ignored).
LAUNCH_ARGUMENT_PARAMETERS = frozenset({"backend", "model_path", "approximate_sync",
                                        "approximate_sync_tolerance_seconds", "image_transport", "rectify"})
NODE_PARAMETERS = frozenset(NodeConfig().as_dict())
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
DEFAULT_FIXED_FRAME = "left_camera_optical_frame"  # the frame the demo and the tests stamp their images with


class LaunchStopped(RuntimeError):
    """Ends the launch: launch logs "Caught exception in launch ...: <message>" (no traceback) and exits 1.

    launch 3.7.1 turns an exception raised by an action or event handler into exit status 1; a Shutdown event
    would end the launch with status 0, which is what made a node that could not start look like success.
    """


def _node_failure_handlers(node: Node) -> list:
    """Handlers that end the launch with the node's own FATAL message when it exits with an error."""
    fatal: list[str] = []

    def remember_fatal(event) -> None:
        for line in _COLOUR.sub("", event.text.decode(errors="replace")).splitlines():
            if "[FATAL]" in line:
                fatal.append(line.split("]: ", 1)[-1].strip())

    def on_exit(event, context) -> None:
        # A non-zero status during shutdown (Ctrl-C escalating to SIGTERM) is the launch's own doing.
        if event.returncode == 0 or context.is_shutdown:
            return
        reason = fatal[-1] if fatal else "see its output above"
        raise LaunchStopped(f"{NODE_NAME} exited with status {event.returncode}: {reason}")

    return [RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=remember_fatal, on_stderr=remember_fatal)),
            RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]


def _flag(name: str, text: str) -> bool:
    """A true/false launch argument, read as launch's IfCondition reads it, with a one-line error otherwise."""
    if text.strip().lower() in ("true", "1"):
        return True
    if text.strip().lower() in ("false", "0"):
        return False
    raise LaunchStopped(f"{name}: expected true or false, got {text!r}")


def _driver_include(context, preset: CameraPreset | None) -> IncludeLaunchDescription | None:
    """The driver's launch file to include (driver:=true or driver_launch:=), checked before anything starts."""
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    spec = value("driver_launch")
    if not _flag("driver", value("driver")) and not spec:
        return None
    if not spec:
        if preset is None:
            raise LaunchStopped("driver:=true needs camera:=<preset> or driver_launch:=<package>/<launch file>")
        spec = preset.driver_launch
    try:
        package, file = split_launch_spec(spec)
        arguments = merge_arguments(preset.driver_arguments if preset else (),
                                    parse_arguments(value("driver_args").split(), "driver_args"))
    except PresetError as exc:
        raise LaunchStopped(str(exc)) from None
    try:
        share = get_package_share_directory(package)
    except PackageNotFoundError:
        raise LaunchStopped(f"driver launch {spec}: package {package!r} is not installed here (install the camera "
                            "driver, see docs/cameras.md, or launch without driver:=true and start it yourself)") \
            from None
    candidates = [os.path.join(share, "launch", file), os.path.join(share, file)]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        raise LaunchStopped(f"driver launch {spec}: no launch file {file!r} in {share}/launch")
    return IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=arguments)


def _seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise LaunchStopped(f"{name}: expected a number of seconds, got {text!r}") from None
    if not (seconds >= 0.0 and seconds != float("inf")):
        raise LaunchStopped(f"{name}: expected a finite number of seconds >= 0, got {text!r}")
    return seconds


def _refuse_node_parameters(context) -> None:
    """A node parameter given as a launch argument (`input_width:=640`) would be ignored silently: launch passes
    undeclared arguments on to nobody. Stop with one line instead."""
    misplaced = sorted(name for name in context.launch_configurations
                       if name in NODE_PARAMETERS and name not in LAUNCH_ARGUMENT_PARAMETERS)
    if misplaced:
        given = " ".join(f"{name}:={context.launch_configurations[name]}" for name in misplaced)
        raise LaunchStopped(f"{given}: node parameter(s), not arguments of this launch file; set them in a params "
                            "file (params_file:=mine.yaml, layout as config/stereo.yaml), or use "
                            "`ros2 run stereo_depth_ros stereo_depth_node --ros-args -p NAME:=VALUE`")


def _check_profile(path: str) -> None:
    """The Fast DDS profile must be a readable XML file: Fast DDS only logs a parse error and runs on its
    defaults, which lose camera-sized frames (docs/node.md, "Camera drivers and transport")."""
    import xml.etree.ElementTree as ElementTree

    try:
        ElementTree.parse(path)
    except OSError as exc:
        raise LaunchStopped(f"fastdds_profile: cannot read {path!r} ({exc.strerror or exc})") from None
    except ElementTree.ParseError as exc:
        raise LaunchStopped(f"fastdds_profile: {path!r} is not valid XML ({exc})") from None


def _rviz_executable_found() -> bool:
    try:
        get_package_share_directory("rviz2")
        return True
    except PackageNotFoundError:
        return False


def _actions(context, *args, **kwargs):
    # Every argument is checked here, before any process starts: an exception raised after a process started
    # ends the launch without stopping that process, which then runs on as an orphan.
    # Resolved here rather than with substitutions because an empty `backend`/`model_path` must mean
    # "keep the params file's value", which a plain parameter substitution cannot express.
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    _refuse_node_parameters(context)
    overrides: dict[str, object] = {name: value(name) for name in ("backend", "model_path") if value(name) != ""}
    if value("approximate_sync_tolerance_seconds") != "":
        overrides["approximate_sync_tolerance_seconds"] = _seconds("approximate_sync_tolerance_seconds",
                                                                   value("approximate_sync_tolerance_seconds"))
    for name in ("approximate_sync", "rectify"):
        if value(name) != "":
            overrides[name] = _flag(name, value(name))
    if value("image_transport") != "":
        if value("image_transport") not in IMAGE_TRANSPORTS:
            raise LaunchStopped(f"image_transport: expected {' or '.join(IMAGE_TRANSPORTS)}, got "
                                f"{value('image_transport')!r}")
        overrides["image_transport"] = value("image_transport")
    share = get_package_share_directory(PACKAGE)
    try:
        params_file = str(find_file(value("params_file"), "params"))
        preset = load_preset(value("camera"), os.path.join(share, "config", "cameras")) if value("camera") else None
        load_params_file(params_file, NODE_NAME)  # a file with no section for the node would be ignored silently
    except FileSearchError as exc:
        raise LaunchStopped(f"params_file: {exc}") from None
    except (PresetError, ConfigError) as exc:
        raise LaunchStopped(str(exc)) from None
    # Package defaults, then the camera preset, then the user's own file (when it is not the defaults).
    defaults = os.path.join(share, "config", "stereo.yaml")
    params_files = [defaults, str(preset.params_file)] if preset else []
    if not preset or not os.path.samefile(params_file, defaults):
        params_files.append(params_file)
    driver = _driver_include(context, preset)
    use_profile = _flag("use_fastdds_profile", value("use_fastdds_profile"))
    if use_profile:
        _check_profile(value("fastdds_profile"))
    rviz = _flag("rviz", value("rviz"))
    if rviz and not _rviz_executable_found():
        raise LaunchStopped("rviz:=true but package 'rviz2' is not installed here (RViz comes with a ROS 2 "
                            "distribution, not with the pip venv); launch without rviz:=true and run "
                            "`rviz2 -d <share>/rviz/stereo.rviz` where RViz is installed")
    # An empty argument keeps the preset's topic (or the node's own name). Images: the node subscribes to
    # */image_rect, or */image_raw with rectify:=true; one argument remaps whichever it is.
    remappings = []
    for argument, names in (("left_image", ("left/image_rect", "left/image_raw")),
                            ("right_image", ("right/image_rect", "right/image_raw")),
                            ("left_camera_info", ("left/camera_info",)), ("right_camera_info", ("right/camera_info",))):
        topic = value(argument) or (preset.topics[argument] if preset else "")
        remappings += [(name, topic) for name in names if topic]
    fixed_frame = value("fixed_frame") or (preset.fixed_frame if preset else DEFAULT_FIXED_FRAME)
    node = Node(
        package=PACKAGE,
        executable=NODE_NAME,
        name=NODE_NAME,
        namespace=value("namespace"),
        parameters=[*params_files, overrides] if overrides else params_files,
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    actions = [SetEnvironmentVariable(_profile_variable(), value("fastdds_profile"))] if use_profile else []
    actions += [driver] if driver is not None else []
    actions += [*_node_failure_handlers(node), node]
    if rviz:
        actions.append(Node(package="rviz2", executable="rviz2", name="stereo_rviz", namespace=value("namespace"),
                            arguments=["-d", os.path.join(share, "rviz", "stereo.rviz"), "-f", fixed_frame],
                            output="screen"))
    return actions


def _profile_variable() -> str:
    # Fast DDS 3 (Jazzy and later) reads FASTDDS_DEFAULT_PROFILES_FILE and warns that the old FASTRTPS_ name is
    # deprecated; Humble's Fast DDS 2.6 only knows the old name.
    old_distros = ("foxy", "galactic", "humble")
    if os.environ.get("ROS_DISTRO") in old_distros:
        return "FASTRTPS_DEFAULT_PROFILES_FILE"
    return "FASTDDS_DEFAULT_PROFILES_FILE"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "stereo.yaml"),
                              description="ROS 2 params file (stereo_depth_node: ros__parameters: ...)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="torch | onnxruntime | opencv_sgbm; empty keeps the params file's"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="checkpoint (.pth) or ONNX file; empty keeps the params file's"),
        DeclareLaunchArgument("camera", default_value="",
                              description=f"camera preset: {' | '.join(PRESETS)} (config/cameras/); empty: none"),
        DeclareLaunchArgument("driver", default_value="false",
                              description="also launch the camera driver (the preset's launch file, or driver_launch)"),
        DeclareLaunchArgument("driver_launch", default_value="",
                              description="driver launch file to include, <package>/<file>; empty: the preset's"),
        DeclareLaunchArgument("driver_args", default_value="",
                              description="driver launch arguments 'name:=value ...', over the preset's"),
        DeclareLaunchArgument("approximate_sync_tolerance_seconds", default_value="",
                              description="largest left/right stamp difference with approximate_sync (0 = "
                                          "unbounded); empty keeps the params files'"),
        DeclareLaunchArgument("approximate_sync", default_value="",
                              description="true | false (pair by nearest stamp); empty keeps the params files'"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="raw | compressed (<image>/compressed); empty keeps the params files'"),
        DeclareLaunchArgument("rectify", default_value="",
                              description="true: raw images, rectified by the node; empty keeps the params files'"),
        DeclareLaunchArgument("left_image", default_value="",
                              description="left image topic (rectified, or raw with rectify); empty: the preset's "
                                          "or left/image_rect"),
        DeclareLaunchArgument("right_image", default_value="", description="right image topic, as left_image"),
        DeclareLaunchArgument("left_camera_info", default_value="",
                              description="left camera_info; empty: the preset's or left/camera_info"),
        DeclareLaunchArgument("right_camera_info", default_value="",
                              description="right camera_info (its projection gives focal length and baseline)"),
        DeclareLaunchArgument("use_fastdds_profile", default_value="true",
                              description="use config/fastdds_shm.xml (32 MiB shared-memory segment)"),
        DeclareLaunchArgument("fastdds_profile", default_value=profile, description="Fast DDS XML profile to use"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with rviz/stereo.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="",
                              description="RViz fixed frame: the left camera's frame_id unless TF connects them; "
                                          f"empty: the preset's or {DEFAULT_FIXED_FRAME}"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
