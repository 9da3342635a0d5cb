"""Two "nodes" on this machine: two torchrun launches with a c10d rendezvous on localhost, one process each (gloo).

That is exactly what each machine of a cluster runs (docs/training.md), minus the network between them: the
launches share nothing but the rendezvous endpoint, and every rank finds its peers through it. `TwoNodes` starts
both, `kill_node` does to one launch what a crash does to a machine (kill -9 of torchrun and of the workers it
started, which torchrun puts in their own sessions), and every launch logs to its own file for the assertions.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def env_one_thread() -> dict[str, str]:
    # One thread per process: identical arithmetic in every run (bit-equality across launch modes) and light on a
    # shared CPU. No torchrun variables inherited from a surrounding launch.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun_node(argv: list[str], endpoint: str, run_id: str) -> list[str]:
    """The command one machine of a two-machine job runs (docs/training.md's recipe)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
            "-m", "stereo_distill.cli", *argv]


class TwoNodes:
    """Both launches of one job; `argv_a`/`argv_b` are the stereo-distill arguments of each (normally equal)."""

    def __init__(self, logs: Path, argv_a: list[str], argv_b: list[str] | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        port, run_id = free_port(), uuid.uuid4().hex[:8]
        endpoint = f"127.0.0.1:{port}"
        self.logs = [logs / "node_a.log", logs / "node_b.log"]
        self.started = time.monotonic()
        self.procs = []
        for log, argv in zip(self.logs, (argv_a, argv_b or argv_a), strict=True):
            with open(log, "w") as handle:
                self.procs.append(subprocess.Popen(torchrun_node(argv, endpoint, run_id), cwd=REPO,
                                                   env=env_one_thread(), stdout=handle, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
            # Node B starts once node A's torchrun hosts the rendezvous store, so that killing B (the tests' crash)
            # never takes the store with it: what a cluster has when the endpoint is a machine that stays up.
            wait_for(lambda: _listening(port), timeout=120, poll=0.1)

    def wait(self, timeout: float = 300) -> list[int]:
        """Exit statuses of both launches (each waited for up to `timeout` s, then killed: a hang fails the test)."""
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                kill_node(proc)
                codes.append(proc.wait())
        return codes

    def log(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def kill_node(proc: subprocess.Popen) -> None:
    """kill -9 of a launch: its torchrun agent and every process under it, at once (a machine going down)."""
    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(condition, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False
