"""Model registry, checkpoint formats and errors, padding, confidence, training-mode batch norm, shared blocks.

Everything here uses seeded random weights and small images: no fixture needed.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from stereo_depth_ros.models import CheckpointError, available_models, load_model, save_checkpoint
from stereo_depth_ros.models.checkpoint import read_checkpoint
from stereo_depth_ros.models.cost_volume import build_gwc_volume
from stereo_depth_ros.models.geometry import GeometryEncoding
from stereo_depth_ros.models.padding import InputPadder

torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="module")
def student():
    return load_model("rt_igev")


def _pair(height=64, width=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(1, 3, height, width, generator=g) * 255
    shift = 5
    right = torch.cat([left[..., shift:], left[..., -shift:]], dim=-1)  # a fronto-parallel 5 px scene
    return left, right


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- registry / config ------------------------------------------------------------------------------------
def test_registry_and_config(student):
    assert "rt_igev" in available_models()
    assert student.name == "rt_igev"
    cfg = dataclasses.asdict(student.config)
    assert cfg["valid_iters"] == 8 and cfg["max_disp"] == 192 and cfg["hidden_dim"] == 96
    assert cfg["corr_levels"] == 2 and cfg["corr_radius"] == 4
    assert not student.training
    assert load_model("rt_igev", max_disp=256, valid_iters=4).config.max_disp == 256


def test_seeded_init_is_reproducible(student):
    assert _same_weights(student, load_model("rt_igev"))


def test_the_name_list_is_the_registry():
    from stereo_depth_ros.model_names import MODEL_NAMES
    from stereo_depth_ros.models.registry import register_model

    assert available_models() == sorted(MODEL_NAMES)
    with pytest.raises(ValueError, match="not listed"):
        register_model("unlisted_net")(type("UnlistedNet", (), {}))


@pytest.mark.parametrize("name", ["rt_igev", "selective_igev"])
def test_every_registered_network_runs_without_weights(name):
    # As timm's tests build every registered model: seeded init, a real pair, both forward paths.
    from stereo_depth_ros.models.images import rgb_batch
    from stereo_devkit.motorcycle import motorcycle_pair

    model = load_model(name, max_disp=64, valid_iters=2)
    left, right = (rgb_batch([view]) for view in motorcycle_pair(48, 80))  # 48x80: the padding path
    with torch.no_grad():
        disparity = model.predict(left, right)
        assert disparity.shape == (1, 1, 48, 80) and disparity.dtype == torch.float32
        assert torch.isfinite(disparity).all()
        model.train()  # the training forward takes padded input (multiples of 32)
        left, right = (rgb_batch([view]) for view in motorcycle_pair(64, 96))
        init, predictions = model(left, right, iters=2, test_mode=False)
    assert init.shape == (1, 1, 64, 96) and len(predictions) == 2
    assert all(p.shape == (1, 1, 64, 96) for p in predictions)


def test_bad_name_and_override():
    with pytest.raises(ValueError, match="unknown model 'nope'.*rt_igev"):
        load_model("nope")
    with pytest.raises(ValueError, match="unknown RTIGEVConfig field.*'hiden_dim'"):
        load_model("rt_igev", hiden_dim=3)
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model("rt_igev", precision="fp8")
    with pytest.raises(ValueError, match="max_disp must be a multiple of 32"):
        load_model("rt_igev", max_disp=200)


def test_cpu_forces_fp32():
    with pytest.warns(UserWarning, match="needs CUDA"):
        model = load_model("rt_igev", precision="bf16")
    assert model.config.precision == "fp32"


# ---- checkpoints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["module.", ""])
def test_official_format_with_and_without_prefix(tmp_path, student, prefix):
    path = tmp_path / "official.pth"
    torch.save({prefix + k: v for k, v in student.state_dict().items()}, path)
    other = load_model("rt_igev", checkpoint=path)
    assert _same_weights(student, other)


def test_training_format_round_trip(tmp_path):
    model = load_model("rt_igev", valid_iters=3)
    with torch.no_grad():
        model.classifier.weight.mul_(2.0)  # differs from the seeded init
    path = tmp_path / "run" / "last.pth"
    rng = torch.get_rng_state()
    save_checkpoint(path, model, step=17, rng=rng)
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary left behind

    loaded = load_model("rt_igev", checkpoint=path)
    assert _same_weights(model, loaded)
    assert loaded.config.valid_iters == 3  # the saved config is used ...
    assert load_model("rt_igev", checkpoint=path, valid_iters=5).config.valid_iters == 5  # ... overrides win
    ckpt = read_checkpoint(path)
    assert ckpt.model_name == "rt_igev" and ckpt.extra["step"] == 17
    assert torch.equal(ckpt.extra["rng"], rng)


def test_training_checkpoint_of_other_model_name(tmp_path, student):
    path = tmp_path / "x.pth"
    torch.save({"model": student.state_dict(), "config": {}, "model_name": "selective_igev"}, path)
    with pytest.raises(CheckpointError, match="saved from model 'selective_igev', not 'rt_igev'"):
        load_model("rt_igev", checkpoint=path)


def test_wrong_network_is_one_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_model("rt_igev", checkpoint=path)
    message = str(info.value)
    assert "does not fit model 'rt_igev'" in message
    assert "490 missing key(s)" in message and "7 unexpected key(s) [0.bias, 0.weight, 1.bias" in message
    assert "another network" in message


def test_other_config_is_named_as_the_likely_cause(tmp_path):
    path = tmp_path / "h64.pth"
    torch.save(load_model("rt_igev", hidden_dim=64).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch\(es\) \[.*\(64,.*likely cause: same layers, other sizes"):
        load_model("rt_igev", checkpoint=path)


def test_truncated_random_and_missing_files(tmp_path, student):
    good = tmp_path / "good.pth"
    torch.save(student.state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.pth"
    noise.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy().tobytes())
    for path in (truncated, noise):
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
            load_model("rt_igev", checkpoint=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("rt_igev", checkpoint=tmp_path / "absent.pth")
    not_a_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_model("rt_igev", checkpoint=not_a_state)


# ---- padding -----------------------------------------------------------------------------------------------
def test_padder_round_trip_and_split():
    x = torch.arange(2 * 3 * 181 * 243, dtype=torch.float32).reshape(2, 3, 181, 243)
    padder = InputPadder(x.shape, 32)
    assert padder.pad_lrtb == (6, 7, 5, 6) and padder.padded_shape == (192, 256)
    (padded,) = padder.pad(x)
    assert padded.shape == (2, 3, 192, 256)
    assert torch.equal(padder.unpad(padded), x)
    assert torch.equal(padded[..., 0, 6:-7], x[..., 0, :])  # replicated top row
    assert torch.equal(padded[..., 5:-6, -1], x[..., :, -1])  # replicated right column
    assert InputPadder((224, 320)).pad_lrtb == (0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"expected \[B, C, 181, 243\]"):
        padder.pad(torch.zeros(1, 3, 180, 243))


# ---- predict / confidence -------------------------------------------------------------------------------
def test_predict_any_size_with_confidence(student):
    left, right = _pair(50, 70)
    disp, conf = student.predict(left, right, iters=2, return_confidence=True)
    assert disp.shape == conf.shape == (1, 1, 50, 70)
    assert disp.dtype == conf.dtype == torch.float32
    assert torch.isfinite(disp).all() and torch.isfinite(conf).all()
    assert float(conf.min()) >= 0.0 and float(conf.max()) <= 1.0
    assert torch.equal(student.predict(left, right, iters=2), disp)


def test_predict_rejects_bad_shapes(student):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        student.predict(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


# ---- training-mode batch norm --------------------------------------------------------------------------------
def test_train_mode_freezes_2d_batch_norm_only():
    model = load_model("rt_igev")
    model.train()
    bn2d = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn3d = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert bn2d and bn3d
    assert not any(m.training for m in bn2d) and all(m.training for m in bn3d)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    left, right = _pair(64, 64)
    init_disp, preds = model(left, right, iters=2)
    assert init_disp.shape == (1, 1, 64, 64) and len(preds) == 2
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("cost_agg.") for k in changed)  # only the 3D batch norms moved
    model.predict(left, right, iters=1)
    assert model.training and all(m.training for m in bn3d)  # predict restores the training configuration
    model.eval()
    assert not any(m.training for m in model.modules())


# ---- shared blocks ----------------------------------------------------------------------------------------------
def test_gwc_volume_against_direct_sum():
    g = torch.Generator().manual_seed(3)
    left, right = torch.randn(2, 16, 3, 7, generator=g), torch.randn(2, 16, 3, 7, generator=g)
    volume = build_gwc_volume(left, right, max_disp=10, num_groups=4)  # more planes than columns
    assert volume.shape == (2, 4, 10, 3, 7)
    for d in (0, 2, 6):
        for x in range(7):
            expected = (left[..., x] * right[..., x - d]).view(2, 4, 4, 3).mean(2) if x >= d else 0.0
            torch.testing.assert_close(volume[:, :, d, :, x], expected + torch.zeros(2, 4, 3))
    assert not volume[:, :, 7:].any()


def test_geometry_lookup_at_integer_disparity():
    g = torch.Generator().manual_seed(4)
    b, c, d, h, w = 1, 2, 12, 3, 10
    volume = torch.randn(b, c, d, h, w, generator=g, dtype=torch.float64)
    left, right = torch.randn(b, 5, h, w, generator=g, dtype=torch.float64), torch.randn(b, 5, h, w, generator=g, dtype=torch.float64)
    disp = torch.full((b, 1, h, w), 3.0, dtype=torch.float64)
    out = GeometryEncoding(volume, num_levels=2, radius=1, left=left, right=right)(disp)
    # per level: c*3 volume taps, then 3 correlation taps
    assert out.shape == (b, 2 * (c * 3 + 3), h, w)
    y, x = 1, 6
    taps = out[0, :, y, x]
    torch.testing.assert_close(taps[0:3], volume[0, 0, 2:5, y, x])  # channel 0, planes 3-1..3+1
    torch.testing.assert_close(taps[3:6], volume[0, 1, 2:5, y, x])
    corr = lambda xr: (left[0, :, y, x] * right[0, :, y, xr]).sum()  # noqa: E731
    torch.testing.assert_close(taps[6:9], torch.stack([corr(x - 3 - 1), corr(x - 3), corr(x - 3 + 1)]))
    # level 1: planes averaged in pairs, looked up at disp/2 = 1.5 -> between pooled planes 1 and 2
    pooled = 0.5 * (volume[0, 0, 0::2, y, x] + volume[0, 0, 1::2, y, x])
    torch.testing.assert_close(taps[9 + 1], 0.5 * (pooled[1] + pooled[2]))


def test_checkpoint_with_refused_objects_is_named(tmp_path, student):
    import numpy as np

    path = tmp_path / "numpy_rng.pth"
    torch.save({"model": student.state_dict(), "config": {}, "rng": np.random.get_state()}, path)
    with pytest.raises(CheckpointError, match="refuses.*Unsupported global"):
        load_model("rt_igev", checkpoint=path)


def test_reduced_precision_keeps_lookup_softmax_and_upsampling_in_fp32(monkeypatch, student):
    """The autocast path, exercised with CPU bfloat16 autocast (no GPU here; on CUDA it is fp16/bf16 autocast).

    The geometry lookup, softmaxes, regression and upsampling must see float32 tensors, and the outputs must
    stay float32 and close to the float32 run.
    """
    left, right = _pair(64, 96)
    reference = student.predict(left, right, iters=2)
    seen = []
    original_call = GeometryEncoding.__call__

    def spy(self, disp):
        seen.append((self.volume_pyramid[0].dtype, disp.dtype))
        return original_call(self, disp)

    monkeypatch.setattr(GeometryEncoding, "__call__", spy)
    monkeypatch.setattr(student, "_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    disp, conf = student.predict(left, right, iters=2, return_confidence=True)
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen)
    assert disp.dtype == conf.dtype == torch.float32
    assert torch.isfinite(disp).all() and 0.0 <= float(conf.min()) and float(conf.max()) <= 1.0
    print(f"bf16 autocast vs fp32: mean abs {float((disp - reference).abs().mean()):.3f} px")
    assert float((disp - reference).abs().mean()) < 2.0


def test_saved_checkpoint_does_not_carry_the_training_precision(tmp_path):
    # bf16 training must not make every later load of the file run in bf16: the loader's caller chooses.
    model = load_model("rt_igev")
    model.config = dataclasses.replace(model.config, precision="bf16")
    path = tmp_path / "trained.pth"
    save_checkpoint(path, model, step=1)
    assert read_checkpoint(path).config["precision"] == "fp32"
    assert model.config.precision == "bf16"  # the live model is left as it was
