"""Shared helpers for tests that talk to a real stereo_depth_node over real DDS.

The node always runs as its own process (`NodeProcess`, stopped with SIGINT to its process group) in an
environment that limits discovery to this host and to a domain derived from the test process id, with ROS logs
and TMPDIR under the test's tmp directory (`node_env`). `StereoClient` (stereo_devkit.client) publishes the
inputs and records the outputs; waits use generous timeouts because a late joiner can take seconds to be
discovered on a loaded machine.
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from stereo_devkit.client import StereoClient, image_message, stamp_from_seconds
from stereo_devkit.motorcycle import FRAME_ID, StereoRig, motorcycle_rig
from stereo_devkit.node_process import NodeProcess, isolated_ros_env, node_command

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
FASTDDS_PROFILE = REPO / "config" / "fastdds_shm.xml"
TIMEOUT = 20.0  # seconds for anything that crosses DDS


_DOMAIN_OFFSETS = itertools.count()


def node_env(workdir: Path, fastdds_profile: Path | None = FASTDDS_PROFILE) -> dict[str, str]:
    """Environment for a node subprocess (and for the test's own client): localhost, logs in tmp, and a domain
    of its own: derived from the process id like every DDS test here, and different for each node this test
    process starts, so that a module-scoped node never answers for another test's node."""
    domain = (os.getpid() + 13 * next(_DOMAIN_OFFSETS)) % 90 + 5
    return isolated_ros_env(workdir, domain_id=domain, fastdds_profile=fastdds_profile)


def start_node(workdir: Path, env: dict[str, str], parameters: dict[str, object], name: str = "node",
               remappings: dict[str, str] | None = None) -> NodeProcess:
    return NodeProcess(node_command(parameters, remappings), env, workdir / f"{name}.log", cwd=REPO)


class StampCounter:
    """Strictly increasing stamps, so that no check is mistaken for an out-of-order one by accident."""

    def __init__(self, start: float = 1000.0, step: float = 0.1) -> None:
        self._values = itertools.count()
        self.start, self.step = start, step

    def next(self):
        return stamp_from_seconds(self.start + next(self._values) * self.step)


class StereoRigClient:
    """A StereoClient with one stereo rig to stream: publishes valid (or deliberately broken) pairs."""

    def __init__(self, client: StereoClient, rig: StereoRig, stamps: StampCounter) -> None:
        self.client, self.rig, self.stamps = client, rig, stamps

    def pair(self, stamp, rig: StereoRig | None = None, encoding: str = "rgb8"):
        rig = rig or self.rig
        left, right = rig.left, rig.right
        if encoding == "mono8":
            left, right = left.mean(axis=2).astype(np.uint8), right.mean(axis=2).astype(np.uint8)
        return (image_message(left, encoding, stamp, FRAME_ID), image_message(right, encoding, stamp, FRAME_ID),
                *rig.camera_infos(stamp))

    def publish_valid(self, info_lead: float = 0.0):
        stamp = self.stamps.next()
        self.client.publish(*self.pair(stamp), info_lead=info_lead)
        return stamp

    def expect_output(self, stamp, topic: str = "disparity", timeout: float = TIMEOUT):
        msg = self.client.wait_for_stamp(topic, stamp, timeout)
        assert msg is not None, f"no {topic} for stamp {stamp.sec}.{stamp.nanosec:09d} within {timeout} s"
        return msg


def small_rig(width: int = 320) -> StereoRig:
    return motorcycle_rig(width)


def float_image(msg) -> np.ndarray:
    """float32 [H, W] of a 32FC1 Image (little-endian, packed rows, as the node writes it)."""
    assert msg.encoding == "32FC1" and not msg.is_bigendian and msg.step == msg.width * 4
    return np.frombuffer(msg.data, np.float32).reshape(msg.height, msg.width)


def require_ros_tooling() -> None:
    """Skip unless the real launch/ros2cli/colcon tooling (../shared/ros/wheels, or a ROS 2 install) is here."""
    missing = []
    for module in ("launch", "launch_ros", "ros2cli"):
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a partial install failing on import
            missing.append(f"{module} ({type(exc).__name__})")
    for tool in ("ros2", "colcon"):
        if shutil.which(tool) is None and not (Path(__import__("sys").executable).parent / tool).exists():
            missing.append(f"`{tool}` executable")
    if missing:
        pytest.skip("needs the ROS tooling wheels (launch, ros2cli, colcon): missing " + ", ".join(missing)
                    + f"; `make test` installs them from {SHARED / 'ros' / 'wheels'} when that folder exists")


VENV = Path(__import__("sys").prefix)


def venv_activation() -> str:
    """The shell prefix that activates this venv (`make venv`'s .venv, an ament prefix: tools/ament_venv.py), for
    tests of the README's venv route; skips without the ROS tooling wheels or outside a venv."""
    import shlex
    import sys

    require_ros_tooling()
    if sys.prefix == sys.base_prefix or not (VENV / "bin" / "activate").is_file():
        pytest.skip("not running in a venv with bin/activate (the route under test is `make venv`'s .venv)")
    return f"source {shlex.quote(str(VENV / 'bin' / 'activate'))} && "


def plain_env(workdir: Path) -> dict[str, str]:
    """node_env without any ROS or venv setting (AMENT_PREFIX_PATH, PYTHONPATH, the venv's bin/ on PATH): what a
    new shell has before `source .venv/bin/activate`."""
    env = node_env(workdir)
    for name in ("AMENT_PREFIX_PATH", "PYTHONPATH", "VIRTUAL_ENV", "COLCON_PREFIX_PATH"):
        env.pop(name, None)
    venv_bin = str(VENV / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin)
    return env
