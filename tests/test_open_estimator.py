"""open_estimator: one interface for a checkpoint of either network, an ONNX export and the SGBM baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_depth_ros.inference import EstimatorSourceError, open_estimator, source_kind
from stereo_depth_ros.models import load_model, save_checkpoint


def test_source_kinds():
    assert source_kind("sgbm") == source_kind("opencv_sgbm") == "opencv_sgbm"
    assert source_kind("runs/x/student.ONNX") == "onnxruntime"
    assert source_kind("weights/sceneflow.pth") == "torch"


def test_sgbm_by_name():
    estimator = open_estimator("sgbm", max_disparity=32)
    assert estimator.name == "opencv_sgbm" and estimator.num_disparities == 32


@pytest.mark.parametrize("name", ["rt_igev", "selective_igev"])
def test_official_state_dict_is_recognised_by_its_keys(tmp_path, name):
    # An official file is a bare (DataParallel-prefixed) state_dict: nothing in it names the network.
    model = load_model(name)
    path = tmp_path / "official.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    estimator = open_estimator(str(path), device="cpu", iters=1, max_disparity=32)
    assert estimator.model.name == name


def test_training_checkpoint_names_its_network(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, load_model("rt_igev"))
    estimator = open_estimator(str(path), device="cpu", iters=1, max_disparity=32)
    assert estimator.model.name == "rt_igev"
    left = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    assert estimator.estimate(left, left).disparity.shape == (64, 96)


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(EstimatorSourceError, match="does not exist"):
        open_estimator(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EstimatorSourceError, match="not a readable PyTorch checkpoint") as info:
        open_estimator(str(junk))
    assert "\n" not in str(info.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EstimatorSourceError, match="as rt_igev: .*as selective_igev: "):
        open_estimator(str(wrong))
