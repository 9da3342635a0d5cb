"""`stereo-distill`: the offline distillation command line.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. Only the module of
the subcommand being run is imported, so `stereo-distill extract` does not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "record": (".record", "record stereo topics + camera_info into a rosbag2 without `ros2 bag` (rclpy)"),
    "extract": (".extract", "extract synchronised stereo pairs from a rosbag2 (sqlite3 or mcap) into DATA"),
    "label": (".label",
              "pseudo-label DATA with a teacher: a checkpoint, an ONNX export or sgbm (resumable, shardable)"),
    "train": (".train", "distil the RT-IGEV student on teacher labels (resumable)"),
    "eval": (".evaluate", "EPE / D1 / bad-N of a checkpoint or ONNX file on DATA"),
    "export": (".export", "export the student to ONNX and verify it against PyTorch"),
}


class CliError(Exception):
    """Bad input that the user can fix: printed as one line, exit status 2."""

    exit_status = 2


class WorkError(CliError):
    """Damage found part-way through the work (an unreadable bag region, image or checkpoint): printed as one
    line, exit status 1; what was done before it is kept, and re-running resumes."""

    exit_status = 1


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser of `command` (every subcommand's when None); the others are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="stereo-distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name, __package__)
        sub_parser = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    # An unknown or missing command still gets argparse's own message and the list of commands.
    args = build_parser(command if command in SUBCOMMANDS else "").parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except CliError as error:
        print(f"stereo-distill {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"stereo-distill {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Through the package import, so that CliError raised by the subcommand modules is this module's CliError
    # (under `python -m` this file would otherwise be loaded twice, as __main__ and as stereo_distill.cli).
    from .cli import main as _main

    sys.exit(_main())
