"""The latency budget on a synthetic cost, frame by frame: spikes, a thermal drift, and the way back.

    .venv/bin/python bench/budget.py                                   # this checkout's latency_budget
    git show main:stereo_depth_ros/inference/latency_budget.py > old_budget.py
    .venv/bin/python bench/budget.py --compare-with old_budget.py  # an older version beside it

The cost is the one of issue 20: a frame of k iterations takes (20 + k) ms times a drift factor, plus a one-off
spike; the budget is 26 ms and at most 8 iterations run, so 6 is the right count while the cost is nominal. The
estimator's warm-up is reproduced (the full count and one iteration measured before the first frame), then:
frame 20 carries the spike (--spike, ms); frames 60-99 drift the cost up by 10 % (thermal throttling: 3
iterations fit), 100-139 hold it, 140-179 drift back, 180 on are nominal again. `ideal` is the largest count that
fits the true cost of that frame. Needs only this module (no torch); prints a markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_MS, MAX_ITERATIONS, FRAMES, SPIKE_FRAME = 26.0, 8, 240, 20
SHOWN = [*range(18, 27), *range(60, 240, 10), 239]


def drift(frame: int) -> float:
    """The cost factor of a frame: nominal, up 10 % over frames 60-99, held, down over 140-179, nominal."""
    if frame < 60 or frame >= 180:
        return 1.0
    if frame < 100:
        return 1.0 + 0.1 * (frame - 60) / 40
    if frame < 140:
        return 1.1
    return 1.1 - 0.1 * (frame - 140) / 40


def true_cost(iterations: int, frame: int) -> float:
    return (20.0 + iterations) * drift(frame)


def ideal(frame: int) -> int:
    """The largest count whose true cost fits the budget (1 when none does)."""
    return max(1, min(MAX_ITERATIONS, math.floor(BUDGET_MS / drift(frame) - 20.0 + 1e-9)))


@dataclass
class Frame:
    frame: int
    iterations: int
    probe: bool
    elapsed_ms: float


def simulate(budget: ModuleType, spike_ms: float = 0.0, frames: int = FRAMES) -> list[Frame]:
    """Run `budget` (a latency_budget module: IterationCostModel.observe, choose_iterations) over the scenario."""
    model = budget.IterationCostModel()
    for count in (MAX_ITERATIONS, 1):  # what TorchEstimator.warmup measures when a budget is set
        model.observe(count, true_cost(count, -1))
    result = []
    for frame in range(frames):
        choice = budget.choose_iterations(model, BUDGET_MS, MAX_ITERATIONS)
        elapsed = true_cost(choice.iterations, frame) + (spike_ms if frame == SPIKE_FRAME else 0.0)
        model.observe(choice.iterations, elapsed)
        result.append(Frame(frame, choice.iterations, bool(getattr(choice, "probe", False)), elapsed))
    return result


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"latency_budget_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spike", type=float, default=120.0, help="ms added to frame 20 (default 120)")
    parser.add_argument("--compare-with", default=None, help="another latency_budget.py, shown as 'before'")
    args = parser.parse_args(argv)
    from stereo_depth_ros.inference import latency_budget

    runs = {"this": simulate(latency_budget, args.spike)}
    if args.compare_with:
        if not Path(args.compare_with).is_file():
            print(f"error: --compare-with {args.compare_with} is not a file", file=sys.stderr)
            return 2
        runs = {"before": simulate(load_module(args.compare_with), args.spike), "after": runs["this"]}
    names = list(runs)
    print(f"budget {BUDGET_MS:g} ms, at most {MAX_ITERATIONS} iterations, cost (20 + k) ms x drift, "
          f"+{args.spike:g} ms at frame {SPIKE_FRAME}; p = probe\n")
    print("| frame | cost x | ideal | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for frame in SHOWN:
        cells = [f"{runs[n][frame].iterations}{' p' if runs[n][frame].probe else ''}" for n in names]
        spike = f" +{args.spike:g} ms" if frame == SPIKE_FRAME else ""
        print(f"| {frame} | {drift(frame):.3f}{spike} | {ideal(frame)} | " + " | ".join(cells) + " |")
    for name in names:
        frames = [f for f in runs[name] if f.frame != SPIKE_FRAME]
        off = sum(f.iterations != ideal(f.frame) and not f.probe for f in frames)
        over = [f.elapsed_ms - BUDGET_MS for f in frames if f.elapsed_ms > BUDGET_MS * 1.001 and not f.probe]
        probes = sum(f.probe for f in frames)
        print(f"\n{name}: {off} of {len(frames)} frames (the spike's aside) not at the ideal count, "
              f"{sum(f.iterations for f in frames)} iterations run in all; {len(over)} over budget "
              f"(by {max(over, default=0.0):.2f} ms at most), {probes} probes", end="")
    print(f"\nideal: {sum(ideal(f) for f in range(FRAMES) if f != SPIKE_FRAME)} iterations in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
