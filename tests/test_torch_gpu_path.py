"""The torch backend's real-time path on the CPU: capture cache, device input, latency budget, device outputs.

No GPU here: CUDA-graph replay itself runs only in `bench/gpu.py` on a GPU (tests/test_cuda_calls.py checks the
CUDA calls with a recording stand-in). What is tested is everything around it: one capture per (height, width,
iterations, confidence), replay, eviction, the eager fallback (a real one: CUDA graphs genuinely fail on CPU
tensors, a simulated one, and torch.compile's recompile limit), the OpenCV-equal resize, the reused upload
buffers, and the iteration choice under a budget with a fake clock driven by the network's own modules (the cost
model itself: tests/test_latency_budget.py).
"""
import warnings

import cv2
import numpy as np
import pytest
import torch

from stereo_depth_ros.inference import create_estimator
from stereo_depth_ros.inference.base import resize_pair
from stereo_depth_ros.inference.capture import CaptureCache, CaptureFallbackWarning
from stereo_depth_ros.inference.device_input import PairUploader, resize_pair_on_device

pytest.importorskip("stereo_depth_ros.models.rt_igev", reason="RT-IGEV not available")


def textured_pair(height=40, width=56, shift=3, seed=0):
    rng = np.random.default_rng(seed)
    left = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (3, 3), 0)
    return left, np.roll(left, -shift, axis=1)


def student(**options):
    options = {"device": "cpu", "iters": 2, **options}
    return create_estimator("torch", model="rt_igev", **options)


# ---------------------------------------------------------------------------------------------- capture cache
class CountingBuild:
    """A capture backend stand-in: wraps the eager forward and counts captures and replays per key."""

    def __init__(self, fail=False):
        self.fail = fail
        self.built, self.replays = [], {}

    def __call__(self, key, forward, inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.built.append(key)

        def replay(*args):
            self.replays[key] = self.replays.get(key, 0) + 1
            return forward(*args)
        return replay


def double(x):
    return (2 * x,)


def test_capture_cache_captures_once_per_shape_replays_and_evicts_the_least_recent():
    build = CountingBuild()
    cache = CaptureCache(build, max_entries=2)
    x = torch.ones(3)
    assert cache.run("a", double, (x,))[1] is True  # captured on first use
    out, fresh = cache.run("a", double, (x,))
    assert not fresh and torch.equal(out[0], 2 * x) and build.replays["a"] == 2
    cache.run("b", double, (x,))
    cache.run("a", double, (x,))  # "a" is now the most recent
    cache.run("c", double, (x,))  # evicts "b"
    assert list(cache.entries) == ["a", "c"] and build.built == ["a", "b", "c"]
    assert cache.run("b", double, (x,))[1] is True  # re-captured after eviction
    assert build.built == ["a", "b", "c", "b"] and cache.captures == 4 and list(cache.entries) == ["c", "b"]


def test_capture_failure_falls_back_to_eager_with_exactly_one_warning():
    cache = CaptureCache(CountingBuild(fail=True), max_entries=2)
    x = torch.arange(3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [cache.run(key, double, (x,))[0] for key in ("a", "b", "a")]
    fallbacks = [w for w in caught if issubclass(w.category, CaptureFallbackWarning)]
    assert len(fallbacks) == 1
    assert "capture of shape a failed" in str(fallbacks[0].message)
    assert "operation not permitted when stream is capturing" in str(fallbacks[0].message)
    assert all(torch.equal(out[0], 2 * x) for out in outputs) and not cache.active and not cache.entries


def test_estimator_keys_captures_on_working_size_iterations_and_confidence(monkeypatch):
    estimator = student(capture="cuda_graph")
    build = CountingBuild()
    monkeypatch.setattr(estimator.captures, "build", build)
    left, right = textured_pair()
    eager = student(capture="off").estimate(left, right).disparity
    first = estimator.estimate(left, right).disparity
    estimator.estimate(left, right)
    np.testing.assert_array_equal(first, eager)  # a replay computes what eager does
    estimator.iters = 3
    estimator.estimate(left, right)
    estimator.estimate_at(left, right, 48, 32)
    estimator.with_confidence = False  # the pipeline turns it off when nobody wants confidence
    assert estimator.estimate(left, right).confidence is None
    assert build.built == [(40, 56, 2, True), (40, 56, 3, True), (32, 48, 3, True), (40, 56, 3, False)]
    assert build.replays == {(40, 56, 2, True): 2, (40, 56, 3, True): 1, (32, 48, 3, True): 1,
                             (40, 56, 3, False): 1}


def test_cuda_graph_request_on_cpu_runs_eager_after_one_warning_naming_the_reason():
    left, right = textured_pair()
    reference = student(capture="off").estimate(left, right)
    with pytest.warns(CaptureFallbackWarning, match="CUDA graphs need inputs on a CUDA device .the estimator runs "
                                                    "on cpu"):
        estimator = student(capture="cuda_graph")
        first = estimator.estimate(left, right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        second = estimator.estimate_at(left, right, 48, 32)
    np.testing.assert_array_equal(first.disparity, reference.disparity)
    assert second.disparity.shape == (32, 48)
    with pytest.raises(ValueError, match="capture must be"):
        student(capture="graphs")


# ---------------------------------------------------------------------------------------------- device input
@pytest.mark.parametrize("src, dst", [((72, 128), (48, 64)), ((50, 70), (37, 41)), ((40, 60), (80, 90)),
                                      ((48, 64), (60, 40)), ((48, 64), (48, 64))])
def test_device_resize_equals_opencv(src, dst):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, *src, 3)).astype(np.float32)
    (h, w) = dst
    left, right = resize_pair_on_device(torch.from_numpy(images), w, h)
    expected = resize_pair(images[0], images[1], w, h)
    for got, want in zip((left, right), expected, strict=True):
        assert got.shape == (1, 3, h, w) and got.dtype == torch.float32
        np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, atol=1e-3)
    # uint8 input: OpenCV rounds its uint8 result, the device path keeps the fraction
    as_uint8 = images.astype(np.uint8)
    left, _ = resize_pair_on_device(torch.from_numpy(as_uint8), w, h)
    rounded = resize_pair(as_uint8[0], as_uint8[1], w, h)[0].astype(np.float32)
    assert np.abs(left[0].permute(1, 2, 0).numpy() - rounded).max() < 1.0


def test_uploader_reuses_its_buffers_until_the_size_changes():
    uploader = PairUploader(torch.device("cpu"))
    for seed in range(3):
        left, right = textured_pair(seed=seed)
        pair = uploader.upload(left, right)
        np.testing.assert_array_equal(pair[0].numpy(), left)
        np.testing.assert_array_equal(pair[1].numpy(), right)
        if seed == 0:
            pointer = pair.data_ptr()
        assert pair.data_ptr() == pointer and uploader.allocations == 1
    uploader.upload(*textured_pair(height=24))
    assert uploader.allocations == 2
    with pytest.raises(ValueError, match="differ in shape"):
        uploader.upload(*textured_pair()[:1], textured_pair(height=24)[1])


def test_estimate_at_runs_at_the_working_size_like_the_host_path():
    estimator = student()
    left, right = textured_pair(height=60, width=84)
    at = estimator.estimate_at(left, right, 56, 40)
    host = estimator.estimate(*resize_pair(left, right, 56, 40))
    assert at.disparity.shape == (40, 56) and at.iterations == 2 and not at.budget_missed
    np.testing.assert_array_equal(at.disparity, host.disparity)
    np.testing.assert_array_equal(at.confidence, host.confidence)


def test_device_outputs_are_tensors_equal_to_the_numpy_outputs():
    estimator = student()
    assert not estimator.supports_device_outputs  # CPU: the pipeline keeps numpy; tensors on request only
    left, right = textured_pair()
    left[:, :20] = 0  # a flat black band: the network may answer <= 0 there, which must become NaN in both paths
    on_host = estimator.estimate(left, right)
    estimator.device_outputs = True
    on_device = estimator.estimate_at(left, right, left.shape[1], left.shape[0])
    assert isinstance(on_device.disparity, torch.Tensor) and on_device.disparity.dtype == torch.float32
    assert isinstance(on_device.confidence, torch.Tensor)
    np.testing.assert_array_equal(on_device.disparity.numpy(), on_host.disparity)
    np.testing.assert_array_equal(on_device.confidence.numpy(), on_host.confidence)


# ---------------------------------------------------------------------------------------------- latency budget
class FakeClock:
    """Seconds that advance only when the network does work: `fixed_s` per frame (half in each of the two
    feature-network passes) and `per_iteration_s` per GRU step. Binary fractions keep the arithmetic exact."""

    def __init__(self, model, fixed_s=2**-6, per_iteration_s=2**-8):
        self.now, self.iterations = 0.0, 0
        self.fixed_s, self.per_iteration_s = fixed_s, per_iteration_s
        model.feature.register_forward_pre_hook(lambda *_: self.advance(fixed_s / 2))
        model.update_block.register_forward_pre_hook(lambda *_: self.step())

    def advance(self, seconds):
        self.now += seconds

    def step(self):
        self.iterations += 1
        self.advance(self.per_iteration_s)

    def __call__(self):
        return self.now


def budget_estimator(iters=4, budget_ms=1000.0):
    estimator = student(iters=iters, latency_budget_ms=budget_ms)
    estimator.clock = FakeClock(estimator.model)
    return estimator, estimator.clock


def test_budget_runs_the_largest_iteration_count_that_fits():
    estimator, clock = budget_estimator()
    left, right = textured_pair(height=32, width=32)
    estimator.warmup(32, 32)  # measures 4 and 1 iterations: 15.625 ms fixed + 3.90625 ms per iteration
    assert estimator.cost_model.fixed_ms == pytest.approx(15.625)
    assert estimator.cost_model.per_iteration_ms == pytest.approx(3.90625)
    for budget_ms, expected in ((15.625 + 3 * 3.90625, 3), (15.625 + 2.5 * 3.90625, 2), (1000.0, 4)):
        estimator.latency_budget_ms = budget_ms
        before = clock.iterations
        out = estimator.estimate(left, right)
        assert (out.iterations, out.budget_missed) == (expected, False)
        assert clock.iterations - before == expected  # the network really ran that many
    estimator.iters = 2  # a lower ceiling applies from the next frame
    assert estimator.estimate(left, right).iterations == 2
    assert estimator.budget_misses == 0


def test_budget_below_one_iteration_runs_one_and_counts_a_miss():
    estimator, clock = budget_estimator(budget_ms=10)  # less than the fixed part alone
    left, right = textured_pair(height=32, width=32)
    estimator.warmup(32, 32)
    before = clock.iterations
    outs = [estimator.estimate(left, right) for _ in range(2)]
    assert [(o.iterations, o.budget_missed) for o in outs] == [(1, True), (1, True)]
    assert clock.iterations - before == 2 and estimator.budget_misses == 2
    estimator.latency_budget_ms = 0  # off: the full count again, no miss
    out = estimator.estimate(left, right)
    assert (out.iterations, out.budget_missed) == (4, False) and estimator.budget_misses == 2


def test_budget_warmup_captures_every_count_it_may_choose_so_no_frame_captures(monkeypatch):
    """Under a budget the counts are few (at most max_captures) and all captured at warm-up, the largest first
    (smaller graphs then fit in the memory the largest leaves in the shared pool); live frames only replay."""
    estimator = student(iters=8, latency_budget_ms=1000.0, capture="cuda_graph", max_captures=4)
    estimator.clock = FakeClock(estimator.model)
    build = CountingBuild()
    monkeypatch.setattr(estimator.captures, "build", build)
    left, right = textured_pair(height=32, width=32)
    estimator.warmup(32, 32)
    assert estimator.budget_counts == [1, 3, 6, 8]
    assert [key[2] for key in build.built] == [8, 6, 3, 1]
    fixed, per_iteration = 2**-6 * 1e3, 2**-8 * 1e3
    assert estimator.cost_model.fixed_ms == pytest.approx(fixed)
    assert estimator.cost_model.per_iteration_ms == pytest.approx(per_iteration)
    chosen = []
    for budget in (fixed + 8 * per_iteration, fixed + 7 * per_iteration, fixed + 2 * per_iteration, 1000.0):
        estimator.latency_budget_ms = budget
        chosen.append(estimator.estimate(left, right).iterations)
    assert chosen == [8, 6, 1, 8]  # the largest of the captured counts that fits
    assert len(build.built) == 4 and estimator.captures.captures == 4  # no capture on a live frame


def test_compile_recompile_limit_falls_back_with_a_warning(monkeypatch):
    """Dynamo compiles one variant per (size, iterations, confidence) of the forward and, past its recompile limit,
    would run eager without a word. Real dynamo; the network is replaced by a stand-in of the same signature and
    the limit lowered to 2, so that tracing takes a second, not minutes."""
    from stereo_depth_ros.inference import capture, torch_backend

    def stand_in(left, right, iters, with_confidence):
        return (left[0, 0] * iters, None)

    torch._dynamo.reset()  # variants compiled by other tests count against the same limit
    monkeypatch.setattr(capture, "COMPILE_RECOMPILE_LIMIT", 2)
    monkeypatch.setattr(torch_backend, "compile_forward",
                        lambda forward, device: torch.compile(stand_in, backend="eager", dynamic=False))
    estimator = student(capture="compile")
    eager = student(capture="off")
    left, right = textured_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for iters in (1, 2, 3, 1):
            estimator.iters = eager.iters = iters
            out = estimator.estimate(left, right)
    fallbacks = [w for w in caught if issubclass(w.category, CaptureFallbackWarning)]
    assert len(fallbacks) == 1 and "recompile limit (2 compiled variants" in str(fallbacks[0].message)
    assert estimator.captures.captures == 2 and not estimator.captures.active
    np.testing.assert_array_equal(out.disparity, eager.estimate(left, right).disparity)  # eager from then on
    torch._dynamo.reset()


@pytest.mark.parametrize("name, value", [("latency_budget_ms", -1.0), ("latency_budget_ms", "5"),
                                         ("iters", 0), ("iters", 2.5)])
def test_budget_and_iters_reject_bad_values(name, value):
    estimator = student()
    with pytest.raises(ValueError, match=name):
        setattr(estimator, name, value)
    estimator.latency_budget_ms = 25  # an int is accepted
    assert estimator.latency_budget_ms == 25.0


def test_backends_without_iterations_report_none():
    sgbm = create_estimator("opencv_sgbm", max_disparity=16)
    left, right = textured_pair()
    out = sgbm.estimate_at(left, right, 32, 24)
    assert out.disparity.shape == (24, 32) and out.iterations is None and not out.budget_missed
    assert sgbm.iters is None and not sgbm.supports_device_outputs


def test_auto_capture_is_cuda_graphs_for_the_student_on_cuda_only():
    from stereo_depth_ros.inference.capture import resolve_capture_mode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_capture_mode("auto", cuda, capture_by_default=True) == "cuda_graph"
    assert resolve_capture_mode("auto", cuda, capture_by_default=False) == "off"  # the teacher
    assert resolve_capture_mode("auto", cpu) == "off"
    assert resolve_capture_mode("compile", cpu) == "compile"
    assert student().capture_mode == "off"


def test_pipeline_on_the_torch_backends_device_outputs_equals_the_host_path():
    """The CUDA path (device outputs through the pipeline's post-processing) on CPU tensors: every published output
    equals the numpy path's, with a working size below the camera's so the rescale runs on tensors too."""
    from stereo_depth_ros.camera_geometry import StereoCamera
    from stereo_depth_ros.pipeline import StereoPipeline

    left, right = textured_pair(height=48, width=64)
    camera = StereoCamera(fx=60.0, fy=60.0, cx=31.5, cy=23.5, baseline=0.1, width=64, height=48)
    outputs = []
    for device_outputs in (False, True):
        pipeline = StereoPipeline(student(), input_width=48, input_height=32)
        pipeline.estimator.device_outputs = device_outputs  # on CUDA the pipeline turns it on itself
        result = pipeline.process(left, right, camera=camera)
        assert result.iterations == 2
        outputs.append(result.outputs)
    on_host, on_device = outputs
    for name in ("disparity", "confidence"):  # element-wise copies and masks: exact
        np.testing.assert_array_equal(getattr(on_device, name).array, getattr(on_host, name).array, err_msg=name)
    for name in ("depth", "points"):  # f * b / d: torch and numpy may round the last bit differently
        np.testing.assert_allclose(getattr(on_device, name).array, getattr(on_host, name).array, rtol=1e-6,
                                   equal_nan=True, err_msg=name)
    assert on_device.valid_share == on_host.valid_share > 0.5
