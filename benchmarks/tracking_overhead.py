"""How much time MLflow tracking adds to a run: the same run with and without the tracker,
alternated, medians and their ratio (a SQLite store created beforehand, so its one-off table
creation is not counted; it is timed separately).

    python benchmarks/tracking_overhead.py [--steps 500] [--repeats 5]
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
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--family", default="sine")
    args = p.parse_args()
    config = RunConfig(family=args.family, steps=args.steps, eval_every=max(1, args.steps // 5))
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # creates the tables
        setup = time.perf_counter() - t0
        plain, tracked, inside = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            Trainer(config, progress=False).fit()
            plain.append(time.perf_counter() - t0)
            tracker = MLflowTracker(uri, "overhead")
            t0 = time.perf_counter()
            Trainer(config, [tracker], progress=False).fit()
            tracked.append(time.perf_counter() - t0)
            inside.append(tracker.seconds)
    mp, mt, mi = (statistics.median(v) for v in (plain, tracked, inside))
    print(f"{args.family}, {args.steps} steps, {args.repeats} alternated repeats (medians):")
    print(f"  without tracking  {mp:.2f} s")
    print(f"  with tracking     {mt:.2f} s   ratio {mt / mp:.3f}")
    print(f"  inside tracker    {mi:.2f} s   ({100 * mi / mt:.1f}% of the tracked run)")
    print(f"  one-off creation of the SQLite store: {setup:.2f} s")


if __name__ == "__main__":
    main()
