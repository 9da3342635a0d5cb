"""`stereo-distill label` on tiny real pairs (Motorcycle crops): a seeded Selective-IGEV teacher checkpoint
(conftest's `teacher_weights`, official format), any teacher kind (a checkpoint of either network, an ONNX export,
sgbm), resume and sharding, the report and the contact sheet."""
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

from file_modes import assert_new_file_modes
from stereo_distill import cli
from stereo_distill.datasets import open_dataset
from stereo_depth_ros.dataset_layout import write_image
from stereo_distill.label import Thresholds, consistency_mask, label_batch

from stereo_depth_ros.inference import StereoEstimate, StereoEstimator, open_estimator

REPO = Path(__file__).resolve().parents[1]
TEACHER = "selective_igev"
ITERS, MAX_DISP = 2, 32
SMALL = ["--model", TEACHER, "--iters", str(ITERS), "--max-disp", str(MAX_DISP)]


@pytest.fixture(scope="module")
def weights(teacher_weights) -> Path:
    return teacher_weights


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
    assert manifest["teacher"]["kind"] == "torch" and manifest["teacher"]["model"] == TEACHER
    assert manifest["teacher"]["settings"]["iters"] == ITERS
    # Iterations are passed per call (settings.iters), not baked into the config's valid_iters.
    without_iters = lambda config: {k: v for k, v in config.items() if k != "valid_iters"}
    assert without_iters(manifest["teacher"]["settings"]["config"]) == without_iters(
        json.loads(json.dumps(dataclasses.asdict(teacher.config))))
    assert manifest["thresholds"] == {"lr_threshold": 1.5, "min_disp": 0.0, "max_disp": float(MAX_DISP)}
    assert list(manifest["failures"]) == ["000002_1002"] and "right.png" in manifest["failures"]["000002_1002"]
    assert manifest["software"]["stereo_depth_ros"]

    for sample in open_dataset(data)[:2]:
        left, right = (torch.from_numpy(im).permute(2, 0, 1)[None].float() for im in sample.load_pair())
        expected = teacher.predict(left, right)[0, 0].numpy()
        mirrored = teacher.predict(right.flip(-1), left.flip(-1))[0, 0].numpy()[:, ::-1]
        disparity = np.load(out / sample.name / "disparity.npy")
        assert disparity.dtype == np.float32 and disparity.shape == left.shape[-2:]
        # The teacher's disparity where it has one (positive), 0 where it has none.
        np.testing.assert_allclose(disparity, np.where(expected > 0, expected, 0), rtol=0, atol=1e-5)
        valid = cv2.imread(str(out / sample.name / "valid.png"), cv2.IMREAD_UNCHANGED)
        assert valid.dtype == np.uint8 and set(np.unique(valid)) <= {0, 255}
        np.testing.assert_array_equal(valid == 255, reference_mask(expected, mirrored, 1.5, 0.0, MAX_DISP))
        assert manifest["samples"][sample.name]["valid_share"] == pytest.approx((valid == 255).mean(), abs=1e-6)
    assert_new_file_modes(out)  # labels, masks, manifest: readable by others (0644 under umask 022)


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
        ([*base, "--iters", "3"], "iters 2 vs 3"),
        ([str(data), "--teacher", "sgbm", "--out", str(out), "--max-disp", str(MAX_DISP)], "kind 'torch' vs"),
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


def test_two_nodes_label_byte_identical_and_resume_after_one_is_killed(weights, tmp_path):
    """Two torchrun "nodes" (c10d rendezvous on localhost, one gloo process each; tests/multinode.py) against one
    plain process: byte-identical LABELS; then a two-node run whose node B is killed (kill -9 of torchrun and its
    worker) mid-way: node A stops by itself with one line, both relaunched finish, still byte-identical."""
    from multinode import TwoNodes, kill_node, wait_for

    # Two sizes and batches of two: a batch is computed whole wherever it runs, so every pair's numbers are equal.
    data = make_data(tmp_path / "data", 8, sizes=[(32, 64)] * 3 + [(32, 96)] + [(32, 64)] * 4)
    args = ["label", str(data), "--teacher", str(weights), *SMALL, "--batch-size", "2", "--device", "cpu"]
    single = tmp_path / "single"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "stereo_distill.cli", *args, "--out", str(single)], env=subprocess_env(),
                   check=True, capture_output=True)
    times = {"one process": time.monotonic() - started}

    two = tmp_path / "two_nodes"
    nodes = TwoNodes(tmp_path / "logs_two", [*args, "--out", str(two)])
    assert nodes.wait() == [0, 0], nodes.log(0)[-3000:] + nodes.log(1)[-3000:]
    times["two nodes"] = nodes.elapsed()
    assert files_of(two) == files_of(single)
    rank_lines = [line for line in (nodes.log(0) + nodes.log(1)).splitlines() if " pairs/s (start-up" in line]
    assert len(rank_lines) == 2, rank_lines  # rank 0 reports each rank's throughput

    killed = tmp_path / "killed"
    nodes = TwoNodes(tmp_path / "logs_killed", [*args, "--out", str(killed)])
    assert wait_for(lambda: any(killed.glob("*/label.json")), timeout=300), nodes.log(0)[-2000:]
    kill_node(nodes.procs[1])
    killed_at = time.monotonic()
    done = len(list(killed.glob("*/label.json")))
    assert 1 <= done < 8, f"the run was not interrupted mid-way ({done} of 8 labelled)"
    survivor = nodes.procs[0].wait(timeout=300)  # a hang (no peer-loss detection) fails here
    times["survivor stopped after the kill"] = time.monotonic() - killed_at
    assert survivor != 0
    lost = [line for line in nodes.log(0).splitlines() if "lost the other ranks" in line]
    assert lost and "re-run the same command on every node" in lost[0], nodes.log(0)[-3000:]

    relaunch = TwoNodes(tmp_path / "logs_resumed", [*args, "--out", str(killed)])
    assert relaunch.wait() == [0, 0], relaunch.log(0)[-3000:] + relaunch.log(1)[-3000:]
    times["both relaunched"] = relaunch.elapsed()
    assert files_of(killed) == files_of(single)
    print("multinode label:", ", ".join(f"{k} {v:.1f} s" for k, v in times.items()),
          f"({done} of 8 pairs labelled when node B was killed)")


def test_two_nodes_refuse_an_output_folder_that_is_not_shared(weights, tmp_path):
    """What two machines with node-local disks look like: LABELS at each node's own folder. Both stop before any
    label is written, with one line naming the problem."""
    from multinode import TwoNodes

    data = make_data(tmp_path / "data", 2)
    args = ["label", str(data), "--teacher", str(weights), *SMALL, "--device", "cpu"]
    nodes = TwoNodes(tmp_path / "logs", [*args, "--out", str(tmp_path / "a" / "labels")],
                     [*args, "--out", str(tmp_path / "b" / "labels")])
    codes = nodes.wait()
    assert codes[0] != 0 and codes[1] != 0
    for index in (0, 1):
        errors = [line for line in nodes.log(index).splitlines() if "stereo-distill label: error:" in line]
        assert errors and "is not shared between the nodes" in errors[0], nodes.log(index)[-2000:]
    assert not list(tmp_path.glob("*/labels/*/label.json"))


class BlockMatcher(StereoEstimator):
    """A stand-in teacher that really matches the images: winner-take-all SAD over 5x5 windows.

    Why not the fixture teacher here: its weights are seeded random, so its output does not follow the scene's
    geometry, and no trained teacher is available offline. The left-right check only needs a predictor that
    sees the images; this one is exact on the textured synthetic pair below.
    """

    name = "block_matcher"

    def __init__(self, max_disp: int) -> None:
        self.max_disp = max_disp

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        grey_l, grey_r = (torch.from_numpy(np.asarray(im, np.float32)).mean(-1)[None, None] for im in (left, right))
        costs = []
        for d in range(self.max_disp):
            shifted = torch.nn.functional.pad(grey_r, (d, 0, 0, 0), mode="replicate")[..., : grey_r.shape[-1]]
            costs.append(torch.nn.functional.avg_pool2d((grey_l - shifted).abs(), 5, 1, 2, count_include_pad=False))
        return StereoEstimate(torch.stack(costs, 0).argmin(0).float()[0, 0].numpy())


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

    disparity, valid, stats = label_batch(BlockMatcher(24), [left], [right], Thresholds(lr_threshold=1.0), 24.0)
    disparity, valid = disparity[0], valid[0]
    assert 0 < stats[0]["lr_inconsistent_share"] < 0.5 and stats[0]["lr_checked_share"] > 0.8
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


# ------------------------------------------------------------------------------------------ any teacher kind
@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, Path]:
    """Seeded teachers of every kind a user can name: our checkpoint of the student, an official-format
    (DataParallel-prefixed, nameless) state_dict of the teacher network, and a small ONNX export."""
    from stereo_depth_ros.models import load_model, save_checkpoint

    folder = tmp_path_factory.mktemp("teachers")
    files = {"rt_igev": folder / "student_last.pth", "selective_igev": folder / "official_teacher.pth",
             "onnx": folder / "student.onnx"}
    save_checkpoint(files["rt_igev"], load_model("rt_igev"))
    torch.save({"module." + k: v for k, v in load_model("selective_igev").state_dict().items()},
               files["selective_igev"])
    assert cli.main(["export", "--model", str(files["rt_igev"]), "--out", str(files["onnx"]), "--iters", "1",
                     "--height", "32", "--width", "64", "--no-verify"]) == 0
    return files


@pytest.mark.parametrize("kind", ["rt_igev", "selective_igev", "onnx", "sgbm"])
def test_each_teacher_kind_labels_through_open_estimator(teacher_files, kind, tmp_path, capsys):
    data = make_data(tmp_path / "data", 2)
    out = tmp_path / "labels"
    source = "sgbm" if kind == "sgbm" else str(teacher_files[kind])
    options = {"onnx": [], "sgbm": ["--max-disp", "16"]}.get(kind, ["--iters", "1", "--max-disp", "32"])
    assert run_label([str(data), "--teacher", source, "--out", str(out), "--device", "cpu", *options]) == 0, \
        capsys.readouterr().err

    manifest = json.loads((out / "manifest.json").read_text())
    expected_kind = {"onnx": "onnxruntime", "sgbm": "opencv_sgbm"}.get(kind, "torch")
    expected_model = {"onnx": "rt_igev", "sgbm": "opencv_sgbm"}.get(kind, kind)
    assert (manifest["teacher"]["kind"], manifest["teacher"]["model"]) == (expected_kind, expected_model)
    if kind == "sgbm":
        assert manifest["teacher"]["sha256"] is None and manifest["teacher"]["settings"]["num_disparities"] == 16
    else:
        assert manifest["teacher"]["sha256"] == hashlib.sha256(Path(source).read_bytes()).hexdigest()
        assert manifest["teacher"]["settings"]["iters"] == 1
    estimator = open_estimator(source, device="cpu", iters=None if kind in ("onnx", "sgbm") else 1,
                               max_disparity={"onnx": None, "sgbm": 16}.get(kind, 32), with_confidence=False)
    for sample in open_dataset(data):
        expected = np.nan_to_num(estimator.estimate(*sample.load_pair()).disparity, nan=0.0)
        np.testing.assert_allclose(np.load(out / sample.name / "disparity.npy"), expected, rtol=0, atol=1e-5)
        valid = cv2.imread(str(out / sample.name / "valid.png"), cv2.IMREAD_UNCHANGED) == 255
        assert not np.any(valid & (expected <= 0))  # a pixel without a teacher value is never trusted
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["kind"] == expected_kind and sorted(report["samples"]) == sorted(manifest["samples"])

    # Resuming into these labels with a teacher of another kind is refused, and nothing changes.
    before = files_of(out)
    other = str(teacher_files["rt_igev"]) if kind == "sgbm" else "sgbm"
    capsys.readouterr()
    assert run_label([str(data), "--teacher", other, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different settings" in err and "kind" in err
    assert files_of(out) == before


def test_teacher_flags_that_do_not_apply_are_refused(teacher_files, tmp_path, capsys):
    data = make_data(tmp_path / "data", 1)
    for argv, message in [
        (["--teacher", "sgbm", "--iters", "4"], "--iters does not apply to the sgbm teacher"),
        (["--teacher", str(teacher_files["onnx"]), "--iters", "3"], "exported with 1 iterations"),
        (["--teacher", str(teacher_files["onnx"]), "--max-disp", "64"], "range fixed at export"),
        (["--teacher", str(tmp_path / "missing.pth")], "does not exist"),
    ]:
        capsys.readouterr()
        assert run_label([str(data), "--out", str(tmp_path / "labels"), "--device", "cpu", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_report_and_contact_sheet_show_the_right_samples(tmp_path, capsys):
    from stereo_distill.label_report import CAPTION

    h, w = 32, 64
    data = make_data(tmp_path / "data", 5)
    blank = data / "000005_1005"  # no texture at all: SGBM trusts nothing here, so it must lead the sheet
    write_image(blank / "left.png", np.full((h, w, 3), 128, np.uint8))
    write_image(blank / "right.png", np.full((h, w, 3), 128, np.uint8))
    out = tmp_path / "labels"
    assert run_label([str(data), "--teacher", "sgbm", "--max-disp", "16", "--out", str(out), "--sheet-rows", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())

    assert sorted(report["samples"]) == sorted(manifest["samples"]) and len(report["samples"]) == 6
    for name, record in report["samples"].items():
        assert record["valid_share"] == manifest["samples"][name]["valid_share"]
        assert set(record) >= {"lr_checked_share", "lr_mean_px", "lr_inconsistent_share"}
    assert report["samples"]["000005_1005"]["valid_share"] == 0.0
    assert report["lowest_valid_share"][0] == "000005_1005"
    # 3 rows for 6 samples: the lowest valid share, then an even spread over the other five in name order.
    shown = report["contact_sheet_samples"]
    assert shown[0] == "000005_1005" and len(shown) == 3 and shown[1:] == ["000000_1000", "000004_1004"]

    sheet = cv2.cvtColor(cv2.imread(str(out / "contact_sheet.png")), cv2.COLOR_BGR2RGB)
    header = CAPTION + 4
    assert sheet.shape == (header + 3 * (CAPTION + h), 3 * w, 3)
    for row, name in enumerate(shown):
        top = header + row * (CAPTION + h) + CAPTION
        tiles = sheet[top: top + h]
        left = cv2.cvtColor(cv2.imread(str(data / name / "left.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(tiles[:, :w], left)
        valid = cv2.imread(str(out / name / "valid.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(tiles[:, 2 * w:, 0], valid)
