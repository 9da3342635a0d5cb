"""Launch stereo_depth_node: learned stereo disparity, metric depth and a coloured point cloud.

    ros2 launch stereo_depth_ros stereo.launch.py namespace:=front \
        left_image:=/cam/left/image_rect right_image:=/cam/right/image_rect \
        left_camera_info:=/cam/left/camera_info right_camera_info:=/cam/right/camera_info \
        backend:=onnxruntime model_path:=/path/to/student.onnx rviz:=true

Parameters come from config/stereo.yaml (or `params_file:=`); `backend` and `model_path`, when given, override
the file. Relative `params_file` and `model_path` values are looked for in the working directory, the package's
share folder and the checkout (stereo_depth_ros/file_search.py gives the order); a params file found nowhere stops
the launch with the list of places looked. When the node exits with an error (e.g. it cannot start: bad
parameters, no model file), the launch ends too, with the node's message and a non-zero exit status. Every
argument is checked before anything starts: `rviz:=true` where RViz is not installed stops the launch with one
line. By default the Fast DDS profile config/fastdds_shm.xml is put in the environment of the launched
processes: its large shared-memory segment keeps megabyte images fast between processes on one host
(`use_fastdds_profile:=false` turns it off, e.g. when your own profile is already set).
"""
import os
import re

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from stereo_depth_ros.file_search import FileSearchError, find_file

PACKAGE = "stereo_depth_ros"
NODE_NAME = "stereo_depth_node"
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


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
    overrides = {name: value(name) for name in ("backend", "model_path") if value(name) != ""}
    try:
        params_file = str(find_file(value("params_file"), "params"))
    except FileSearchError as exc:
        raise LaunchStopped(f"params_file: {exc}") from None
    use_profile = _flag("use_fastdds_profile", value("use_fastdds_profile"))
    rviz = _flag("rviz", value("rviz"))
    if rviz and not _rviz_executable_found():
        raise LaunchStopped("rviz:=true but package 'rviz2' is not installed here (RViz comes with a ROS 2 "
                            "distribution, not with the pip venv); launch without rviz:=true and run "
                            "`rviz2 -d <share>/rviz/stereo.rviz` where RViz is installed")
    remappings = [
        ("left/image_rect", value("left_image")),
        ("right/image_rect", value("right_image")),
        ("left/camera_info", value("left_camera_info")),
        ("right/camera_info", value("right_camera_info")),
    ]
    node = Node(
        package=PACKAGE,
        executable=NODE_NAME,
        name=NODE_NAME,
        namespace=value("namespace"),
        parameters=[params_file, overrides] if overrides else [params_file],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    actions = [SetEnvironmentVariable(_profile_variable(), value("fastdds_profile"))] if use_profile else []
    actions += [*_node_failure_handlers(node), node]
    if rviz:
        share = get_package_share_directory(PACKAGE)
        actions.append(Node(package="rviz2", executable="rviz2", name="stereo_rviz", namespace=value("namespace"),
                            arguments=["-d", os.path.join(share, "rviz", "stereo.rviz"), "-f", value("fixed_frame")],
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
        DeclareLaunchArgument("left_image", default_value="left/image_rect", description="rectified left image"),
        DeclareLaunchArgument("right_image", default_value="right/image_rect", description="rectified right image"),
        DeclareLaunchArgument("left_camera_info", default_value="left/camera_info", description="left camera_info"),
        DeclareLaunchArgument("right_camera_info", default_value="right/camera_info",
                              description="right camera_info (its projection gives focal length and baseline)"),
        DeclareLaunchArgument("use_fastdds_profile", default_value="true",
                              description="use config/fastdds_shm.xml (32 MiB shared-memory segment)"),
        DeclareLaunchArgument("fastdds_profile", default_value=profile, description="Fast DDS XML profile to use"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with rviz/stereo.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="left_camera_optical_frame",
                              description="RViz fixed frame: the left camera's frame_id unless TF connects them"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
