"""Numerical parity of RT-IGEV with upstream (gangweix/IGEV-plusplus core_rt) on ../shared/parity/rt_igev.

The fixture holds seeded weights in the official checkpoint format and what upstream computes from them on a
real pair (Middlebury Motorcycle). Tolerances are the fixture README's: 3e-4 px in float32, 1e-6 px in float64
after `model.double()`. Run `python tests/test_parity_rt_igev.py` (or pytest -s) to print every figure.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_depth_ros.models import load_model
from parity_support import fixture_dir, load_case, report_figures, skip_without_fixture

FIXTURE = fixture_dir("rt_igev")
TOL_F32 = 3e-4
TOL_F64 = 1e-6

pytestmark = skip_without_fixture(FIXTURE)

FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _threads_and_report():
    yield from report_figures("rt_igev parity", FIGURES)


def _case(name: str) -> dict[str, np.ndarray]:
    return load_case(FIXTURE, name)


def _model(double: bool = False):
    model = load_model("rt_igev", checkpoint=FIXTURE / "weights.pth")
    return model.double() if double else model


def _inputs(case, double: bool):
    dtype = torch.float64 if double else torch.float32
    return torch.from_numpy(case["left"]).to(dtype), torch.from_numpy(case["right"]).to(dtype), int(case["iters"])


def _check(label: str, got: torch.Tensor, expected: np.ndarray, tol: float) -> None:
    got = got.detach().cpu().numpy()
    assert got.shape == expected.shape, f"{label}: shape {got.shape} vs {expected.shape}"
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    FIGURES[label] = diff
    print(f"{label}: max abs diff {diff:.3e} (tolerance {tol:g})")
    assert diff <= tol, f"{label}: max abs diff {diff:.3e} > {tol:g}"


@pytest.mark.parametrize("double", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("case_name", ["case_a", "case_pad"])
def test_test_mode(case_name, double):
    case = _case(case_name)
    left, right, iters = _inputs(case, double)
    disp = _model(double).predict(left, right, iters=iters)
    assert disp.dtype == (torch.float64 if double else torch.float32)
    key = "disp_test_f64" if double else "disp_test"
    _check(f"{case_name}.{key}", disp, case[key], TOL_F64 if double else TOL_F32)


@pytest.mark.parametrize("double", [False, True], ids=["f32", "f64"])
def test_training_outputs(double):
    case = _case("case_a")
    left, right, iters = _inputs(case, double)
    model = _model(double).train()
    init_disp, preds = model(left, right, iters=iters)
    assert len(preds) == iters
    suffix = "_f64" if double else ""
    tol = TOL_F64 if double else TOL_F32
    _check(f"case_a.train_init{suffix}", init_disp, case[f"train_init{suffix}"], tol)
    _check(f"case_a.train_preds{suffix}", torch.stack(preds), case[f"train_preds{suffix}"], tol)


def test_intermediates_match_debug_tensors():
    """Where a difference starts: Feature pyramid, stems, descriptors, volume logits, init disparity, GRU states."""
    case, debug = _case("case_a"), _case("case_a_debug")
    left, right, iters = _inputs(case, False)
    model = _model()
    deltas: list[torch.Tensor] = []
    captured: dict[str, torch.Tensor] = {}

    def keep_first(key):
        # a forward hook that returns a value replaces the module's output: return None explicitly
        def hook(module, args, out):
            captured.setdefault(key, out)
            return None

        return hook

    handles = [
        model.update_block.register_forward_hook(lambda m, args, out: deltas.append(out[2])),
        model.classifier.register_forward_hook(keep_first("geo_logits")),
        model.hnet.register_forward_hook(keep_first("hnet_out")),
        model.desc.register_forward_hook(keep_first("match_left")),
        model.stem_4.register_forward_hook(keep_first("stem_4x")),
    ]
    with torch.no_grad():
        image = 2 * (left / 255.0) - 1.0
        for level, tensor in zip(("x4", "x8", "x16", "x32"), model.feature(image)):
            _check(f"debug.feature_{level}", tensor, debug[f"feature_{level}"], 1e-4)
        model(left, right, iters=iters, test_mode=True)
    for handle in handles:
        handle.remove()
    for key in ("stem_4x", "match_left", "geo_logits", "hnet_out"):
        _check(f"debug.{key}", captured[key], debug[key], 1e-4)
    prob = torch.softmax(captured["geo_logits"].squeeze(1), dim=1)
    init_q = (prob * torch.arange(prob.shape[1], dtype=prob.dtype).view(1, -1, 1, 1)).sum(1, keepdim=True)
    _check("debug.init_disp_q", init_q, debug["init_disp_q"], 1e-4)
    disp_q, disp = [], init_q
    for delta in deltas:
        disp = disp + delta
        disp_q.append(disp)
    _check("debug.disp_q", torch.stack(disp_q), debug["disp_q"], 1e-4)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s"]))
