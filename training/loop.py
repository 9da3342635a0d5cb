"""The whole distillation loop from one config file: rosbag -> extract -> label -> train -> eval -> export -> node.

    python -m stereo_distill.loop [--config config/distill.yaml] [--work-dir DIR] [--steps N]      (or: make loop)

Every stage is the `stereo-distill` subcommand a user would run by hand, called in-process with the arguments
printed before it runs, so the log doubles as the recipe. Stages resume (extract, label and train skip finished
work), so re-running the loop after an interruption continues.

Toy data (`bag: ""`): scikit-image's Motorcycle pair (Middlebury 2014, real and bundled). Training pairs are crops
from the upper band of rows, written as a real rosbag2; the held-out pairs are crops from the lower band, with
ground truth, which no training crop shares a scene point with (in a rectified pair a point keeps its row).

Teacher: the configured checkpoint (the official Selective-IGEV file) when it is present, else `sgbm`, the
classical OpenCV matcher with its left-right check: real geometry without weights. Student start: the official
RT-IGEV file when present, else a seeded random init (untrained). The printout and out/loop/report.json say which
ran and why, and measure teacher, student before and student after on the held-out pairs against ground truth.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NODE_NAME = "stereo_distill"


class LoopError(RuntimeError):
    pass


def _banner(text: str) -> None:
    line = "!" * 100
    print(f"\n{line}\n{text}\n{line}\n", file=sys.stderr, flush=True)


def _repo_path(configured: str) -> Path:
    path = Path(configured)
    return path if path.is_absolute() else REPO / path


def resolve_teacher(configured: str, fallback: str = "sgbm") -> tuple[str, str]:
    """(teacher source for `label --teacher`, why): the configured checkpoint when present, else `fallback`."""
    path = _repo_path(configured) if configured else None
    if path is not None and path.is_file():
        return str(path), f"{configured} is present"
    if fallback != "sgbm":
        raise LoopError(f"teacher {configured} not found and teacher.fallback is {fallback!r} (only 'sgbm' is "
                        "weight-free); see weights/README.md")
    return "sgbm", (f"{configured or 'no teacher checkpoint'} not found (see weights/README.md), so the classical "
                    "OpenCV SGBM matcher with its left-right check labels the pairs")


def resolve_student(configured: str) -> tuple[str, str, bool]:
    """(value for `train --student`, what it is, whether it is trained): the configured file, else 'none'.

    'none' is train's seeded random init (load_model seeds it): the same start on every machine, with or without
    ../shared. The seeded parity fixture (random weights too) is not used here: its BatchNorm statistics are
    perturbed, and BatchNorm2d stays frozen in training, so from it the same CPU budget taught the student less
    (held-out EPE 7.5 px after 300 steps vs 6.4 px after 200 from the seeded init).
    """
    path = _repo_path(configured) if configured else None
    if path is not None and path.is_file():
        return str(path), f"{configured} (the pretrained student)", True
    return "none", (f"a SEEDED RANDOM INIT ({configured} not found): an untrained RT-IGEV, the same on every "
                    "machine"), False


def _stage(name: str, argv: list[str], timings: dict[str, float]) -> None:
    from .cli import main

    print(f"\n=== {name}: stereo-distill {shlex.join(argv)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse rejected the arguments (already printed)
        rc = exit_.code if isinstance(exit_.code, int) else 2
    timings[name] = round(time.perf_counter() - start, 1)
    if rc != 0:
        raise LoopError(f"stage {name} failed (exit status {rc})")


def _toy_sets(params: dict[str, Any]) -> tuple[list, list]:
    """(training pairs, held-out pairs with ground truth): Motorcycle crops from two bands of rows."""
    from .toy import motorcycle_crops

    crop = tuple(params["toy.crop"])
    train = motorcycle_crops(crop, tuple(params["toy.scales"]), int(params["toy.crops_per_scale"]), seed=0,
                             rows=tuple(params["toy.train_rows"]))
    heldout = motorcycle_crops(crop, tuple(params["toy.heldout_scales"]), int(params["toy.heldout_crops_per_scale"]),
                               seed=1, rows=tuple(params["toy.heldout_rows"]), prefix="heldout")
    return train, heldout


def loop_report(teacher: str, evaluation: dict[str, Any], why: dict[str, str]) -> dict[str, Any]:
    """out/loop/report.json from the held-out evaluation (`eval --compare` output against ground truth)."""
    keys = ("epe", "bad1", "bad2", "bad3", "d1", "pairs", "valid_fraction", "reference", "model")

    def pick(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: metrics[k] for k in keys if k in metrics}

    teacher_m, before, after = (pick(evaluation["compare"]["teacher"]), pick(evaluation["compare"]["student_before"]),
                                pick(evaluation))
    gap = before["epe"] - teacher_m["epe"]
    return {
        "teacher": "sgbm" if teacher == "sgbm" else Path(teacher).name,
        "reference": evaluation["reference"],
        "teacher_metrics": teacher_m,
        "student_before": before,
        "student_after": after,
        "after_better_than_before": after["epe"] < before["epe"] and after["bad3"] < before["bad3"],
        # Share of the before->teacher EPE gap that distillation closed (1 = as good as the teacher).
        "gap_closed": round((before["epe"] - after["epe"]) / gap, 4) if gap > 0 else None,
        **why,
    }


def run_loop(params: dict[str, Any], work_dir: Path | None = None, steps: int | None = None) -> dict[str, Any]:
    from .toy import write_bag, write_data

    work = Path(work_dir or params.get("work_dir", "out/loop"))
    if not work.is_absolute():
        work = REPO / work
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    _limit_cpu_threads(params.get("cpu_threads", 0))
    teacher, teacher_why = resolve_teacher(params.get("teacher.checkpoint", ""), params.get("teacher.fallback", "sgbm"))
    student, student_what, student_trained = resolve_student(params.get("student.checkpoint", ""))
    summary: dict[str, Any] = {"work_dir": str(work), "teacher": teacher, "teacher_why": teacher_why,
                               "student_start": student_what}
    print(f"teacher: {'sgbm' if teacher == 'sgbm' else teacher} -- {teacher_why}", file=sys.stderr)
    if teacher != "sgbm" and not params.get("bag"):
        print("  note: middlebury_finetune.pth was trained on Middlebury (Motorcycle included) and InStereo2K, so "
              "its figures on these pairs are not an independent evaluation", file=sys.stderr)
    if not student_trained:
        _banner(f"STUDENT START: {student_what}.\nThe loop shows what distillation from the teacher's labels teaches "
                "it; with the official weights/sceneflow.pth the same commands refine a trained student.")
    else:
        print(f"student starts from: {student_what}", file=sys.stderr)

    # 1. the bag (training pairs) and the held-out pairs with ground truth
    bag = params.get("bag") or ""
    heldout = work / "heldout"
    if not bag:
        bag_dir = work / "bag"
        train_pairs, heldout_pairs = _toy_sets(params)
        start = time.perf_counter()
        if not (bag_dir / "metadata.yaml").is_file():
            write_bag(bag_dir, train_pairs, params["left_topic"], params["right_topic"],
                      storage=params.get("toy.storage", "sqlite3"))
        write_data(heldout, heldout_pairs, with_ground_truth=True)
        timings["toy_data"] = round(time.perf_counter() - start, 1)
        print(f"toy data: {len(train_pairs)} Motorcycle pairs (rows {params['toy.train_rows']}) in a rosbag2 "
              f"{bag_dir}; "
              f"{len(heldout_pairs)} held-out pairs with ground truth (rows {params['toy.heldout_rows']}) in {heldout}",
              file=sys.stderr)
        bag = str(bag_dir)
    elif params.get("heldout"):
        heldout = _repo_path(params["heldout"])
    else:
        raise LoopError("with your own bag, set `heldout` to a DATA folder of held-out pairs with ground truth "
                        "(left_disp.png), recorded apart from the bag")
    data, labels, run_dir, exports = work / "data", work / "labels", work / "run", work / "export"

    # 2. extract
    _stage("extract", ["extract", bag, "--left-topic", params["left_topic"], "--right-topic", params["right_topic"],
                       "--out", str(data), "--stride", str(params.get("extract_stride", 1))], timings)

    # 3. label (and its report + contact sheet: what a user looks at before training)
    if teacher == "sgbm":
        teacher_args = ["--max-disp", str(params["teacher.sgbm_max_disp"])]
        compare_args = ["--teacher-max-disp", str(params["teacher.sgbm_max_disp"])]
    else:
        teacher_args = ["--iters", str(params["teacher.iters"]), "--max-disp", str(params["teacher.max_disp"])]
        compare_args = ["--teacher-iters", str(params["teacher.iters"]),
                        "--teacher-max-disp", str(params["teacher.max_disp"])]
    _stage("label", ["label", str(data), "--teacher", teacher, "--out", str(labels), *teacher_args], timings)
    summary["contact_sheet"] = str(labels / "contact_sheet.png")
    summary["label_report"] = str(labels / "report.json")

    # 4. train
    seed, val_fraction = str(params["train.seed"]), str(params["train.val_fraction"])
    train_argv = [
        "--data", str(data), "--labels", str(labels), "--student", student, "--out", str(run_dir),
        "--steps", str(steps or params["train.steps"]), "--batch-size", str(params["train.batch_size"]),
        "--accumulate", str(params["train.accumulate"]), "--crop", *map(str, params["train.crop"]),
        "--train-iters", str(params["train.train_iters"]), "--valid-iters", str(params["student.iters"]),
        "--lr", str(params["train.lr"]), "--save-every", str(params["train.save_every"]),
        "--val-fraction", val_fraction, "--seed", seed, "--precision", params["train.precision"],
        "--workers", str(params["train.workers"]), "--val-every", str(params["train.save_every"]), "--log-every", "10",
    ]
    _stage("train", ["train", *train_argv], timings)
    last = run_dir / "checkpoints" / "last.pth"
    before = student if student != "none" else _seeded_student(work)

    # 5. evaluate teacher, student before and after on the held-out pairs against ground truth
    import torch

    # Without CUDA, keep onnxruntime on its CPU provider (no GPU-provider fallback noise).
    device = ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    iters = ["--iters", str(params["student.iters"])]
    _stage("eval_heldout", ["eval", "--model", str(last), "--data", str(heldout), "--reference", "ground_truth",
                            *iters, *device, "--compare", teacher, before, *compare_args,
                            "--out", str(work / "eval_heldout.json")], timings)
    evaluation = json.loads((work / "eval_heldout.json").read_text())
    # ...and the student against its teacher's labels on the training set's own held-out split.
    split = ["--split", "val", "--seed", seed, "--val-fraction", val_fraction]
    _stage("eval_labels", ["eval", "--model", str(last), "--data", str(data), "--labels", str(labels),
                           "--reference", "labels", *split, *iters, *device, "--out", str(work / "eval_labels.json")],
           timings)

    # 6. export (one file per precision) and 7. run the export through the node's estimator
    precisions = params["export.precision"]
    precisions = [precisions] if isinstance(precisions, str) else list(precisions)
    onnx_files = {}
    for precision in precisions:
        onnx_path = exports / f"rt_igev_distilled_{precision}.onnx"
        _stage(f"export_{precision}", [
            "export", "--model", str(last), "--out", str(onnx_path), "--iters", str(params["student.iters"]),
            "--height", str(params["export.height"]), "--width", str(params["export.width"]),
            "--precision", precision,
        ], timings)
        onnx_files[precision] = str(onnx_path)
    _stage("eval_onnx", ["eval", "--model", onnx_files[precisions[0]], "--data", str(heldout),
                         "--reference", "ground_truth", *device, "--out", str(work / "eval_onnx.json")], timings)
    node_params = _write_node_params(work, onnx_files[precisions[0]], params)

    from stereo_depth_ros.atomic_io import atomic_write_json

    report = loop_report(teacher, evaluation, {"teacher_why": teacher_why, "student_start": student_what})
    report["timings_s"] = timings
    atomic_write_json(work / "report.json", report)
    summary.update(timings_s=timings, report=report, onnx=onnx_files, checkpoint=str(last), node_params=node_params,
                   labels_metrics=json.loads((work / "eval_labels.json").read_text()),
                   onnx_metrics=json.loads((work / "eval_onnx.json").read_text()))
    summary["labels_metrics"].pop("per_pair", None)
    summary["onnx_metrics"].pop("per_pair", None)
    _print_summary(summary)
    atomic_write_json(work / "summary.json", summary)
    return summary


def _limit_cpu_threads(threads: int) -> None:
    """torch's intra-op threads for the in-process stages when there is no GPU (0 = torch's default).

    On a small machine shared with other jobs, one thread is far faster than two: OpenMP's worker threads wait
    for each other at every parallel region, and a descheduled one stalls them all (measured on 2 cores at load
    average 7-9: 1.3 s per training step with one thread, 10-37 s with two)."""
    import torch

    if threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(int(threads))
        print(f"CPU threads: {threads} (config cpu_threads)", file=sys.stderr)


def _seeded_student(work: Path) -> str:
    """The seeded init `train --student none` starts from (load_model seeds it), saved so that eval can measure
    it as "before"."""
    from stereo_depth_ros.models import load_model, save_checkpoint

    path = work / "student_seeded_init.pth"
    if not path.is_file():
        save_checkpoint(path, load_model("rt_igev"))
    return str(path)


def _write_node_params(work: Path, onnx_file: str, params: dict[str, Any]) -> str:
    """A params file that runs stereo_depth_node on the export (ros2 launch ... params_file:=<this>)."""
    import yaml

    from stereo_depth_ros.atomic_io import atomic_write_bytes

    node = {"stereo_depth_node": {"ros__parameters": {
        "backend": "onnxruntime", "model": "rt_igev", "model_path": onnx_file,
        "input_width": int(params["export.width"]), "input_height": int(params["export.height"]),
    }}}
    path = work / "node_params.yaml"
    atomic_write_bytes(path, yaml.safe_dump(node, sort_keys=False).encode())
    return str(path)


def _print_summary(summary: dict[str, Any]) -> None:
    report = summary["report"]
    out = sys.stderr
    print("\n=== distillation loop summary", file=out)
    print(f"teacher: {report['teacher']} -- {report['teacher_why']}", file=out)
    print(f"student started from: {report['student_start']}", file=out)
    print(f"held-out pairs: {report['teacher_metrics']['pairs']} (never trained on), reference: {report['reference']}",
          file=out)
    for label, key in (("teacher", "teacher_metrics"), ("student before", "student_before"),
                       ("student after", "student_after")):
        r = report[key]
        print(f"  {label:<16} EPE {r['epe']:8.3f} px  bad3 {r['bad3']:.4f}  bad1 {r['bad1']:.4f}  D1 {r['d1']:.4f}",
              file=out)
    verdict = "better" if report["after_better_than_before"] else "NOT better"
    closed = f"; it closed {report['gap_closed']:.0%} of the EPE gap to its teacher" if report["gap_closed"] else ""
    print(f"  -> after distillation the student is {verdict} than before{closed}", file=out)
    labels = summary["labels_metrics"]
    print(f"student vs its teacher's labels (val split of the training set): EPE {labels['epe']:.3f} px, "
          f"bad3 {labels['bad3']:.4f} ({labels['pairs']} pairs)", file=out)
    onnx = summary["onnx_metrics"]
    print(f"ONNX export on the held-out pairs: EPE {onnx['epe']:.3f} px, bad3 {onnx['bad3']:.4f}", file=out)
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()), file=out)
    print(f"label contact sheet: {summary['contact_sheet']}", file=out)
    print(f"report: {Path(summary['work_dir']) / 'report.json'}", file=out)
    print(f"node-ready ONNX: {summary['onnx']}\n  ros2 launch stereo_depth_ros stereo.launch.py "
          f"params_file:={summary['node_params']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stereo_distill.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "distill.yaml"), help="params file")
    parser.add_argument("--work-dir", default=None, help="override work_dir")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    args = parser.parse_args(argv)
    from stereo_depth_ros.config import ConfigError, load_params_file

    try:
        params = load_params_file(args.config, NODE_NAME)
        summary = run_loop(params, Path(args.work_dir) if args.work_dir else None, args.steps)
    except (ConfigError, LoopError, KeyError) as error:
        print(f"stereo_distill.loop: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("work_dir", "onnx", "timings_s", "teacher", "student_start")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
