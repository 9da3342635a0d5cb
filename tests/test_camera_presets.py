"""The camera presets (config/cameras/*.yaml, read by stereo_depth_ros/camera_presets.py), checked without ROS:
each is a valid params file for the node, names its driver's topics, launch file and version, and a broken
preset is one clear line. (tests/test_launch_cameras.py launches them for real.)"""
from pathlib import Path

import pytest
import yaml

from stereo_depth_ros.camera_presets import (PRESETS, PresetError, load_preset, merge_arguments, parse_arguments,
                                             split_launch_spec)
from stereo_depth_ros.config import NodeConfig, load_params_file

FOLDER = Path(__file__).resolve().parents[1] / "config" / "cameras"

# What each driver publishes, from its own source (see the preset's header): topic prefix, encoding in the docs.
EXPECTED = {
    "realsense": ("/camera/camera/infra1/image_rect_raw", "realsense2_camera/rs_launch.py", "4.56.1", False),
    "zed": ("/zed/zed_node/left/color/rect/image", "zed_wrapper/zed_camera.launch.py", "5.4.1", False),
    "oakd": ("/oak/left/image_raw", "depthai_ros_driver/camera.launch.py", "2.10", True),
}


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_is_a_valid_node_params_file_with_its_driver(name):
    left_image, driver_launch, version, approximate = EXPECTED[name]
    preset = load_preset(name, FOLDER)
    config = NodeConfig.from_dict(load_params_file(preset.params_file, "stereo_depth_node")).validate(
        check_files=False)
    assert config.approximate_sync is approximate and not config.use_system_default_qos  # the QoS follows
    assert config.image_transport == "raw" and config.rectify is False
    assert preset.topics["left_image"] == left_image and preset.driver_launch == driver_launch
    assert all(topic.startswith("/") for topic in preset.topics.values())
    assert version in preset.params_file.read_text().split("\n\n")[0]  # named in the header
    assert preset.fixed_frame and preset.driver_arguments


def test_driver_arguments_and_config_folder_placeholder():
    oakd = load_preset("oakd", FOLDER)
    arguments = dict(oakd.driver_arguments)
    assert arguments["params_file"] == f"{FOLDER}/oakd_driver.yaml" and Path(arguments["params_file"]).is_file()
    stereo = yaml.safe_load(Path(arguments["params_file"]).read_text())["/**"]["ros__parameters"]["stereo"]
    assert stereo["i_left_rect_publish_topic"] and stereo["i_right_rect_publish_topic"]
    assert stereo["i_reverse_stereo_socket_order"] is True
    zed = dict(load_preset("zed", FOLDER).driver_arguments)
    # the value itself holds ':=' (the wrapper's own inline override syntax)
    assert zed["param_overrides"].startswith("video.publish_left_right:=true;")
    realsense = dict(load_preset("realsense", FOLDER).driver_arguments)
    assert realsense["enable_infra1"] == realsense["enable_infra2"] == "true"


def test_argument_helpers():
    assert parse_arguments(["a:=1", "b:=x:=y", "c:="]) == [("a", "1"), ("b", "x:=y"), ("c", "")]
    assert merge_arguments([("a", "1"), ("b", "2")], [("b", "3"), ("c", "4")]) == [("a", "1"), ("b", "3"), ("c", "4")]
    assert split_launch_spec("pkg/launch.py") == ("pkg", "launch.py")
    with pytest.raises(PresetError, match="driver argument 'a=1' is not name:=value"):
        parse_arguments(["a=1"])
    with pytest.raises(PresetError, match=r"driver_launch 'rs_launch.py' is not <package>/<launch file>"):
        split_launch_spec("rs_launch.py")


def test_unknown_or_broken_preset_is_one_clear_line(tmp_path):
    with pytest.raises(PresetError, match="camera:='kinect' is not a preset; presets: realsense, zed, oakd"):
        load_preset("kinect", FOLDER)
    (tmp_path / "zed.yaml").write_text("stereo_depth_node:\n  ros__parameters: {}\n")
    with pytest.raises(PresetError, match="needs stereo_depth_node: and stereo_launch: sections"):
        load_preset("zed", tmp_path)
    section = {key: "/t" for key in ("left_image", "right_image", "left_camera_info")}
    (tmp_path / "zed.yaml").write_text(yaml.safe_dump({
        "stereo_depth_node": {"ros__parameters": {}},
        "stereo_launch": {"ros__parameters": {**section, "colour": 1}}}))
    with pytest.raises(PresetError, match="stereo_launch has unknown keys colour; no right_camera_info, fixed_frame"):
        load_preset("zed", tmp_path)
