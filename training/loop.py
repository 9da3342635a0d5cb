"""The whole distillation loop from one config file: rosbag -> extract -> label -> train -> eval -> export -> node.

    python -m stereo_distill.loop [--config config/distill.yaml] [--work-dir DIR] [--steps N]      (or: make loop)

Every stage is the `stereo-distill` subcommand a user would run by hand, called in-process with the arguments
printed before it runs, so the log doubles as the recipe. Stages resume (extract, label and train skip finished
work), so re-running the loop after an interruption continues. With `bag: ""` a toy bag is written from
scikit-image's Motorcycle pair (crops at several scales; its ground truth is added to DATA afterwards so that the
evaluation can also be read against ground truth). When weights/ lacks the official checkpoints, the seeded
parity fixtures in ../shared/parity stand in for them: the loop still runs end to end, but the teacher's labels
and every metric are then those of random networks, and the output says so.
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
PARITY = REPO.parent / "shared" / "parity"
NODE_NAME = "stereo_distill"


class LoopError(RuntimeError):
    pass


def _banner(text: str) -> None:
    line = "!" * 100
    print(f"\n{line}\n{text}\n{line}\n", file=sys.stderr, flush=True)


def _resolve_weights(configured: str, model: str) -> tuple[str, bool]:
    """(checkpoint path, is_stand_in): the configured file, else the parity fixture of that network."""
    path = Path(configured)
    if not path.is_absolute():
        path = REPO / path
    if path.is_file():
        return str(path), False
    fixture = PARITY / model / "weights.pth"
    if not fixture.is_file():
        raise LoopError(f"{path} not found and no stand-in fixture at {fixture}; see weights/README.md")
    return str(fixture), True


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


def _add_ground_truth(data: Path, pairs) -> int:
    """Extracted samples are named <pair index>_<stamp> in bag order: give each its Motorcycle ground truth."""
    from .datasets import write_scaled_disparity_png

    folders = sorted(p for p in data.iterdir() if p.is_dir() and (p / "left.png").is_file())
    added = 0
    for folder in folders:
        index = int(folder.name.split("_")[0])
        if index < len(pairs) and not (folder / "left_disp.png").is_file():
            write_scaled_disparity_png(folder / "left_disp.png", pairs[index].disp, 100.0)
            added += 1
    return added


def run_loop(params: dict[str, Any], work_dir: Path | None = None, steps: int | None = None) -> dict[str, Any]:
    from .toy import motorcycle_crops, write_bag

    work = Path(work_dir or params.get("work_dir", "out/loop"))
    if not work.is_absolute():
        work = REPO / work
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"work_dir": str(work), "stand_in_weights": []}

    teacher_ckpt, teacher_stand_in = _resolve_weights(params["teacher.checkpoint"], "selective_igev")
    student_ckpt, student_stand_in = _resolve_weights(params["student.checkpoint"], "rt_igev")
    for who, stand_in, path in (("teacher", teacher_stand_in, teacher_ckpt), ("student", student_stand_in, student_ckpt)):
        if stand_in:
            summary["stand_in_weights"].append(who)
            _banner(f"STAND-IN WEIGHTS: no official {who} checkpoint ({params[who + '.checkpoint']}); using the SEEDED "
                    f"PARITY FIXTURE {path}.\nThe loop runs end to end, but labels and metrics are those of a random "
                    "network, not of the published model. See weights/README.md for the real files.")

    # 1. the bag
    bag = params.get("bag") or ""
    toy_pairs = None
    if not bag:
        bag_dir = work / "bag"
        toy_pairs = motorcycle_crops(tuple(params["toy.crop"]), tuple(params["toy.scales"]),
                                     int(params["toy.crops_per_scale"]), seed=0)
        if not (bag_dir / "metadata.yaml").is_file():
            start = time.perf_counter()
            write_bag(bag_dir, toy_pairs, params["left_topic"], params["right_topic"],
                      storage=params.get("toy.storage", "sqlite3"))
            timings["toy_bag"] = round(time.perf_counter() - start, 1)
            print(f"wrote a toy rosbag2 with {len(toy_pairs)} Motorcycle pairs: {bag_dir}", file=sys.stderr)
        bag = str(bag_dir)
    data, labels, run_dir, exports = work / "data", work / "labels", work / "run", work / "export"

    # 2. extract
    _stage("extract", ["extract", bag, "--left-topic", params["left_topic"], "--right-topic", params["right_topic"],
                       "--out", str(data), "--stride", str(params.get("extract_stride", 1))], timings)
    if toy_pairs is not None:
        _add_ground_truth(data, toy_pairs)

    # 3. label
    _stage("label", ["label", str(data), "--teacher", teacher_ckpt, "--out", str(labels),
                     "--iters", str(params["teacher.iters"]), "--max-disp", str(params["teacher.max_disp"])], timings)

    # 4. train
    seed, val_fraction = str(params["train.seed"]), str(params["train.val_fraction"])
    train_argv = [
        "--data", str(data), "--labels", str(labels), "--student", student_ckpt, "--out", str(run_dir),
        "--steps", str(steps or params["train.steps"]), "--batch-size", str(params["train.batch_size"]),
        "--accumulate", str(params["train.accumulate"]), "--crop", *map(str, params["train.crop"]),
        "--train-iters", str(params["train.train_iters"]), "--valid-iters", str(params["student.iters"]),
        "--lr", str(params["train.lr"]), "--save-every", str(params["train.save_every"]),
        "--val-fraction", val_fraction, "--seed", seed, "--precision", params["train.precision"],
        "--workers", str(params["train.workers"]), "--val-every", str(params["train.save_every"]), "--log-every", "1",
    ]
    _stage("train", ["train", *train_argv], timings)
    last = run_dir / "checkpoints" / "last.pth"

    # 5. evaluate student after vs before vs teacher on the held-out pairs, against labels and ground truth
    results = {}
    import torch

    # Without CUDA, keep onnxruntime on its CPU provider (no GPU-provider fallback noise).
    device = ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    split = ["--split", "val", "--seed", seed, "--val-fraction", val_fraction, "--iters", str(params["student.iters"]),
             *device]
    references = ["labels"] + (["ground_truth"] if toy_pairs is not None else [])
    for reference in references:
        out_json = work / f"eval_{reference}.json"
        _stage(f"eval_{reference}", [
            "eval", "--model", str(last), "--data", str(data), "--labels", str(labels), "--reference", reference,
            *split, "--compare", teacher_ckpt, student_ckpt, "--teacher-iters", str(params["teacher.iters"]),
            "--teacher-max-disp", str(params["teacher.max_disp"]), "--out", str(out_json),
        ], timings)
        results[reference] = json.loads(out_json.read_text())

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
    _stage("eval_onnx", ["eval", "--model", onnx_files[precisions[0]], "--data", str(data), "--labels", str(labels),
                         "--reference", "labels", *split, "--out", str(work / "eval_onnx.json")], timings)
    results["onnx_" + precisions[0]] = json.loads((work / "eval_onnx.json").read_text())
    node_params = _write_node_params(work, onnx_files[precisions[0]], params)

    summary.update(timings_s=timings, metrics=results, onnx=onnx_files, checkpoint=str(last), node_params=node_params)
    _print_summary(summary)
    from stereo_depth_ros.atomic_io import atomic_write_json

    atomic_write_json(work / "summary.json", summary)
    return summary


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
    print("\n=== distillation loop summary", file=sys.stderr)
    if summary["stand_in_weights"]:
        print(f"!!! STAND-IN (seeded parity fixture) weights for: {', '.join(summary['stand_in_weights'])} !!!",
              file=sys.stderr)
    for reference, res in summary["metrics"].items():
        if reference.startswith("onnx"):
            print(f"{reference:<14} EPE {res['epe']:.3f} px  D1 {res['d1']:.4f}  ({res['pairs']} pairs, vs labels)",
                  file=sys.stderr)
            continue
        rows = [("teacher", res["compare"]["teacher"]), ("student before", res["compare"]["student_before"]),
                ("student after", res)]
        print(f"held-out pairs: {res['pairs']}, reference: {reference}", file=sys.stderr)
        for label, r in rows:
            print(f"  {label:<16} EPE {r['epe']:8.3f} px  D1 {r['d1']:.4f}  bad1 {r['bad1']:.4f}  bad3 {r['bad3']:.4f}",
                  file=sys.stderr)
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()), file=sys.stderr)
    print(f"node-ready ONNX: {summary['onnx']}\n  ros2 launch stereo_depth_ros stereo.launch.py "
          f"params_file:={summary['node_params']}", file=sys.stderr)


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
    print(json.dumps({k: summary[k] for k in ("work_dir", "onnx", "timings_s", "stand_in_weights")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
