"""The torch backend's CUDA calls on a machine without a GPU: which device is current at each stream, event, graph
and synchronisation call, what warm-up captures and allocates, and where the pipeline waits for the device.

Mocked, because it cannot run here: `torch.cuda` itself. `FakeCuda` replaces its device context, streams,
events, graphs, memory pool handle and synchronisation with recorders that keep a current device as the CUDA
runtime does (device 0 until one is made current). The estimator is built on the CPU and then pointed at a fake
`cuda:N` device, so the network runs for real on CPU tensors while every CUDA call goes to the recorder; its
upload buffers are plain CPU tensors (page-locked memory needs a GPU) and `Tensor.to` a fake CUDA device keeps
the tensor on the CPU. A replay of a fake graph runs nothing (as
a CUDA graph replays nothing of what was not recorded), so these tests check calls, keys and buffers, not values.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from stereo_depth_ros.camera_geometry import StereoCamera
from stereo_depth_ros.inference import create_estimator
from stereo_depth_ros.inference.device_input import PairUploader
from stereo_depth_ros.pipeline import StereoPipeline
from stereo_depth_ros.postprocess import OutputRequest

pytest.importorskip("stereo_depth_ros.models.rt_igev", reason="RT-IGEV not available")


def index_of(device) -> int | None:
    if device is None:
        return None
    return device if isinstance(device, int) else torch.device(device).index


@dataclass
class Call:
    name: str
    current: int  # the device current when the call was made
    device: int | None = None  # the device the call names (a stream's, an argument), if any
    detail: object = None


class FakeStream:
    def __init__(self, cuda: FakeCuda, device: int) -> None:
        self.cuda, self.device = cuda, device

    def wait_stream(self, other: FakeStream) -> None:
        self.cuda.record("wait_stream", self.device, (other.device,))


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda

    def record(self, stream: FakeStream | None = None) -> None:
        self.cuda.record("event.record", None if stream is None else stream.device)

    def synchronize(self) -> None:
        self.cuda.record("event.synchronize")


class FakeGraph:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda

    def replay(self) -> None:
        self.cuda.record("graph.replay")


class FakeCuda:
    """Stands in for torch.cuda (see the module docstring); `calls` lists what was called, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current = 0
        self.calls: list[Call] = []
        self._pools = itertools.count()
        for name in ("device", "current_device", "synchronize", "current_stream", "Stream", "stream", "Event",
                     "CUDAGraph", "graph", "graph_pool_handle"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def record(self, name: str, device: int | None = None, detail: object = None) -> None:
        self.calls.append(Call(name, self.current, device, detail))

    def named(self, *names: str) -> list[Call]:
        return [call for call in self.calls if call.name in names]

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current = self.current, index_of(device)
        try:
            yield
        finally:
            self.current = previous

    def current_device(self) -> int:
        return self.current

    def synchronize(self, device=None) -> None:
        self.record("synchronize", index_of(device))

    def current_stream(self, device=None) -> FakeStream:
        self.record("current_stream", index_of(device))
        return FakeStream(self, self.current if device is None else index_of(device))

    def Stream(self, device=None) -> FakeStream:  # noqa: N802  (torch's name)
        self.record("Stream", index_of(device))
        return FakeStream(self, self.current if device is None else index_of(device))

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        self.record("stream", stream.device)
        yield

    def Event(self) -> FakeEvent:  # noqa: N802
        return FakeEvent(self)

    def CUDAGraph(self) -> FakeGraph:  # noqa: N802
        return FakeGraph(self)

    def graph_pool_handle(self) -> tuple[str, int]:
        self.record("graph_pool_handle")
        return ("pool", next(self._pools))

    @contextlib.contextmanager
    def graph(self, cuda_graph: FakeGraph, pool=None, stream: FakeStream | None = None):
        # torch.cuda.graph without stream= captures on a side stream it creates once, on whichever device was
        # current then: record what it would capture on
        self.record("graph", None if stream is None else stream.device, {"pool": pool, "stream": stream})
        yield


def textured_pair(height=48, width=64, shift=3, seed=0):
    rng = np.random.default_rng(seed)
    left = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (3, 3), 0)
    return left, np.roll(left, -shift, axis=1)


def on_fake_cuda(monkeypatch, index: int, **options):
    """A student estimator built on the CPU, then pointed at the fake `cuda:index` (see the module docstring)."""
    fake = FakeCuda(monkeypatch)
    options = {"device": "cpu", "iters": 2, "capture": "cuda_graph", **options}
    estimator = create_estimator("torch", model="rt_igev", **options)
    estimator.device = torch.device("cuda", index)
    uploader = PairUploader(estimator.device)
    monkeypatch.setattr(uploader, "_allocate", lambda shape, dtype: (torch.empty(shape, dtype=dtype),
                                                                     torch.empty(shape, dtype=dtype)))
    estimator._uploader = uploader
    to = torch.Tensor.to

    def to_cpu_for_cuda(tensor, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, (str, torch.device)) and torch.device(a).type == "cuda" else a
                     for a in args)
        return to(tensor, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to_cpu_for_cuda)
    ran_on: list[int] = []  # the device current whenever the network runs
    estimator.model.feature.register_forward_pre_hook(lambda *_: ran_on.append(fake.current))
    return fake, estimator, ran_on


# ------------------------------------------------------------------------------------------ 1. device context
@pytest.mark.parametrize("index", [1, 0])
def test_every_cuda_call_is_made_with_the_estimators_device_current(monkeypatch, index):
    fake, estimator, ran_on = on_fake_cuda(monkeypatch, index)
    left, right = textured_pair()
    estimator.warmup(32, 48, source_size=(48, 64))  # captures
    estimator.estimate_at(left, right, 48, 32)  # replays
    estimator.estimate_at(left, right, 64, 48)  # a second shape: a second capture
    estimator.estimate_batch([left], [right])
    assert fake.current == 0  # restored afterwards
    assert ran_on and set(ran_on) == {index}  # warm-up passes, capture, batch: the network always ran on it
    for call in fake.calls:
        assert call.current == index, call
        assert call.device in (None, index), call
    graphs = fake.named("graph")
    assert len(graphs) == 2 and len(fake.named("graph.replay")) == 3
    streams = {id(call.detail["stream"]) for call in graphs}
    pools = {call.detail["pool"] for call in graphs}
    assert None not in {call.device for call in graphs}  # an explicit capture stream, on the estimator's device
    assert len(streams) == 1 and len(pools) == 1 and None not in pools  # 4. one side stream, one memory pool
    assert len(fake.named("graph_pool_handle")) == 1 and len(fake.named("Stream")) == 1
    # the upload: its copy's end is an event recorded on the device's own stream
    assert [call.device for call in fake.named("event.record")] == [index] * 3  # warm-up and two frames


# ------------------------------------------------------------------------------------------ 3. warm-up
@pytest.mark.parametrize("request_confidence, threshold", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_warmup_captures_exactly_what_the_first_frame_replays(monkeypatch, request_confidence, threshold):
    """The camera (64x48) is larger than the working size (48x32): the upload buffers are camera-sized; confidence
    is computed when it is published or thresholded, and only then."""
    fake, estimator, _ = on_fake_cuda(monkeypatch, 0)
    pipeline = StereoPipeline(estimator, input_width=48, input_height=32, confidence_threshold=threshold)
    request = OutputRequest(confidence=request_confidence)
    wants_confidence = request_confidence or threshold > 0
    pipeline.warmup(64, 48, request)
    keys, allocations = list(estimator.captures.entries), estimator._uploader.allocations
    assert keys == [(32, 48, 2, wants_confidence)] and allocations == 1
    camera = StereoCamera(fx=60.0, fy=60.0, cx=31.5, cy=23.5, baseline=0.1, width=64, height=48)
    for seed in range(3):
        pipeline.process(*textured_pair(seed=seed), request, camera=camera)
    assert estimator.captures.captures == 1 and list(estimator.captures.entries) == keys  # no live capture
    assert estimator._uploader.allocations == 1  # no live buffer allocation
    assert len(fake.named("graph")) == 1


# ------------------------------------------------------------------------------------------ 7. stage timings
def test_the_estimate_stage_ends_when_the_devices_work_does(monkeypatch):
    """With outputs left on the device, `estimate_at` returns while the GPU still works: the pipeline waits for
    the device before it reads the clock that ends the estimate stage, and only then."""
    fake, estimator, _ = on_fake_cuda(monkeypatch, 1, capture="off")
    clock_reads = itertools.count()
    pipeline = StereoPipeline(estimator, clock=lambda: fake.record("clock") or float(next(clock_reads)))
    assert estimator.device_outputs  # the pipeline keeps a CUDA backend's outputs on the device
    camera = StereoCamera(fx=60.0, fy=60.0, cx=31.5, cy=23.5, baseline=0.1, width=64, height=48)
    result = pipeline.process(*textured_pair(), camera=camera)
    names = [call.name for call in fake.calls if call.name in ("clock", "synchronize")]
    # convert (2 reads), estimate (start, synchronise, end), rescale (end), postprocess (end)
    assert names == ["clock", "clock", "clock", "synchronize", "clock", "clock", "clock"]
    assert fake.named("synchronize")[0].device == 1
    assert set(result.timings) == {"convert", "estimate", "rescale", "postprocess"}
    estimator.device_outputs = False  # numpy outputs: already on the host, nothing to wait for
    fake.calls.clear()
    pipeline.process(*textured_pair(), camera=camera)
    assert not fake.named("synchronize")
