"""How much time MLflow tracking adds to a run: the same run untracked, tracked, and tracked
without the PNG figures (``MLflowTracker(plots=False)``), interleaved in one process, median wall
and CPU times side by side and their ratios (the target is a ratio <= 1.10 on sine; on a busy
machine the CPU-time ratio is the steadier figure, and the CPU time spent inside the tracker's
hooks, as a share of the untracked run, the steadiest). The SQLite store is created beforehand,
so its one-off table creation is not counted; it is timed separately.

    python benchmarks/tracking_overhead.py [--family sine] [--steps 2000] [--repeats 5] [--aggregator ga]

Training metrics go to MLflow as means over windows of ``ceil(steps / 100)`` steps (runs of equal
values as their first and last points), sent in batches (see :class:`gabench.tracking.MLflowTracker`);
results.parquet keeps every step.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from gabench.config import RunConfig
from gabench.tracking import MLflowTracker
from gabench.trainer import Trainer


class TimedTracker(MLflowTracker):
    """The tracker with the CPU time of its hooks added up in ``cpu`` (``time.process_time``, which
    counts every thread of the process: on_end waits for its sending thread). Whole-run times on
    a loaded machine move by several percent from one run to the next; this is the tracker's
    own cost, measured where it is spent."""

    cpu = 0.0

    def _timed(self, hook: str, *args: object) -> None:
        c0 = time.process_time()
        getattr(super(), hook)(*args)
        self.cpu += time.process_time() - c0

    def on_start(self, trainer: object) -> None:
        self._timed("on_start", trainer)

    def on_train_log(self, steps: object, metrics: object) -> None:
        self._timed("on_train_log", steps, metrics)

    def on_eval(self, step: object, split: object, summary: object) -> None:
        self._timed("on_eval", step, split, summary)

    def on_end(self, result: object) -> None:
        self._timed("on_end", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="sine")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--aggregator", default="mean", help="mean (the default run) or ga")
    args = p.parse_args()
    config = RunConfig(family=args.family, steps=args.steps, eval_every=max(1, args.steps // 5),
                       aggregator=args.aggregator)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        try:
            from gabench.tracking import tracking_client
        except ImportError:  # older gabench, to measure "before" with this script
            from mlflow import MlflowClient as tracking_client
        tracking_client(uri).search_experiments()  # creates the tables
        setup = time.perf_counter() - t0
        # older gabench (before the constructor took a RunConfig) builds it with Trainer.from_config
        make_trainer = getattr(Trainer, "from_config", Trainer)
        make_trainer(config, [MLflowTracker(uri, "warm-up")], progress=False).fit()
        variants = {"untracked": None, "tracked": {}, "tracked, no PNGs": {"plots": False}}
        if "plots" not in inspect.signature(MLflowTracker).parameters:  # older gabench
            del variants["tracked, no PNGs"]
        wall: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        inside: dict[str, list[float]] = {k: [] for k in variants}
        hooks_cpu: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.repeats):
            k = r % len(names)  # rotated order: a trend in the load cancels
            for name in names[k:] + names[:k]:
                kwargs = variants[name]
                tracker = None if kwargs is None else TimedTracker(uri, "overhead", **kwargs)
                t0, c0 = time.perf_counter(), time.process_time()
                make_trainer(config, [tracker] if tracker else [], progress=False).fit()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                inside[name].append(tracker.seconds if tracker else 0.0)
                hooks_cpu[name].append(tracker.cpu if tracker else 0.0)
    med = statistics.median
    base_wall, base_cpu = med(wall["untracked"]), med(cpu["untracked"])
    print(f"{args.family} {config.method}, {args.steps} steps, {args.repeats} interleaved repeats "
          "(rotated order) after one tracked warm-up run (medians; ratios over the untracked run):")
    for name in variants:
        pairs = statistics.median(t / u for t, u in zip(wall[name], wall["untracked"], strict=True))
        print(f"  {name:17s} wall {med(wall[name]):.2f} s (ratio {med(wall[name]) / base_wall:.3f}, "
              f"per-pair median {pairs:.3f}), CPU {med(cpu[name]):.2f} s (ratio "
              f"{med(cpu[name]) / base_cpu:.3f}), inside the tracker {med(inside[name]):.2f} s wall, "
              f"{med(hooks_cpu[name]):.3f} s CPU ({100 * med(hooks_cpu[name]) / base_cpu:.1f}% of "
              "the untracked run's CPU)")
        print(f"  {'':17s} wall s: {' '.join(f'{v:.2f}' for v in wall[name])}")
    print(f"  one-off creation of the SQLite store: {setup:.2f} s")


if __name__ == "__main__":
    main()
