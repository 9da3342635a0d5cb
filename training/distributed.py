"""torchrun's environment -> this process's rank, world size and device: one setup for `label` and `train`.

Without torchrun (WORLD_SIZE unset or 1) everything runs in this process and no process group is made. Under
torchrun the group uses NCCL on CUDA and gloo on the CPU; each rank takes the GPU of its LOCAL_RANK. The same
code runs one machine (`--standalone`) or several (`--nnodes N` with a c10d rendezvous, docs/training.md).

Several machines need what one machine has for free, and this module checks it before any work starts, on
every rank at once (so that they all stop together instead of one stopping and the others waiting for it):
- `check_shared_folder`: the output folder is one folder for every rank (a shared filesystem mounted at the same
  path): rank 0 writes a probe file and every rank must read it back;
- `agree`: a value (e.g. the digest of the dataset's sample names) is the same on every rank.
A rank that loses its peers mid-run (a node killed, a network cut) stops with one line and exit status 1 instead of
a collective's traceback; what was written so far is kept, and re-running the command on every node resumes.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from stereo_depth_ros.atomic_io import atomic_write_bytes

from .cli import CliError, WorkError

# Rank 0 may write checkpoints, validate or merge manifests while the others wait at a barrier: generous. It is also
# how long the others wait for a machine that vanished without closing its connections (docs/training.md).
TIMEOUT = datetime.timedelta(hours=2)
# How long a rank keeps looking for rank 0's probe file (a shared filesystem may show a new file late).
SHARED_PROBE_WAIT_S = 5.0
# What gloo and NCCL say when a peer process is gone (they raise plain RuntimeErrors).
_PEER_LOST_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
                    "NCCL communicator was aborted", "remote process exited")


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (pickled; for small objects)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (pickled; for small objects)."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


def resolve_device(device_arg: str | None) -> torch.device:
    """auto/None -> cuda when available, else cpu; CliError for a CUDA device on a machine without one."""
    if device_arg in (None, "auto"):
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError as error:
        raise CliError(f"--device {device_arg}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device_arg}: CUDA is not available on this machine")
    return device


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (rather than a bug of ours)."""
    return isinstance(error, dist.DistError) or any(sign in str(error) for sign in _PEER_LOST_SIGNS)


@contextlib.contextmanager
def distributed(device_arg: str | None) -> Iterator[Distributed]:
    """The process group for the duration of a command (destroyed on the way out, also on errors)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield Distributed(rank, world_size, local_rank, device)
    except RuntimeError as error:
        if world_size > 1 and lost_peer(error):
            raise WorkError(f"rank {rank} on {socket.gethostname()} lost the other ranks ({_gist(error)}): a node "
                            "stopped or the network failed; what was saved is kept, re-run the same command on "
                            "every node to resume") from None
        raise
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _gist(error: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's "[source/file.cc:561]" prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0][:160]


# ------------------------------------------------------------------------------------ what several nodes share
def digest(names: Iterable[str]) -> str:
    """A short fingerprint of a list of names (to compare datasets across ranks without sending them)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def agree(dist_info: Distributed, value: Any, what: str) -> None:
    """CliError on every rank unless every rank has rank 0's `value`; the message names the ranks and hosts."""
    if not dist_info.active:
        return
    seen = dist_info.gather((socket.gethostname(), value))
    differ = [f"rank {r} on {host}" for r, (host, theirs) in enumerate(seen) if theirs != seen[0][1]]
    if differ:
        raise CliError(f"{what} is not the same on every node: {', '.join(differ)} see(s) something else than rank 0 "
                       f"on {seen[0][0]}; every node needs the same files at the same path (docs/training.md)")


def check_shared_folder(dist_info: Distributed, folder: Path, what: str) -> None:
    """CliError on every rank unless every rank sees the file rank 0 writes into `folder` (created if missing).

    A multi-node run writes its output from every rank (label) or reads back what rank 0 wrote (train's resume),
    so the folder must be one folder on a filesystem every node mounts at the same path.
    """
    if not dist_info.active:
        return
    token = dist_info.broadcast(os.urandom(8).hex() if dist_info.is_main else None)
    probe = folder / f".shared_check_{token}"
    if dist_info.is_main:
        atomic_write_bytes(probe, token.encode())
    dist_info.barrier()
    deadline = time.monotonic() + SHARED_PROBE_WAIT_S
    seen = False
    while not seen:
        seen = probe.is_file() and probe.read_bytes() == token.encode()
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    views = dist_info.gather((socket.gethostname(), seen))
    if dist_info.is_main:
        probe.unlink(missing_ok=True)
    blind = [f"rank {r} on {host}" for r, (host, ok) in enumerate(views) if not ok]
    if blind:
        raise CliError(f"{what} {folder} is not shared between the nodes: {', '.join(blind)} cannot see the file "
                       f"rank 0 on {views[0][0]} wrote there; put it on a filesystem every node mounts at the same "
                       "path (docs/training.md)")


__all__ = ["Distributed", "agree", "check_shared_folder", "digest", "distributed", "lost_peer", "resolve_device"]
