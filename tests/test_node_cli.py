"""The node's command line as a user types it: `--help`, command lines rcl cannot read, and Ctrl-C or SIGTERM while
it starts. Each is one line (or the usage) and the right exit status, never a traceback. The node runs as its own
process (stereo_devkit.node_process)."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from ros_helpers import REPO, node_env
from stereo_devkit.node_process import NodeProcess

NODE = [sys.executable, "-m", "stereo_depth_ros.node"]


def _run(tmp_path, *arguments: str, timeout: float = 60.0) -> tuple[int, str]:
    with NodeProcess([*NODE, *arguments], node_env(tmp_path), tmp_path / "node.log", cwd=REPO) as node:
        code = node.wait(timeout)
    return code, node.log()


def test_help_prints_the_usage(tmp_path):
    code, log = _run(tmp_path, "--help")
    assert code == 0 and log.startswith("stereo_depth_node: learned stereo depth"), log
    assert "--ros-args" in log and "docs/node.md" in log


@pytest.mark.parametrize("arguments, message", [
    (("--ros-args", "--params-file", "{bad_yaml}"), "invalid command line: "),
    (("--ros-args", "-p", "backend"), "invalid command line: "),
    (("--ros-args", "-p", "backend:=opencv_sgbm", "--ros-args-typo"), "invalid command line: "),
    (("--ros-args", "-p", "backend:=opencv_sgbm", "-r", "left/image_rect:=not/a//topic"), "invalid command line: "),
], ids=["broken_params_yaml", "parameter_without_value", "unknown_flag", "bad_remap"])
def test_a_command_line_rcl_cannot_read_is_one_fatal_line(tmp_path, arguments, message):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("stereo_depth_node:\n  ros__parameters:\n    backend: [opencv_sgbm\n")
    code, log = _run(tmp_path, *(arg.format(bad_yaml=bad_yaml) for arg in arguments))
    fatal = [line for line in log.splitlines() if "[FATAL]" in line]
    assert code == 2 and len(fatal) == 1 and message in fatal[0], log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("sig, after_s", [(signal.SIGINT, 1.0), (signal.SIGINT, 1.5), (signal.SIGTERM, 0.6)])
def test_a_signal_while_starting_is_a_clean_stop(tmp_path, sig, after_s):
    """Ctrl-C (or a supervisor's SIGTERM) during start-up used to end in a KeyboardInterrupt or 'context is not
    valid' traceback, or in a FATAL that called it a QoS override error. (A Ctrl-C in the first fraction of a
    second, while Python is still importing the modules, prints Python's own KeyboardInterrupt traceback, as any
    Python program and the ros2 CLI itself do; not tested.)"""
    with NodeProcess([*NODE, "--ros-args", "-p", "backend:=opencv_sgbm"], node_env(tmp_path), tmp_path / "node.log",
                     cwd=REPO) as node:
        time.sleep(after_s)
        os.killpg(node.proc.pid, sig)
        code = node.wait(60.0)
    log = node.log()
    assert "Traceback" not in log and "[FATAL]" not in log, log
    assert code in (0, -sig), log  # before Python's handlers exist the signal's default action may end it
