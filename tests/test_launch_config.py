"""The shipped configuration files, checked without ROS: the RViz config and the Fast DDS profile."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FASTDDS_NS = {"dds": "http://www.eprosima.com"}


def test_rviz_config_shows_depth_image_and_point_cloud():
    config = yaml.safe_load((REPO / "rviz" / "stereo.rviz").read_text())
    manager = config["Visualization Manager"]
    displays = {d["Class"]: d for d in manager["Displays"]}
    image = displays["rviz_default_plugins/Image"]
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert image["Topic"]["Value"] == "depth" and image["Enabled"]
    assert cloud["Topic"]["Value"] == "points2" and cloud["Enabled"]
    assert cloud["Color Transformer"] == "RGB8" and cloud["Position Transformer"] == "XYZ"
    # The launch file's default fixed_frame and the frame the demo and tests stamp their images with.
    assert manager["Global Options"]["Fixed Frame"] == "left_camera_optical_frame"
    assert all(panel["Class"].startswith("rviz_common/") for panel in config["Panels"])


def test_fastdds_profile_declares_a_large_shared_memory_segment_as_default():
    root = ET.parse(REPO / "config" / "fastdds_shm.xml").getroot()
    assert root.tag == "{http://www.eprosima.com}dds"
    descriptors = {d.findtext("dds:transport_id", namespaces=FASTDDS_NS): d
                   for d in root.iterfind("dds:profiles/dds:transport_descriptors/dds:transport_descriptor",
                                          FASTDDS_NS)}
    shm = [d for d in descriptors.values() if d.findtext("dds:type", namespaces=FASTDDS_NS) == "SHM"]
    assert len(shm) == 1
    # Several 1280x720 rgb8 frames (2.6 MiB each) must fit; Fast DDS's default segment is ~512 KiB.
    assert int(shm[0].findtext("dds:segment_size", namespaces=FASTDDS_NS)) >= 16 * 2**20
    participants = root.findall("dds:profiles/dds:participant", FASTDDS_NS)
    default = [p for p in participants if p.get("is_default_profile") == "true"]
    assert len(default) == 1
    rtps = default[0].find("dds:rtps", FASTDDS_NS)
    used = [t.text for t in rtps.iterfind("dds:userTransports/dds:transport_id", FASTDDS_NS)]
    assert set(used) <= set(descriptors) and shm[0].findtext("dds:transport_id", namespaces=FASTDDS_NS) in used
    # Builtin transports off, so the SHM descriptor above replaces the default one; UDP keeps discovery working.
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=FASTDDS_NS) == "false"
    assert any(descriptors[t].findtext("dds:type", namespaces=FASTDDS_NS) == "UDPv4" for t in used)
