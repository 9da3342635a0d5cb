"""`stereo-distill label` with the fixture teacher weights on tiny real pairs (Motorcycle crops)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stereo_distill import cli
from stereo_distill.datasets import open_dataset, write_image
from stereo_distill.label import Thresholds, consistency_mask, label_batch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "parity" / "selective_igev" / "weights.pth"
TEACHER = "selective_igev"
ITERS, MAX_DISP = 2, 32
SMALL = ["--model", TEACHER, "--iters", str(ITERS), "--max-disp", str(MAX_DISP)]


@pytest.fixture(scope="module")
def weights() -> Path:
    if not WEIGHTS.is_file():
        pytest.skip(f"fixture teacher weights {WEIGHTS} absent (they live in ../shared beside the repo)")
    from stereo_depth_ros.models import available_models

    if TEACHER not in available_models():
        pytest.skip(f"{TEACHER} is not registered in stereo_depth_ros.models (teacher module absent)")
    return WEIGHTS


@pytest.fixture(scope="module")
def teacher(weights):
    from stereo_depth_ros.models import load_model

    return load_model(TEACHER, checkpoint=str(weights), valid_iters=ITERS, max_disp=MAX_DISP)


def motorcycle_crops(n: int, size=(32, 64)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real stereo content: n different windows of the Motorcycle pair, downscaled by 4."""
    from stereo_devkit.motorcycle import motorcycle_rig

    rig = motorcycle_rig(185)
    small = [rig.left, rig.right]
    h, w = size
    crops = []
    for i in range(n):
        y, x = (7 * i) % (125 - h), (23 * i) % (185 - w)
        crops.append((small[0][y:y + h, x:x + w].copy(), small[1][y:y + h, x:x + w].copy()))
    return crops


def make_data(root: Path, n: int, sizes=None) -> Path:
    for i in range(n):
        size = sizes[i] if sizes else (32, 64)
        left, right = motorcycle_crops(i + 1, size)[i]
        write_image(root / f"{i:06d}_{1000 + i}" / "left.png", left)
        write_image(root / f"{i:06d}_{1000 + i}" / "right.png", right)
    return root


def run_label(argv: list[str]) -> int:
    """The real dispatcher (it imports only the module of the subcommand it runs)."""
    return cli.main(["label", *argv])


def subprocess_env() -> dict:
    # One thread per process: runs in different processes (and under torchrun, which sets the same) then compute
    # bit-identical results, and the shared CPU is spared.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def files_of(labels: Path) -> dict[str, bytes]:
    return {p.relative_to(labels).as_posix(): p.read_bytes() for p in sorted(labels.rglob("*")) if p.is_file()}


def reference_mask(disp_left: np.ndarray, disp_right: np.ndarray, lr: float, lo: float, hi: float) -> np.ndarray:
    """The left-right check written out per pixel in plain Python (independent of the vectorised one)."""
    h, w = disp_left.shape
    valid = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            d = float(disp_left[y, x])
            xr = x - d
            if not (0 <= xr <= w - 1) or not (lo < d <= hi):
                continue
            x0 = int(np.floor(xr))
            x1 = min(x0 + 1, w - 1)
            t = xr - x0
            warped = (1 - t) * float(disp_right[y, x0]) + t * float(disp_right[y, x1])
            valid[y, x] = abs(d - warped) <= lr
    return valid


def test_labels_equal_predict_and_manifest(weights, teacher, tmp_path, capsys):
    data = make_data(tmp_path / "data", 2, sizes=[(48, 64), (32, 64)])  # 48: the padding path
    (data / "000002_1002").mkdir()
    write_image(data / "000002_1002" / "left.png", motorcycle_crops(1)[0][0])
    (data / "000002_1002" / "right.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "labels"
    rc = run_label([str(data), "--teacher", str(weights), "--out", str(out), *SMALL, "--lr-threshold", "1.5"])
    assert rc == 1, capsys.readouterr().err  # one sample failed; the others are labelled

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["teacher"]["config"] == json.loads(json.dumps(dataclasses.asdict(teacher.config)))
    assert manifest["teacher"]["model"] == TEACHER
    assert manifest["thresholds"] == {"lr_threshold": 1.5, "min_disp": 0.0, "max_disp": float(MAX_DISP)}
    assert list(manifest["failures"]) == ["000002_1002"] and "right.png" in manifest["failures"]["000002_1002"]
    assert manifest["software"]["stereo_depth_ros"]

    for sample in open_dataset(data)[:2]:
        left, right = (torch.from_numpy(im).permute(2, 0, 1)[None].float() for im in sample.load_pair())
        expected = teacher.predict(left, right)[0, 0].numpy()
        mirrored = teacher.predict(right.flip(-1), left.flip(-1))[0, 0].numpy()[:, ::-1]
        disparity = np.load(out / sample.name / "disparity.npy")
        assert disparity.dtype == np.float32 and disparity.shape == left.shape[-2:]
        np.testing.assert_allclose(disparity, expected, rtol=0, atol=1e-5)
        valid = cv2.imread(str(out / sample.name / "valid.png"), cv2.IMREAD_UNCHANGED)
        assert valid.dtype == np.uint8 and set(np.unique(valid)) <= {0, 255}
        np.testing.assert_array_equal(valid == 255, reference_mask(expected, mirrored, 1.5, 0.0, MAX_DISP))
        assert manifest["samples"][sample.name]["valid_share"] == pytest.approx((valid == 255).mean(), abs=1e-6)


def test_changed_settings_are_refused(weights, tmp_path, capsys):
    data = make_data(tmp_path / "data", 1)
    out = tmp_path / "labels"
    base = [str(data), "--teacher", str(weights), "--out", str(out), *SMALL]
    assert run_label(base) == 0
    before = files_of(out)
    other = tmp_path / "other.pth"
    state = torch.load(weights, map_location="cpu")
    params = state["model"] if isinstance(state.get("model"), dict) else state  # ours or the official format
    key = next(k for k, v in params.items() if v.is_floating_point())
    params[key] = params[key] + 0.01
    torch.save(state, other)
    for argv, what in [
        ([*base, "--lr-threshold", "3"], "lr_threshold"),
        ([str(data), "--teacher", str(other), "--out", str(out), *SMALL], "sha256"),
        ([*base, "--iters", "3"], "valid_iters"),
    ]:
        capsys.readouterr()
        assert run_label(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "different settings" in err and what in err
    assert files_of(out) == before
    capsys.readouterr()
    assert run_label(base) == 0  # the same settings resume (nothing left to do)
    assert "0 labelled now, 1/1 complete" in capsys.readouterr().err


def test_kill_9_then_resume_equals_uninterrupted(weights, tmp_path):
    data = make_data(tmp_path / "data", 3)
    command = [sys.executable, "-m", "stereo_distill.cli", "label", str(data), "--teacher", str(weights), *SMALL]

    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], env=subprocess_env(), check=True, capture_output=True)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen([*command, "--out", str(resumed)], env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(resumed.glob("*/label.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(resumed.glob("*/label.json")))
    assert 1 <= done < 3, f"the run was not interrupted mid-way ({done} of 3 samples done)"

    subprocess.run([*command, "--out", str(resumed)], env=subprocess_env(), check=True, capture_output=True)
    assert files_of(resumed) == files_of(reference)


def test_torchrun_two_ranks_equal_single_process(weights, tmp_path):
    # Two sizes and batches of two: ranks get whole batches, so every pair is computed exactly as in one process.
    data = make_data(tmp_path / "data", 4, sizes=[(32, 64), (32, 64), (32, 96), (32, 64)])
    args = ["label", str(data), "--teacher", str(weights), *SMALL, "--batch-size", "2", "--device", "cpu"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "stereo_distill.cli", *args, "--out", str(single)], env=subprocess_env(),
                   check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "stereo_distill.cli", *args, "--out", str(multi)],
        env=subprocess_env(), capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_of(multi) == files_of(single)
    assert json.loads((multi / "manifest.json").read_text())["summary"]["labelled"] == 4


class BlockMatcher:
    """A stand-in teacher that really matches the images: winner-take-all SAD over 5x5 windows.

    Why not the fixture teacher here: its weights are seeded random, so its output does not follow the scene's
    geometry, and no trained teacher is available offline. The left-right check only needs a predictor that
    sees the images; this one is exact on the textured synthetic pair below.
    """

    name = "block_matcher"

    def __init__(self, max_disp: int) -> None:
        self.config = type("Config", (), {"max_disp": max_disp})()

    def predict(self, left: torch.Tensor, right: torch.Tensor, iters=None) -> torch.Tensor:
        grey_l, grey_r = left.mean(1, keepdim=True), right.mean(1, keepdim=True)
        costs = []
        for d in range(self.config.max_disp):
            shifted = torch.nn.functional.pad(grey_r, (d, 0, 0, 0), mode="replicate")[..., : grey_r.shape[-1]]
            costs.append(torch.nn.functional.avg_pool2d((grey_l - shifted).abs(), 5, 1, 2, count_include_pad=False))
        return torch.stack(costs, 0).argmin(0).float()


def test_left_right_check_masks_occluded_strip():
    h, w, d_bg, d_fg = 48, 96, 4, 16
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (h, w + 64, 3)).astype(np.float32)
    square = rng.integers(0, 256, (20, 24, 3)).astype(np.float32)
    y0, x0 = 14, 50  # the square's position in the left image
    right = background[:, :w].copy()
    right[y0:y0 + 20, x0 - d_fg:x0 - d_fg + 24] = square
    left = np.empty_like(right)
    xs = np.arange(w)
    left[:] = background[:, np.clip(xs - d_bg, 0, None)]
    left[y0:y0 + 20, x0:x0 + 24] = square

    to_t = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None]  # noqa: E731
    disparity, valid = label_batch(BlockMatcher(24), to_t(left), to_t(right), None, Thresholds(lr_threshold=1.0))
    disparity, valid = disparity[0], valid[0]
    rows = slice(y0 + 3, y0 + 17)
    strip = valid[rows, x0 - (d_fg - d_bg) + 2: x0 - 2]  # visible in the left image only (covered in the right)
    assert strip.mean() < 0.2, f"occluded strip only {1 - strip.mean():.0%} masked"
    assert valid[rows, x0 + 3: x0 + 21].mean() > 0.95  # the square itself
    assert np.all(disparity[rows, x0 + 3: x0 + 21] == d_fg)
    assert valid[rows, x0 + 30:].mean() > 0.95  # background right of the square


def test_consistency_mask_range_and_border():
    disp_left = torch.tensor([[[0.0, 1.0, 2.0, 2.0, 9.0, 2.5]]])
    disp_right = torch.tensor([[[2.0, 2.0, 2.0, 2.5, 3.0, 2.0]]])
    got = consistency_mask(disp_left, disp_right, Thresholds(lr_threshold=0.3, min_disp=0.5, max_disp=8.0), 64.0)
    # x0: d=0 at/below min; x1: warps to -1 (outside); x2: 2 vs dR(0)=2 ok; x3: 2 vs dR(1)=2 ok;
    # x4: d=9 above max; x5: warps to 2.5 -> dR 2.25, |2.5-2.25| ok.
    assert got.tolist() == [[[False, False, True, True, False, True]]]


def test_consistency_mask_distrusts_non_finite_teacher_values():
    import torch

    from stereo_distill.label import Thresholds, consistency_mask

    disp = torch.full((1, 4, 8), 2.0)
    disp[0, 1, 3] = float("nan")
    disp[0, 2, 5] = float("inf")
    mask = consistency_mask(disp, disp.clone(), Thresholds(), 192.0)
    assert not mask[0, 1, 3] and not mask[0, 2, 5]
    assert mask[0, 0, 2:].all()  # finite, consistent pixels whose match lies inside the image stay trusted
