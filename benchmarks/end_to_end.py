"""End-to-end speed of ``gabench run`` per family at its defaults: meta-iterations per second of
``Trainer.fit()`` with task sampling, the train step and result logging included.

For every family, ``Trainer(RunConfig(family=F)).fit()`` (what ``gabench run --family F
--no-tracking`` executes: defaults, MAML, mean aggregator, T = 25, 1000 steps, then the
meta-test) is timed, and so is the same fit with ``steps=0`` (set-up and the meta-test only). The
rate is ``steps / (t_fit - t_fit0)``: meta-iterations per second of the training loop alone.
Families are measured round-robin, ``--repeats`` times; medians over repeats. Times are CPU
seconds of this process (``time.process_time``, one torch thread): on a machine shared with other
jobs, wall time mostly measures the other jobs (wall medians are printed too).

    OMP_NUM_THREADS=1 python benchmarks/end_to_end.py [--repeats 3] [--steps 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gabench.config import RunConfig
from gabench.trainer import Trainer

FAMILIES = ("moons", "blobs", "regression", "circles", "classification", "digits",
            "linear-binary", "textbook-binary", "sine")


def _fit(family: str, steps: int) -> tuple[float, float]:
    """CPU and wall seconds of one ``fit()`` (construction included, as in ``gabench run``)."""
    c0, w0 = time.process_time(), time.perf_counter()
    Trainer(RunConfig(family=family, steps=steps), progress=False).fit()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--steps", type=int, default=1000, help="meta-iterations per fit (the default run's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = p.parse_args()
    torch.set_num_threads(1)
    families = args.families.split(",")
    for f in families:  # warm-up: imports, caches (digits' images), first-call costs
        _fit(f, 5)
    full: dict[str, list[tuple[float, float]]] = {f: [] for f in families}
    zero: dict[str, list[tuple[float, float]]] = {f: [] for f in families}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for f in families:
            full[f].append(_fit(f, args.steps))
            zero[f].append(_fit(f, 0))
    minutes = (time.perf_counter() - start) / 60
    load = os.getloadavg()
    lines = [
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `OMP_NUM_THREADS=1 "
        f"python benchmarks/end_to_end.py --repeats {args.repeats} --steps {args.steps}` "
        f"({minutes:.1f} min) on {platform.machine()}, {os.cpu_count()} CPU(s) shared with other "
        f"jobs (load average {load[0]:.1f} at the end), torch {torch.__version__}, one thread. "
        f"CPU seconds of the measuring process, medians over {args.repeats} round-robin repeats.",
        "",
        "| family | train it/s (CPU) | ms per meta-iteration | fit() at defaults, CPU s "
        "| of which set-up + meta-test, CPU s | fit() wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in families:
        cpu = statistics.median(c for c, _ in full[f])
        cpu0 = statistics.median(c for c, _ in zero[f])
        wall = statistics.median(w for _, w in full[f])
        rate = args.steps / max(cpu - cpu0, 1e-9)
        lines.append(f"| {f} | {rate:.0f} | {1e3 / rate:.2f} | {cpu:.2f} | {cpu0:.2f} | {wall:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
