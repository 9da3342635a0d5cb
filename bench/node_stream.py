"""What bench/node_e2e.py and bench/capture.py share: a node in its own process, warmed up, streamed into at a
rate, and what came back (not a benchmark itself).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stereo_devkit.client import RigStreamer, StereoClient
from stereo_devkit.node_process import NodeProcess, node_command

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def warmed_up_node(params: dict[str, object], env: dict[str, str], workdir: str | Path, rig: Any,
                   warmup_timeout: float) -> Iterator[tuple[NodeProcess, StereoClient, RigStreamer]]:
    """(node, client, streamer): stereo_depth_node from `params`, discovered and past its first inference
    (lazy initialisation is not measured). Exits with the node log's tail when it does not get that far."""
    with NodeProcess(node_command(params), env, Path(workdir) / "node.log", cwd=REPO) as node, \
            StereoClient(env, outputs=("disparity",)) as client:
        if not client.wait_for_node(60.0):
            raise SystemExit(f"node did not come up:\n{node.log()[-2000:]}")
        streamer = RigStreamer(client, rig)
        if not streamer.warm_up(timeout=warmup_timeout):
            raise SystemExit(f"no output during warm-up:\n{node.log()[-2000:]}")
        yield node, client, streamer


@dataclass
class Streamed:
    sent: int
    outputs: list  # the disparity messages received for the measured stream (warm-up excluded)
    latencies_ms: np.ndarray  # stamp -> receipt at the client

    @property
    def rate(self) -> float:
        """Sustained output rate: between the first and the last output of the measured stream."""
        times = [item.stamp for item in self.outputs]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


def stream_and_collect(client: StereoClient, streamer: RigStreamer, rate: float, seconds: float,
                       timeout: float) -> Streamed:
    """Stream the rig at `rate` Hz for `seconds`, then wait up to `timeout` s for the last pair's disparity."""
    first = client.count("disparity")
    sent, last = streamer.stream(rate, seconds=seconds)
    client.wait_for_stamp("disparity", last, timeout=timeout)
    outputs = client.received["disparity"][first:]
    return Streamed(sent, outputs, np.array(streamer.latencies_s(outputs)) * 1e3)
