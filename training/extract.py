"""Extract synchronised stereo pairs from a rosbag2 (sqlite3 or mcap) into DATA/<sample>/left.png, right.png.

Left and right frames are paired by header stamp (mutual nearest within --tolerance seconds); a frame without a
partner is skipped and counted. Samples are named `<pair index:06d>_<left stamp ns>`, so the same bag and options
always give the same names, and re-running the command skips samples already on disk. Each sample also gets a
small meta.json (both stamps, topics, encodings). The camera_info of both cameras (the topics beside the image
topics, or --left-info-topic/--right-info-topic) is saved as DATA/camera_info.yaml.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_json

from .bag_reader import (CAMERA_INFO_TYPE, IMAGE_TYPES, BagReadError, Pair, find_connections, iterate_messages,
                         match_frames, message_to_rgb, open_reader, scan_stamps, sibling_info_topic)
from .cli import CliError, WorkError

SAMPLE_FILES = ("left.png", "right.png", "meta.json")  # meta.json is written last: its presence marks completion


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 folder (metadata.yaml + .db3 or .mcap)")
    parser.add_argument("--left-topic", required=True, help="left image topic (sensor_msgs/Image or CompressedImage)")
    parser.add_argument("--right-topic", required=True, help="right image topic")
    parser.add_argument("--out", type=Path, default=Path("data"), metavar="DATA", help="output folder (default: data)")
    parser.add_argument("--stride", type=int, default=1, help="keep every N-th matched pair (default: 1)")
    parser.add_argument("--limit", type=int, default=0, help="stop after N pairs (after --stride; 0 = all)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="largest left/right header stamp difference in seconds for a pair (default: 0.005)")
    parser.add_argument("--left-info-topic", default=None,
                        help="left sensor_msgs/CameraInfo topic (default: the camera_info topic beside --left-topic)")
    parser.add_argument("--right-info-topic", default=None,
                        help="right CameraInfo topic (default: beside --right-topic)")


def sample_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SAMPLE_FILES)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stereo_depth_ros.dataset_layout import camera_info_to_dict, read_camera_info, write_camera_info, write_image

    if args.stride < 1:
        raise CliError(f"--stride must be >= 1, got {args.stride}")
    if args.limit < 0:
        raise CliError(f"--limit must be >= 0, got {args.limit}")
    if args.tolerance < 0:
        raise CliError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.left_topic == args.right_topic:
        raise CliError("--left-topic and --right-topic are the same topic")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    started = time.monotonic()

    reader = open_reader(args.bag)
    try:
        left_conns = find_connections(reader, args.left_topic, IMAGE_TYPES, "left")
        right_conns = find_connections(reader, args.right_topic, IMAGE_TYPES, "right")
        info_topics = {
            "left": args.left_info_topic or sibling_info_topic(reader, args.left_topic),
            "right": args.right_info_topic or sibling_info_topic(reader, args.right_topic),
        }
        info_conns = {}
        for side, topic in info_topics.items():
            if topic is not None:
                explicit = getattr(args, f"{side}_info_topic") is not None
                conns = find_connections(reader, topic, (CAMERA_INFO_TYPE,), f"{side} camera_info") if explicit else [
                    c for c in reader.connections if c.topic == topic]
                info_conns[side] = conns[0]

        left_frames, right_frames, infos, scan_error = scan_stamps(reader, args.bag, left_conns, right_conns,
                                                                   info_conns)
        pairs = match_frames(left_frames, right_frames, round(args.tolerance * 1e9))
        unmatched_left = len(left_frames) - len(pairs)
        unmatched_right = len(right_frames) - len(pairs)
        selected = pairs[:: args.stride]
        if args.limit:
            selected = selected[: args.limit]
        if not selected:
            raise CliError(
                f"no stereo pairs in {args.bag}: {len(left_frames)} left and {len(right_frames)} right frames, none "
                f"within --tolerance {args.tolerance} s of each other"
                + (f" ({scan_error})" if scan_error else "")
            )

        out.mkdir(parents=True, exist_ok=True)
        if {"left", "right"} <= set(infos):
            _save_camera_info(out, camera_info_to_dict(infos["left"]), camera_info_to_dict(infos["right"]),
                              read_camera_info, write_camera_info)

        todo = [p for p in selected if not sample_complete(out / p.name)]
        by_left = {p.left.index: p for p in todo}
        by_right = {p.right.index: p for p in todo}
        left_ids = {c.id for c in left_conns}
        pending: dict[int, dict[str, tuple[np.ndarray | None, object]]] = {}
        counters = {"left": 0, "right": 0}
        written = 0
        failures: list[str] = []
        progress = tqdm(total=len(todo), desc="extract", unit="pair", disable=None, file=sys.stderr)
        read_error = None
        try:
            if todo:
                for connection, msg in iterate_messages(reader, [*left_conns, *right_conns], args.bag):
                    side = "left" if connection.id in left_ids else "right"
                    index = counters[side]
                    counters[side] += 1
                    pair = (by_left if side == "left" else by_right).get(index)
                    if pair is None:
                        continue
                    halves = pending.setdefault(pair.index, {})
                    try:
                        halves[side] = (message_to_rgb(msg, connection.msgtype), msg)
                    except ValueError as error:  # ImageConversionError is a ValueError
                        halves[side] = (None, f"{side} frame {index} of {connection.topic}: {error}")
                    if len(halves) < 2:
                        continue
                    del pending[pair.index]
                    problem = _write_sample(out / pair.name, pair, halves, args, write_image)
                    if problem:
                        failures.append(f"{pair.name}: {problem}")
                        print(f"extract: skipping pair {pair.name}: {problem}", file=sys.stderr)
                    else:
                        written += 1
                    progress.update(1)
                    if written + len(failures) == len(todo):
                        break  # the rest of the bag holds nothing we need
        except BagReadError as error:
            read_error = str(error)
        finally:
            progress.close()
    finally:
        reader.close()

    skipped = len(selected) - len(todo)
    summary = (
        f"{written} pairs written, {skipped} already present, {len(failures)} failed, {len(pairs)} matched in total "
        f"({unmatched_left} left and {unmatched_right} right frames unmatched), "
        f"camera_info {'saved' if {'left', 'right'} <= set(infos) else 'not found'}, "
        f"{time.monotonic() - started:.1f} s -> {out}"
    )
    print(summary, file=sys.stderr)
    damage = read_error or scan_error
    if damage:
        raise WorkError(f"{damage}; the {written + skipped} pairs read before the damage are complete in {out}; "
                        "re-run on a repaired bag to add the rest")
    # Unconvertible frames do not stop the run, but the exit status tells a script that some pairs are missing.
    return 1 if failures else 0


def _write_sample(folder: Path, pair: Pair, halves: dict, args, write_image) -> str | None:
    """Write one sample; returns why it cannot be written (unconvertible frame, size mismatch) or None."""
    (left, left_msg), (right, right_msg) = halves["left"], halves["right"]
    if folder.is_dir():  # temporary files of a killed run (atomic_io names them .<stem>.*.partial.*)
        for stale in folder.glob(".*.partial*"):
            stale.unlink(missing_ok=True)
    for image, problem in ((left, left_msg), (right, right_msg)):
        if image is None:
            return problem
    if left.shape != right.shape:
        return f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x{right.shape[0]} differ in size"
    write_image(folder / "left.png", left)
    write_image(folder / "right.png", right)
    meta = {
        "left_stamp_ns": pair.left.stamp_ns,
        "right_stamp_ns": pair.right.stamp_ns,
        "left_topic": args.left_topic,
        "right_topic": args.right_topic,
        "left_frame_id": str(left_msg.header.frame_id),
        "right_frame_id": str(right_msg.header.frame_id),
        "encoding": getattr(left_msg, "encoding", None) or getattr(left_msg, "format", None),
        "bag": args.bag.resolve().name,
    }
    atomic_write_json(folder / "meta.json", meta)
    return None


def _save_camera_info(out: Path, left: dict, right: dict, read_camera_info, write_camera_info) -> None:
    path = out / "camera_info.yaml"
    if path.exists():
        old_left, old_right = read_camera_info(path)
        if (old_left, old_right) != (left, right):
            raise CliError(f"{path} holds a different calibration than this bag; extract into another --out folder")
        return
    write_camera_info(path, left, right)


__all__ = ["add_arguments", "run"]
