"""How much time MLflow tracking adds to a run: the same run untracked and tracked, alternated
in one process, median wall and CPU times side by side and their ratios (the target is a ratio
<= 1.10 on sine; on a busy machine the CPU-time ratio is the steadier figure). The SQLite store
is created beforehand, so its one-off table creation is not counted; it is timed separately.

    python benchmarks/tracking_overhead.py [--family sine] [--steps 2000] [--repeats 5] [--aggregator ga]

Training metrics go to MLflow as means over windows of ``ceil(steps / 100)`` steps, sent in
batches (see :class:`gabench.tracking.MLflowTracker`); results.parquet keeps every step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gabench.config import RunConfig
from gabench.tracking import MLflowTracker
from gabench.trainer import Trainer


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
        Trainer.from_config(config, [MLflowTracker(uri, "warm-up")], progress=False).fit()
        plain, tracked, inside, plain_cpu, tracked_cpu = [], [], [], [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            Trainer.from_config(config, progress=False).fit()
            plain.append(time.perf_counter() - t0)
            plain_cpu.append(time.process_time() - c0)
            tracker = MLflowTracker(uri, "overhead")
            t0, c0 = time.perf_counter(), time.process_time()
            Trainer.from_config(config, [tracker], progress=False).fit()
            tracked.append(time.perf_counter() - t0)
            tracked_cpu.append(time.process_time() - c0)
            inside.append(tracker.seconds)
    mp, mt, mi, cp, ct = (statistics.median(v) for v in (plain, tracked, inside, plain_cpu, tracked_cpu))
    print(f"{args.family} {config.method}, {args.steps} steps, {args.repeats} alternated repeats "
          "after one tracked warm-up run (medians):")
    print(f"  untracked         {mp:.2f} s   {' '.join(f'{v:.2f}' for v in plain)}")
    print(f"  tracked           {mt:.2f} s   {' '.join(f'{v:.2f}' for v in tracked)}")
    print(f"  ratio             {mt / mp:.3f}   (tracked / untracked; per-pair median "
          f"{statistics.median(t / u for t, u in zip(tracked, plain, strict=True)):.3f})")
    print(f"  CPU time          untracked {cp:.2f} s, tracked {ct:.2f} s, ratio {ct / cp:.3f}")
    print(f"  inside tracker    {mi:.2f} s   ({100 * mi / mp:.1f}% of the untracked run)")
    print(f"  one-off creation of the SQLite store: {setup:.2f} s")


if __name__ == "__main__":
    main()
