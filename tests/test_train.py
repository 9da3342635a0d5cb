"""`stereo-distill train` on real pairs (Motorcycle crops, labels from its ground truth) with the real student.

Small on purpose (64x128 crops, 2 GRU iterations, batch 1, one thread per process): the machine is shared.
The student starts from a seeded RT-IGEV checkpoint in the official format (conftest's `student_weights`). The
CLI runs in this process, except where a separate process is the point (kill -9 and resume, torchrun).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from file_modes import assert_new_file_modes
from stereo_distill.augment import AugmentConfig, augment
from stereo_distill.toy import motorcycle_crops, write_data, write_label

REPO = Path(__file__).resolve().parents[1]
# stereo_distill.cli through its console-script entry point (`python -m stereo_distill.cli` would load the module
# twice, as __main__ and as stereo_distill.cli, and its CliError handler would not recognise the subcommands').
CLI = [sys.executable, "-c", "import sys; from stereo_distill.cli import main; sys.exit(main())"]
COMMON = ["--batch-size", "1", "--crop", "64", "128", "--train-iters", "2", "--valid-iters", "2", "--workers", "0",
          "--val-every", "0", "--val-fraction", "0.2", "--seed", "3", "--log-every", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: identical arithmetic across runs (resume equality) and light on a shared CPU.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    pairs = motorcycle_crops((96, 160), scales=(0.25, 0.35), crops_per_scale=3, seed=0)
    write_data(root / "data", pairs)
    for pair in pairs:
        write_label(root / "labels", pair.name, pair.disp, np.isfinite(pair.disp))
    return root


def _train_argv(toy: Path, student: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(toy / "data"), "--labels", str(toy / "labels"), "--student", str(student),
            "--out", str(out), *COMMON, *extra]


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def train(cli, toy, student_weights):
    """train(out, *argv, ok=True) -> CliResult of `stereo-distill train` in this process."""
    def run(out: Path, *extra: str, ok: bool = True, data: Path | None = None):
        argv = _train_argv(toy, student_weights, out, *extra)
        if data is not None:
            argv[argv.index("--data") + 1] = str(data)
        result = cli(*argv)
        if ok:
            assert result.status == 0, result.err[-3000:]
        return result
    return run


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fixed_batch_loss(checkpoint: str | None, toy: Path) -> float:
    """Distillation loss of a checkpoint on the centre 64x128 crops of every pair (training-mode forward)."""
    from stereo_depth_ros.models import load_model
    from stereo_distill.augment import center_crop
    from stereo_distill.datasets import open_dataset
    from stereo_distill.losses import distillation_loss
    from stereo_distill.train_data import TrainItem, collate, load_item

    model = load_model("rt_igev", checkpoint=checkpoint)
    model.train()
    items = [TrainItem(s, toy / "labels" / s.name) for s in open_dataset(toy / "data")]
    batch = collate([center_crop(load_item(i), (64, 128)) for i in items])
    with torch.no_grad():
        init, preds = model(batch["left"], batch["right"], iters=2, test_mode=False)
        loss, _ = distillation_loss(init, preds, batch["disp"], batch["valid"])
    return float(loss)


def test_few_steps_decrease_the_loss_and_checkpoint_loads(toy, tmp_path, train, student_weights):
    out = tmp_path / "run"
    result = train(out, "--steps", "3", "--save-every", "3", "--lr", "5e-4")
    assert json.loads(result.out.strip().splitlines()[-1])["steps"] == 3
    last = out / "checkpoints" / "last.pth"
    ckpt = _load(last)
    assert {"model", "config", "step", "optimizer", "scheduler", "rng", "data_position"} <= set(ckpt)
    assert ckpt["step"] == 3 and (out / "checkpoints" / "step_00000003.pth").is_file()
    assert any((out / "tb").iterdir())
    assert_new_file_modes(out / "checkpoints")  # 0644 under umask 022, not mkstemp's 0600
    before = _fixed_batch_loss(str(student_weights), toy)
    after = _fixed_batch_loss(str(last), toy)
    assert after < before, (before, after)
    # Re-running the finished command resumes at the end and does nothing.
    again = train(out, "--steps", "3", "--save-every", "3", "--lr", "5e-4")
    assert "complete" in again.err


def test_kill_then_resume_equals_uninterrupted(toy, tmp_path, student_weights):
    args = ("--steps", "5", "--save-every", "1")
    _run([*CLI, *_train_argv(toy, student_weights, tmp_path / "straight", *args)])

    killed = tmp_path / "killed"
    command = [*CLI, *_train_argv(toy, student_weights, killed, *args)]
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "step_00000002.pth"
    deadline = time.monotonic() + 600
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = [int(p.stem.split("_")[1]) for p in (killed / "checkpoints").glob("step_*.pth")]
    assert 2 <= max(saved) < 5, "the run finished before it could be interrupted"

    resumed = _run(command)
    assert f"resuming {killed} at step {max(saved)} " in resumed.stderr

    a, b = _load(tmp_path / "straight" / "checkpoints" / "last.pth"), _load(killed / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == 5
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # parameters and BatchNorm statistics, bit for bit
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["data_position"] == b["data_position"]


def test_changed_settings_refuse_to_resume(tmp_path, train):
    out = tmp_path / "run"
    train(out, "--steps", "1", "--save-every", "1")
    result = train(out, "--steps", "1", "--save-every", "1", "--lr", "1e-3", ok=False)
    assert result.status == 2 and "lr" in result.err and "new --out" in result.err


def test_truncated_last_checkpoint_falls_back_to_the_newest_intact_step(tmp_path, train):
    out = tmp_path / "run"
    train(out, "--steps", "1", "--save-every", "1")
    folder = out / "checkpoints"
    last = folder / "last.pth"
    intact = (folder / "step_00000001.pth").read_bytes()
    truncated = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(truncated)  # a crash or a full disk mid-write
    result = train(out, "--steps", "1", "--save-every", "1")
    assert "Traceback" not in result.err
    (warning,) = [line for line in result.err.splitlines() if "unreadable" in line]  # one line says it all
    assert f"{last} is unreadable" in warning and "resuming from step_00000001.pth (step 1)" in warning
    (aside,) = folder.glob("last.pth.corrupt-*")  # set aside, not deleted: kept for a post-mortem
    assert f"set aside as {aside.name}" in warning and aside.read_bytes() == truncated
    assert "rewritten as last.pth" in warning and last.read_bytes() == intact  # eval/export read last.pth
    assert_new_file_modes(last)
    assert "is complete (1 steps)" in result.err
    again = train(out, "--steps", "1", "--save-every", "1")  # repaired: nothing more to say
    assert "unreadable" not in again.err and "resuming" in again.err
    for path in folder.glob("*.pth"):
        path.write_bytes(path.read_bytes()[:100])
    result = train(out, "--steps", "1", "--save-every", "1", ok=False)
    assert result.status == 2 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1 and "no intact checkpoint" in result.err


def test_corrupt_image_stops_training_with_one_line_naming_it(toy, tmp_path, train):
    from stereo_distill.train_data import epoch_order

    data = tmp_path / "data"
    shutil.copytree(toy / "data", data)
    samples = sorted(p.name for p in data.iterdir() if p.is_dir())
    first = samples[epoch_order(3, 0, len(samples))[0]]  # the pair step 1 draws (seed 3, every pair trains)
    broken = data / first / "right.png"
    broken.write_bytes(broken.read_bytes()[:200])  # the header still reads; the pixels do not
    result = train(tmp_path / "run", "--steps", "2", "--save-every", "2", "--val-fraction", "0", ok=False,
                   data=data)
    assert result.status == 1 and "Traceback" not in result.err
    assert f"cannot read image {broken}" in result.err and first in result.err
    errors = [line for line in result.err.splitlines() if "error:" in line]
    assert len(errors) == 1, result.err


def test_crop_larger_than_the_images_is_refused(tmp_path, train):
    for augment_flag in ("--augment", "--no-augment"):
        result = train(tmp_path / "run", "--steps", "1", "--crop", "128", "128", augment_flag, ok=False)
        assert result.status == 2 and "Traceback" not in result.err
        assert "--crop 128 128 is larger than" in result.err and "--crop 96 160" in result.err
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_nodes_train_like_one_node_and_resume_after_one_is_killed(toy, tmp_path, student_weights):
    """The global batch of 2 pairs three ways: one process accumulating 2 micro-batches of 1, one machine with 2
    ranks (torchrun --standalone), two "nodes" with 1 rank each (torchrun c10d rendezvous on localhost, gloo;
    tests/multinode.py). Then the two-node run again with node B killed (kill -9 of torchrun and its worker) after
    a checkpoint: node A stops by itself with one line, both relaunched resume and end where the uninterrupted
    two-node run ended.

    One machine and two nodes agree bit for bit (the same ranks compute the same all-reduce). Against the
    accumulating process the parameters agree to float32 rounding (all-reduce vs accumulation order); the
    BatchNorm3d running statistics are not compared there (DDP keeps rank 0's, accumulation updates them twice).
    """
    from multinode import TwoNodes, kill_node, wait_for

    args = ("--steps", "4", "--save-every", "1")
    times = {}
    started = time.monotonic()
    _run([*CLI, *_train_argv(toy, student_weights, tmp_path / "single", *args, "--accumulate", "2")])
    times["one process, accumulate 2"] = time.monotonic() - started
    started = time.monotonic()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "stereo_distill.cli", *_train_argv(toy, student_weights, tmp_path / "one_node", *args)]
    _run(torchrun)
    times["one node, 2 ranks"] = time.monotonic() - started
    nodes = TwoNodes(tmp_path / "logs_two", _train_argv(toy, student_weights, tmp_path / "two_nodes", *args))
    assert nodes.wait() == [0, 0], nodes.log(0)[-3000:] + nodes.log(1)[-3000:]
    times["two nodes"] = nodes.elapsed()
    assert json.loads((tmp_path / "two_nodes" / "run.json").read_text())["world_size"] == 2

    single = _load(tmp_path / "single" / "checkpoints" / "last.pth")
    one_node = _load(tmp_path / "one_node" / "checkpoints" / "last.pth")
    two_nodes = _load(tmp_path / "two_nodes" / "checkpoints" / "last.pth")
    assert one_node["step"] == two_nodes["step"] == 4 and one_node["data_position"] == two_nodes["data_position"]
    for key, value in one_node["model"].items():
        assert torch.equal(value, two_nodes["model"][key]), key  # parameters and BatchNorm statistics
    assert single["data_position"] == two_nodes["data_position"]
    from stereo_depth_ros.models import load_model

    names = {n for n, _ in load_model("rt_igev").named_parameters()}
    worst = max(float((single["model"][n] - two_nodes["model"][n]).abs().max()) for n in names)
    initial = _load(student_weights)
    moved = max(float((single["model"][n] - initial["module." + n]).abs().max()) for n in names)
    assert worst < 1e-5 < moved, (worst, moved)

    killed = tmp_path / "killed"
    argv = _train_argv(toy, student_weights, killed, *args)
    nodes = TwoNodes(tmp_path / "logs_killed", argv)
    assert wait_for(lambda: (killed / "checkpoints" / "step_00000001.pth").exists(), timeout=300), nodes.log(0)
    kill_node(nodes.procs[1])
    killed_at = time.monotonic()
    survivor = nodes.procs[0].wait(timeout=300)  # a hang (no peer-loss detection) fails here
    times["survivor stopped after the kill"] = time.monotonic() - killed_at
    assert survivor != 0
    lost = [line for line in nodes.log(0).splitlines() if "lost the other ranks" in line]
    assert lost and "re-run the same command on every node" in lost[0], nodes.log(0)[-3000:]
    saved = max(int(p.stem.split("_")[1]) for p in (killed / "checkpoints").glob("step_*.pth"))
    assert 1 <= saved < 4, "the run finished before it could be interrupted"

    relaunch = TwoNodes(tmp_path / "logs_resumed", argv)
    assert relaunch.wait() == [0, 0], relaunch.log(0)[-3000:] + relaunch.log(1)[-3000:]
    times["both relaunched"] = relaunch.elapsed()
    assert f"resuming {killed} at step {saved} " in relaunch.log(0) + relaunch.log(1)
    resumed = _load(killed / "checkpoints" / "last.pth")
    assert resumed["step"] == 4
    for key, value in two_nodes["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for sa, sb in zip(two_nodes["optimizer"]["state"].values(), resumed["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    print("multinode train:", ", ".join(f"{k} {v:.1f} s" for k, v in times.items()),
          f"(node B killed after step {saved} of 4 was saved; max |param| difference to the accumulating process "
          f"{worst:.2g})")


def test_a_run_continues_on_another_number_of_ranks_with_the_same_global_batch(toy, tmp_path, train,
                                                                             student_weights):
    """A machine lost for good: a run of one process accumulating 2 micro-batches continues on 2 ranks (torchrun,
    gloo) without accumulation. The global batch and so the pairs of every step are the same, and it ends where
    the uninterrupted run ends (to float32 rounding). A launch with another global batch is refused, naming the
    --accumulate that fits."""
    args = ("--steps", "3", "--save-every", "1")
    straight = tmp_path / "straight"
    _run([*CLI, *_train_argv(toy, student_weights, straight, *args, "--accumulate", "2")])  # one thread, as torchrun
    moved = tmp_path / "moved"
    shutil.copytree(straight, moved)
    for later in ("last.pth", "step_00000002.pth", "step_00000003.pth"):
        (moved / "checkpoints" / later).unlink()  # as if stopped after step 1
    refused = train(moved, *args, ok=False)
    assert refused.status == 2 and "Traceback" not in refused.err
    assert "global batch of 2 pairs; this launch makes 1" in refused.err and "--accumulate 2" in refused.err
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "stereo_distill.cli", *_train_argv(toy, student_weights, moved, *args)]
    assert f"resuming {moved} at step 1 " in _run(torchrun).stderr
    a, b = _load(straight / "checkpoints" / "last.pth"), _load(moved / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == 3 and a["data_position"] == b["data_position"]
    from stereo_depth_ros.models import load_model

    names = {n for n, _ in load_model("rt_igev").named_parameters()}
    assert max(float((a["model"][n] - b["model"][n]).abs().max()) for n in names) < 1e-5


# --------------------------------------------------------------------------------------------- augmentation
def _shifted_pair(d: int = 6, h: int = 80, w: int = 140):
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 255, (h // 8, (w + d) // 8 + 1, 3)).astype(np.float32)
    import cv2

    wide = np.clip(cv2.resize(base, (w + d, h), interpolation=cv2.INTER_CUBIC), 0, 255)
    left = wide[:, 0:w]
    right = wide[:, d:d + w]  # right[x - d] == left[x]: every left pixel has disparity d
    return {"left": left, "right": right, "disp": np.full((h, w), float(d), np.float32),
            "valid": np.ones((h, w), bool)}


NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=(1.0, 1.0), hue=0.0, eraser_prob=0.0)


def test_augmentation_scales_disparity_and_keeps_the_pair_rectified():
    sample = _shifted_pair()
    for seed in range(4):
        out = augment(sample, np.random.default_rng(seed),
                      AugmentConfig(crop=(64, 96), min_scale=0.3, max_scale=0.6, scale_prob=1.0, **NO_COLOUR))
        d = float(np.median(out["disp"]))
        assert d > 6 * 2**0.3 - 0.1
        # Warping the right view by the label reproduces the left view, better than any other disparity:
        # nothing was flipped or shifted in one view alone, and the disparity scaled with the image.
        import cv2

        h, w = out["disp"].shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

        def warp_error(disp: float) -> float:
            warped = cv2.remap(out["right"], xs - disp, ys, cv2.INTER_LINEAR)
            return float(np.abs(warped - out["left"])[:, 24:].mean())

        errors = {delta: warp_error(d + delta) for delta in (-1.5, -0.75, 0.0, 0.75, 1.5)}
        assert min(errors, key=errors.get) == 0.0, (d, errors)


def test_augmentation_is_a_function_of_the_generator():
    sample = _shifted_pair()
    cfg = AugmentConfig(crop=(64, 96))
    a = augment(sample, np.random.default_rng(5), cfg)
    b = augment(sample, np.random.default_rng(5), cfg)
    c = augment(sample, np.random.default_rng(6), cfg)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["left"], c["left"])


def test_occlusions_touch_only_the_right_view():
    sample = _shifted_pair()
    cfg = AugmentConfig(crop=(80, 140), scale_prob=0.0, **{**NO_COLOUR, "eraser_prob": 1.0},
                        patch_size=(20, 30))
    out = augment(sample, np.random.default_rng(0), cfg)
    assert np.allclose(out["left"], sample["left"], atol=1e-3)
    changed = np.abs(out["right"] - sample["right"]).max(axis=2) > 1e-3
    assert 20 * 20 <= changed.sum() <= 2 * 30 * 30
