"""Run a `stereo_depth_node` as a process of its own, in a ROS environment that only it and its clients see.

- `isolated_ros_env`: an environment that keeps discovery on this host and in a domain of its own, with logs and
  launch_ros' temporary files in a directory the caller owns;
- `node_command`: the node's command line with `--ros-args` overrides;
- `NodeProcess`: a child process in its own session, stopped with SIGINT to the whole group (how `ros2 launch`
  and rclpy expect to be stopped; SIGTERM leaves launched nodes orphaned).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence


def default_domain_id() -> int:
    """A domain derived from the process id, so that concurrent runs on one machine rarely meet."""
    return os.getpid() % 90 + 5


def package_fastdds_profile() -> Path | None:
    """The package's shared-memory profile: the repo's config/ or the installed share directory."""
    candidate = Path(__file__).resolve().parents[1] / "config" / "fastdds_shm.xml"
    if candidate.is_file():
        return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("stereo_depth_ros")) / "config" / "fastdds_shm.xml"
    except Exception:
        return None
    return candidate if candidate.is_file() else None


def isolated_ros_env(
    workdir: str | os.PathLike,
    domain_id: int | None = None,
    fastdds_profile: str | os.PathLike | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for ROS processes that must only see each other.

    Discovery stays on localhost, in `domain_id` (default `default_domain_id()`); ROS logs and TMPDIR go under
    `workdir`. `fastdds_profile` selects a Fast DDS XML profile; None removes any inherited one so that runs
    are comparable.
    """
    workdir = Path(workdir)
    (workdir / "ros_log").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if base is None else base)
    env.update(
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=str(default_domain_id() if domain_id is None else domain_id),
        ROS_LOG_DIR=str(workdir / "ros_log"),
        TMPDIR=str(workdir / "tmp"),
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
    )
    # Fast DDS 3 reads FASTDDS_*; the older FASTRTPS_* name still works there but makes the rmw warn.
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if fastdds_profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(fastdds_profile)
    # A user's ROS_LOCALHOST_ONLY (pre-Jazzy) would conflict with the range above.
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def node_command(parameters: Mapping[str, object] | None = None, remappings: Mapping[str, str] | None = None,
                 params_file: str | os.PathLike | None = None, node_name: str | None = None) -> list[str]:
    """The command line that runs the node in this interpreter, with `--ros-args` overrides."""
    cmd = [sys.executable, "-m", "stereo_depth_ros.node", "--ros-args"]
    if node_name:
        cmd += ["-r", f"__node:={node_name}"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in (parameters or {}).items():
        cmd += ["-p", f"{name}:={_param_literal(value)}"]
    for src, dst in (remappings or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def _param_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # Quote so that YAML never turns "1e3" or "true" into a number or a bool.
        return "'" + value.replace("'", "''") + "'" if value else "''"
    return str(value)


class NodeProcess:
    """A child process in its own session with its output in a log file; use as a context manager."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], log_path: str | os.PathLike,
                 cwd: str | os.PathLike | None = None):
        self.cmd = list(cmd)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until `text` appears in the output (True) or the process exits or time runs out (False)."""
        return self.wait_for_log_regex(re.escape(text), timeout)

    def wait_for_log_regex(self, pattern: str, timeout: float = 30.0, start: int = 0) -> bool:
        """Like wait_for_log, for a regular expression, searching the output from character `start` on
        (`len(process.log())` taken before an action finds only what the action caused)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            if regex.search(self.log(), start):
                return True
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return bool(regex.search(self.log(), start))
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT to the process group, then SIGTERM and SIGKILL if it does not exit. Returns the exit status."""
        for sig, grace in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        code = self.proc.wait()
        self._log.close()
        return code

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None or not self._log.closed:
            self.stop()
