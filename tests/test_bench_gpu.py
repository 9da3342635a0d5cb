"""bench/gpu.py on the CPU: the quick run prints its table and writes the same rows as JSON, importing only what a
plain CUDA machine has; the time guard skips rows with a note; the child-process row of the compile section."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage.data", reason="scikit-image not installed (the bench's real pair)")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# What the GPU machine has besides the standard library (bench/gpu.py's docstring). Imports made by files of
# this repository must stay inside it; what torch or timm import for themselves is theirs.
GUARDED_RUN = r"""
import builtins, runpy, sys
from pathlib import Path
repo = Path(sys.argv[1]).resolve()
environment = Path(sys.prefix).resolve()  # a venv inside the checkout holds torch's own files
allowed = set(sys.stdlib_module_names) | {"torch", "timm", "numpy", "cv2", "skimage", "onnx", "onnxruntime",
    "stereo_depth_ros", "stereo_devkit", "stereo_distill", "gpu_measure", "gpu_sections", "gpu_compare",
    "gpu_fixes", "upstream_rt_igev"}
original = builtins.__import__
def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__file__") or ""
    where = Path(importer).resolve() if importer else None
    if level == 0 and where and where.is_relative_to(repo) and not where.is_relative_to(environment):
        if name.partition(".")[0] not in allowed:
            raise ImportError(f"{importer} imports {name}, which a plain CUDA machine does not have")
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = guarded
sys.argv = [str(repo / "bench" / "gpu.py")] + sys.argv[2:]
sys.path.insert(0, str(repo / "bench"))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    if done.code:
        raise
forbidden = sorted(m for m in ("rclpy", "rosbags", "message_filters") if m in sys.modules)
assert not forbidden, f"imported {forbidden}"
"""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    done = subprocess.run([sys.executable, "-c", GUARDED_RUN, str(REPO), "--device", "cpu", "--quick", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "gpu_bench.json").read_text())


def table_rows(stdout):
    lines = stdout[stdout.index("| section |"):].splitlines()
    assert set(lines[1]) <= set("|-")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]


def test_quick_run_prints_one_table_and_the_same_rows_as_json(quick_run):
    stdout, report = quick_run
    rows = table_rows(stdout)
    assert len(rows) == len(report["rows"]) and stdout.count("| section |") == 1
    sections = [row["section"] for row in report["rows"]]
    for section, count in (("student", 12), ("budget", 3), ("pipeline", 1), ("warmup", 1), ("pool", 3),
                           ("device", 1), ("teacher", 2), ("training", 2), ("compile", 6)):
        assert sections.count(section) == count, section
    for cells, row in zip(rows, report["rows"], strict=True):
        assert cells[0] == row["section"] and cells[1] == row["size"] and cells[2] == row["precision"]
        if row["median_ms"] is not None:
            assert float(cells[5]) == pytest.approx(row["median_ms"], abs=0.006)
    students = [row for row in report["rows"] if row["section"] == "student"]
    assert {(r["size"], r["precision"], r["variant"]) for r in students} == {
        (size, precision, variant) for size in ("32x32", "32x64") for precision in ("fp32", "bf16", "fp16")
        for variant in ("eager", "cuda_graph")}
    for row in students:  # every configuration ran, and on the CPU all of them equal fp32 eager
        assert row["median_ms"] > 0 and row["rate"] == pytest.approx(1e3 / row["median_ms"])
        assert row["max_diff_px"] == 0.0 and row["rate_unit"] == "fps"
    assert all("CUDA graphs need inputs on a CUDA device" in r["note"]
               for r in students if r["variant"] == "cuda_graph")
    teacher, training = ([r for r in report["rows"] if r["section"] == s] for s in ("teacher", "training"))
    assert all(r["rate"] > 0 for r in teacher + training) and teacher[1]["mean_diff_px"] == 0.0
    (pipeline,) = [r for r in report["rows"] if r["section"] == "pipeline"]
    assert pipeline["median_ms"] > 0 and pipeline["note"] == "host post-processing"  # CPU: numpy outputs
    assert set(pipeline["extra"]["stage_ms_last_frame"]) >= {"estimate", "postprocess"}
    assert report["weights"] == "seeded init" and report["quick"] is True
    # issue 20's rows: what the CPU can run runs (warm-up at the camera size: nothing captured or allocated on
    # the frames after it); the rest says why it needs CUDA
    (warmup,) = [r for r in report["rows"] if r["section"] == "warmup"]
    assert warmup["size"] == "32x64->32x32" and warmup["median_ms"] > 0
    assert warmup["extra"]["captures_in_frames"] == 0 and warmup["extra"]["upload_allocations_in_frames"] == 0
    assert all(r["note"] == "CUDA graphs run on CUDA only" for r in report["rows"] if r["section"] == "pool")
    (device,) = [r for r in report["rows"] if r["section"] == "device"]
    assert device["note"] == "needs 2 CUDA devices (this machine has 0)"
    budget = [r for r in report["rows"] if r["section"] == "budget"]
    assert all(r["extra"]["captures_in_frames"] == 0 for r in budget)


@pytest.fixture()
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu  # bench/gpu.py
    import gpu_measure
    import gpu_sections
    return gpu, gpu_measure, gpu_sections


def test_time_guard_skips_rows_with_a_note(bench_modules):
    gpu, gpu_measure, gpu_sections = bench_modules
    import torch

    settings = gpu.quick_settings(torch.device("cpu"))
    times = iter([0.0] + [100.0] * 10)  # started at 0; the 60 s limit has passed before the first row
    deadline = gpu_measure.Deadline(60.0, clock=lambda: next(times))
    rows = []
    gpu_sections.teacher_section(settings, deadline, rows.append)
    assert [row.median_ms for row in rows] == [None, None]
    assert all(row.note.startswith("skipped by the time guard") for row in rows)


def test_bad_arguments_exit_2_with_one_line(bench_modules, tmp_path, capsys):
    gpu = bench_modules[0]
    assert gpu.main(["--device", "cpu", "--quick", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert gpu.main(["--device", "cpu", "--upstream", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--weights" in lines[0] and "IGEV-plusplus" in lines[1]


def test_isolated_row_child_writes_its_row(bench_modules, tmp_path):
    gpu = bench_modules[0]
    row_json = tmp_path / "row.json"
    assert gpu.main(["--device", "cpu", "--quick", "--isolated-row", "32x32", "fp32", "off",
                     "--row-json", str(row_json)]) == 0
    row = json.loads(row_json.read_text())
    assert (row["section"], row["size"], row["variant"], row["iters"]) == ("student", "32x32", "eager", 2)
    assert row["median_ms"] > 0
