"""Estimator backends on CPU: opencv_sgbm on a real pair, torch with the parity fixture, onnxruntime on a small graph."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stereo_depth_ros.inference import StereoEstimate, create_estimator
from stereo_devkit.motorcycle import motorcycle_rig

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def motorcycle_half():
    """skimage's Middlebury Motorcycle at half size (250x370) with its ground truth scaled alike."""
    rig = motorcycle_rig(370)
    return rig.left, rig.right, rig.gt_disparity


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="opencv_sgbm"):
        create_estimator("tensorflow")


# ---------------------------------------------------------------------------------------------- opencv_sgbm
def test_sgbm_on_motorcycle_is_accurate_where_it_reports(motorcycle_half):
    left, right, gt = motorcycle_half
    estimator = create_estimator("opencv_sgbm", max_disparity=40)
    assert estimator.num_disparities == 48
    out = estimator.estimate(left, right)
    assert isinstance(out, StereoEstimate)
    assert out.disparity.shape == gt.shape and out.disparity.dtype == np.float32
    both = np.isfinite(out.disparity) & np.isfinite(gt)
    error = np.abs(out.disparity - gt)[both]
    assert both.mean() > 0.6, f"only {both.mean():.2f} of the pixels have a disparity"
    assert error.mean() < 1.5, f"EPE {error.mean():.2f} px"
    assert (error > 2).mean() < 0.15
    # confidence: 0..1, zero exactly where the disparity is invalid, and it ranks errors
    conf = out.confidence
    assert conf.dtype == np.float32 and conf.min() >= 0 and conf.max() <= 1
    assert np.array_equal(conf > 0, np.isfinite(out.disparity))
    sure = both & (conf >= 0.99)
    unsure = both & (conf < 0.99)
    assert np.abs(out.disparity - gt)[sure].mean() < np.abs(out.disparity - gt)[unsure].mean()


def test_sgbm_invalidates_what_it_cannot_match():
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # unrelated views: nothing consistent
    out = create_estimator("opencv_sgbm", max_disparity=16).estimate(left, right)
    assert np.isnan(out.disparity).mean() > 0.5
    # a flat image has no texture to match at all
    flat = np.full((64, 96, 3), 128, np.uint8)
    assert np.isnan(create_estimator("opencv_sgbm", max_disparity=16).estimate(flat, flat).disparity).all()


@pytest.mark.parametrize("options, match", [
    ({"max_disparity": 0}, "max_disparity"),
    ({"block_size": 4}, "block_size"),
    ({"mode": "fast"}, "mode"),
])
def test_sgbm_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        create_estimator("opencv_sgbm", **options)


def test_sgbm_rejects_mismatched_pair():
    estimator = create_estimator("opencv_sgbm", max_disparity=16)
    with pytest.raises(ValueError, match="differ"):
        estimator.estimate(np.zeros((32, 48, 3), np.uint8), np.zeros((32, 40, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- torch
def test_torch_backend_reproduces_the_parity_fixture():
    fixture = SHARED / "parity" / "rt_igev"
    if not (fixture / "weights.pth").is_file():
        pytest.skip(f"upstream-parity test: fixture {fixture} absent (it lives beside the repo in ../shared/parity)")
    case = np.load(fixture / "case_a.npz")
    left = case["left"][0].transpose(1, 2, 0).astype(np.uint8)  # integer-valued RGB in the fixture
    right = case["right"][0].transpose(1, 2, 0).astype(np.uint8)
    estimator = create_estimator("torch", model="rt_igev", model_path=str(fixture / "weights.pth"), device="cpu",
                                 iters=int(case["iters"]), max_disparity=192)
    out = estimator.estimate(left, right)
    expected = case["disp_test"][0, 0]
    assert out.disparity.shape == expected.shape
    finite = np.isfinite(out.disparity)
    assert np.array_equal(finite, expected > 0)
    np.testing.assert_allclose(out.disparity[finite], expected[finite], atol=3e-4)
    assert out.confidence is not None and out.confidence.shape == expected.shape
    assert 0.0 <= out.confidence.min() and out.confidence.max() <= 1.0


def test_torch_backend_errors():
    with pytest.raises(FileNotFoundError, match="model_path"):
        create_estimator("torch", model_path="/nonexistent/student.pth")
    with pytest.raises(ValueError, match="iters"):
        create_estimator("torch", iters=0)
    with pytest.raises(ValueError, match="rt_igev|unknown"):
        create_estimator("torch", model="no_such_net", device="cpu")


# ---------------------------------------------------------------------------------------------- onnxruntime
def tiny_stereo_onnx(path: Path, height=None, width=None, padded_inside=False, confidence=True, meta=None):
    """A graph with the export's names: disparity = channel mean of left (so cropping is checkable),
    confidence = channel mean of right / 255. Built with onnx.helper: no torch export needed for the contract."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    from onnx import TensorProto, helper

    h = height if height is not None else "height"
    w = width if width is not None else "width"
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, h, w]) for n in ("left", "right")]
    outputs = [helper.make_tensor_value_info("disparity", TensorProto.FLOAT, [1, 1, h, w])]
    nodes = [helper.make_node("ReduceMean", ["left"], ["disparity"], axes=[1], keepdims=1)]
    initializers = []
    if confidence:
        outputs.append(helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [1, 1, h, w]))
        initializers.append(helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255.0]))
        nodes += [helper.make_node("ReduceMean", ["right"], ["gray_right"], axes=[1], keepdims=1),
                  helper.make_node("Mul", ["gray_right", "scale"], ["confidence"])]
    graph = helper.make_graph(nodes, "tiny_stereo", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"stereo_depth_ros.padded_inside": "1" if padded_inside else "0",
                                   "stereo_depth_ros.iters": "8", "stereo_depth_ros.model": "rt_igev",
                                   **(meta or {})})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def pair(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 256, (height, width, 3), dtype=np.uint8),
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_onnx_backend_pads_to_the_fixed_export_size_and_crops_back(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    path = tiny_stereo_onnx(tmp_path / "fixed.onnx", height=64, width=96, padded_inside=False)
    estimator = create_estimator("onnxruntime", model_path=str(path), providers=["CPUExecutionProvider"])
    assert estimator.providers == ["CPUExecutionProvider"] and estimator.iters == 8
    assert estimator.fixed_size == (64, 96) and not estimator.padded_inside
    left, right = pair(50, 70)  # pads to 64x96 inside the backend
    out = estimator.estimate(left, right)
    np.testing.assert_allclose(out.disparity, left.astype(np.float32).mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(out.confidence, right.astype(np.float32).mean(axis=2) / 255, rtol=1e-5, atol=1e-6)
    from stereo_depth_ros.inference.onnx_backend import OnnxInputSizeError

    with pytest.raises(OnnxInputSizeError, match="exported for 96x64 .* the images are 100x100") as info:
        estimator.estimate(*pair(100, 100))
    assert info.value.fixed_size == (64, 96) and info.value.image_size == (100, 100)
    assert "input_width" not in str(info.value)  # advice is the caller's (node or eval), not the backend's


def test_onnx_backend_dynamic_graph_padded_inside(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    path = tiny_stereo_onnx(tmp_path / "dyn.onnx", padded_inside=True, confidence=False)
    estimator = create_estimator("onnxruntime", model_path=str(path),
                                 providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert estimator.fixed_size is None and estimator.padded_inside
    left, right = pair(37, 41)
    left[0, 0] = 0  # zero disparity is no disparity
    out = estimator.estimate(left, right)
    assert out.confidence is None and out.disparity.shape == (37, 41)
    assert np.isnan(out.disparity[0, 0]) and np.isfinite(out.disparity[1:]).all()


def test_onnx_backend_reports_the_exports_iteration_count_through_to_diagnostics(tmp_path):
    """/diagnostics says how many iterations ran; an export runs the count it was made with
    (`stereo_depth_ros.iters` in its metadata, written by `stereo-distill export`), not "none"."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    from stereo_depth_ros.diagnostics import FrameStats
    from stereo_depth_ros.pipeline import StereoPipeline

    path = tiny_stereo_onnx(tmp_path / "five.onnx", padded_inside=True, meta={"stereo_depth_ros.iters": "5"})
    estimator = create_estimator("onnxruntime", model_path=str(path), providers=["CPUExecutionProvider"])
    assert estimator.iters == 5 and estimator.estimate(*pair(32, 48)).iterations == 5
    result = StereoPipeline(estimator).process(*pair(32, 48))
    stats = FrameStats(window=5.0)
    stats.pair_published(latency_s=0.01, inference_s=result.inference_s, valid_share=result.valid_share,
                         iterations=result.iterations, budget_missed=result.budget_missed)
    assert result.iterations == 5 and stats.snapshot()["iterations"] == 5
    unknown = tiny_stereo_onnx(tmp_path / "old.onnx", padded_inside=True)
    graph = onnx.load(str(unknown))  # an export made without the count: honestly unknown
    del graph.metadata_props[[p.key for p in graph.metadata_props].index("stereo_depth_ros.iters")]
    onnx.save(graph, str(unknown))
    old = create_estimator("onnxruntime", model_path=str(unknown), providers=["CPUExecutionProvider"])
    assert old.estimate(*pair(32, 48)).iterations is None


def test_onnx_provider_selection_and_bad_files(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from stereo_depth_ros.inference.onnx_backend import DEFAULT_PROVIDERS, select_providers

    assert select_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(None, list(reversed(DEFAULT_PROVIDERS))) == list(DEFAULT_PROVIDERS)
    with pytest.raises(ValueError, match="none of the onnxruntime providers"):
        select_providers(["TensorrtExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        select_providers(["cuda"], ["CPUExecutionProvider"])
    with pytest.raises(FileNotFoundError, match="not found"):
        create_estimator("onnxruntime", model_path=str(tmp_path / "missing.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        create_estimator("onnxruntime", model_path=str(garbage), providers=["CPUExecutionProvider"])


def test_onnx_backend_checks_the_exports_recorded_limits_before_running(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from stereo_depth_ros.inference.onnx_backend import OnnxInputSizeError

    path = tiny_stereo_onnx(tmp_path / "limits.onnx", padded_inside=True, confidence=False,
                            meta={"stereo_depth_ros.min_height": "40", "stereo_depth_ros.min_width": "48"})
    estimator = create_estimator("onnxruntime", model_path=str(path), providers=["CPUExecutionProvider"])
    assert estimator.estimate(*pair(40, 48)).disparity.shape == (40, 48)
    with pytest.raises(OnnxInputSizeError, match="needs images of at least 48x40; the images are 47x40") as info:
        estimator.estimate(*pair(40, 47))
    assert info.value.min_size == (40, 48) and info.value.image_size == (40, 47)
    # Dynamic exports made before the limits were recorded state their smallest width in input_size.
    legacy = tiny_stereo_onnx(tmp_path / "legacy.onnx", padded_inside=True, confidence=False,
                              meta={"stereo_depth_ros.input_size": "dynamic, width >= 192"})
    estimator = create_estimator("onnxruntime", model_path=str(legacy), providers=["CPUExecutionProvider"])
    with pytest.raises(OnnxInputSizeError, match="at least 192x32"):
        estimator.estimate(*pair(64, 160))
    # The export's iterations are fixed: the settable `iters` accepts only that count.
    estimator.iters = 8
    with pytest.raises(ValueError, match="fixed 8 iterations"):
        estimator.iters = 4


def test_onnx_default_providers_start_quietly_and_log_the_one_in_use(tmp_path):
    """No "EP Error" blocks for providers that cannot load here (onnxruntime-gpu lists CUDA/TensorRT anyway)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    path = tiny_stereo_onnx(tmp_path / "tiny.onnx", padded_inside=True)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
            "from stereo_depth_ros.inference import create_estimator; "
            "e = create_estimator('onnxruntime', model_path=sys.argv[1]); print('RUNS', e.providers[0])")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    used = result.stdout.split("RUNS ")[1].strip()
    assert "EP Error" not in output and "Falling back" not in output and "Failed to load library" not in output, output
    assert len(re.findall(rf"onnxruntime runs tiny.onnx on {used}", output)) == 1, output


def test_provider_selection_names_why_providers_cannot_run():
    from stereo_depth_ros.inference.onnx_backend import DEFAULT_PROVIDERS, select_providers

    unusable = {"CUDAExecutionProvider": "no CUDA driver", "TensorrtExecutionProvider": "no CUDA driver"}
    assert select_providers(None, list(DEFAULT_PROVIDERS), unusable) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="CUDAExecutionProvider: no CUDA driver"):
        select_providers(["CUDAExecutionProvider"], list(DEFAULT_PROVIDERS), unusable)


def test_onnx_backend_runs_without_torch(tmp_path):
    """The robot may have onnxruntime and no PyTorch: the backend's pad split (stereo_depth_ros.pad_split) and
    everything else it imports must not need torch."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    path = tiny_stereo_onnx(tmp_path / "fixed.onnx", height=64, width=96, padded_inside=False)
    code = ("import sys; sys.modules['torch'] = None  # any `import torch` now fails\n"
            "import numpy as np\n"
            "from stereo_depth_ros.inference import create_estimator\n"
            "from stereo_depth_ros.pad_split import pad_lrtb\n"
            "est = create_estimator('onnxruntime', model_path=sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "left = np.arange(50 * 70 * 3, dtype=np.float32).reshape(50, 70, 3) % 251 + 1\n"
            "out = est.estimate(left, left)\n"
            "assert out.disparity.shape == (50, 70) and np.allclose(out.disparity, left.mean(axis=2), rtol=1e-6)\n"
            "assert pad_lrtb(50, 70) == (13, 13, 7, 7)\n"
            "print('ok without torch')")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok without torch" in result.stdout, result.stdout + result.stderr


def test_tensorrt_node_parameters_reach_the_session_and_cache_engines_per_export(tmp_path, monkeypatch):
    """The trt_* node parameters -> estimator_options -> OnnxEstimator -> the providers and provider options the
    onnxruntime session is created with.

    MOCKED, because TensorRT cannot run here (no GPU; onnxruntime-gpu's TensorRT library does not load): the
    machine check (`unusable_providers`) is told TensorRT and CUDA can run, and `onnxruntime.InferenceSession` is
    wrapped so that it records its `providers` argument and then opens a real CPU session on the file. What is
    checked is what onnxruntime would receive; whether TensorRT honours it needs a GPU (bench/tensorrt.py)."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from file_modes import current_umask

    from stereo_depth_ros.config import NodeConfig, estimator_options
    from stereo_depth_ros.inference import onnx_backend

    model = tiny_stereo_onnx(tmp_path / "student.onnx", padded_inside=True)
    sessions: list = []
    real_session = ort.InferenceSession

    def recording_session(path, sess_options=None, providers=None):
        sessions.append(providers)
        return real_session(path, sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(onnx_backend.DEFAULT_PROVIDERS))
    monkeypatch.setattr(onnx_backend, "unusable_providers", lambda candidates, _ort: {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def open_node_backend(**params):
        config = NodeConfig.from_dict({"backend": "onnxruntime", "model_path": str(model), **params}).validate()
        from stereo_depth_ros.inference import create_estimator

        return create_estimator("onnxruntime", **estimator_options(config))

    # Defaults: fp32 engine (strongly typed), 1 GiB workspace, engines cached under ~/.cache (XDG here).
    open_node_backend()
    providers = sessions[-1]
    assert [name for name, _ in providers] == list(onnx_backend.DEFAULT_PROVIDERS)
    trt = providers[0][1]
    assert providers[1][1] == {} and providers[2][1] == {}
    root = tmp_path / "xdg" / "stereo_depth_ros" / "trt_engines"
    assert trt["trt_fp16_enable"] == "0" and trt["trt_max_workspace_size"] == str(1024 * 2**20)
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_timing_cache_enable"] == "1"
    assert trt["trt_timing_cache_path"] == str(root)
    engines = Path(trt["trt_engine_cache_path"])
    assert engines.parent == root and len(engines.name) == 16
    assert all(isinstance(v, str) for v in trt.values())
    for folder in (engines, root, root.parent):  # made here, 0755 (less the umask) like any folder a user makes
        assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o755 & ~current_umask()

    # The parameters, and a '~' path; a file exported again to the same path gets a new engine folder.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    open_node_backend(trt_fp16=True, trt_workspace_mb=256, trt_engine_cache_dir="~/engines")
    trt = sessions[-1][0][1]
    assert trt["trt_fp16_enable"] == "1" and trt["trt_max_workspace_size"] == str(256 * 2**20)
    assert Path(trt["trt_engine_cache_path"]).parent == tmp_path / "home" / "engines"
    assert Path(trt["trt_engine_cache_path"]).name == engines.name  # same file, same engines
    tiny_stereo_onnx(model, padded_inside=True, meta={"stereo_depth_ros.iters": "4"})  # re-exported
    open_node_backend(trt_engine_cache_dir="~/engines")
    assert Path(sessions[-1][0][1]["trt_engine_cache_path"]).name != engines.name

    # Without TensorRT among the providers, nothing is created and no TensorRT option is passed.
    open_node_backend(onnx_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                      trt_engine_cache_dir=str(tmp_path / "unused"))
    assert sessions[-1] == [("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})]
    assert not (tmp_path / "unused").exists()
