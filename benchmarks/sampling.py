"""Task sampling against the train step, per family at its defaults, before and after a change.

For every family at its defaults (``RunConfig(family=...)``: MAML, mean aggregator, T = 25,
one torch thread) it measures, interleaved in blocks of meta-iterations, in CPU time of the
measuring process (``time.process_time``: on a machine shared with other jobs, wall time
mostly measures the other jobs):

- sample ms: ``family.sample(T, "train", rng)`` on the run's task stream, the mean per call over
  a block that covers whole chunks of the stream (a chunked stream draws many meta-batches in
  one call, so single calls are bimodal and only the amortised cost means anything), median
  over blocks;
- train step ms: ``Trainer.train_step(batch)``, median over calls;
- sampling share: sample / (sample + train step);
- it/s: end-to-end meta-iterations per second of ``sample`` + ``train_step``, median over
  blocks.

It also times the train step of every method of ``studies/paper.toml`` and estimates the
study's meta-training CPU time as sum over families and methods of seeds x steps x (sample +
train step) (evaluation excluded).

The code under test is whatever ``gabench`` the measuring process imports: ``--before DIR`` and
``--after DIR`` are put on ``PYTHONPATH`` of two child processes (run one after the other,
``--rounds`` times, medians over rounds), so one invocation compares two checkouts::

    OMP_NUM_THREADS=1 python benchmarks/sampling.py --before /work/main --after . \\
        --out reports/sampling.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve()
PAPER = HERE.parent.parent / "studies" / "paper.toml"
FAMILY_ORDER = ("moons", "blobs", "regression", "circles", "classification", "digits",
                "linear-binary", "textbook-binary", "sine")
#: Former registry names, tried when a measured checkout does not know a family's name.
FORMER_NAMES = {"textbook-binary": "book-binary"}
METHOD_KEYS = ("algorithm", "aggregator", "first_order", "inner_steps")


# ---------------------------------------------------------------------------------- child side
def _measure(families: list[str], blocks: int, paper: bool) -> dict[str, dict[str, object]]:
    """Measurements of the imported gabench (run in a child process)."""
    import torch

    from gabench.config import RunConfig
    from gabench.tasks import FAMILIES, task_rng
    from gabench.trainer import Trainer

    torch.set_num_threads(1)
    study = tomllib.loads(PAPER.read_text())
    methods = {name: {k: v for k, v in m.items() if k in METHOD_KEYS}
               for name, m in study["methods"].items()}
    out: dict[str, dict[str, object]] = {}
    for shown in families:
        family = shown if shown in FAMILIES else FORMER_NAMES.get(shown, shown)
        trainer = Trainer(RunConfig(family=family), progress=False)
        fam, T = trainer.family, trainer.meta_batch
        per_block = max(20, math.ceil((getattr(fam, "chunk_tasks", None) or 0) / T))
        rng = task_rng(0, family, "train")
        pool = [fam.sample(T, "train", rng) for _ in range(per_block)]  # also warms up
        for b in pool[:3]:
            trainer.train_step(b)
        sample_ms, step_ms, its = [], [], []
        for _ in range(blocks):
            t0 = time.process_time()
            for _ in range(per_block):
                fam.sample(T, "train", rng)
            sample_ms.append(1e3 * (time.process_time() - t0) / per_block)
            for b in pool:
                t0 = time.process_time()
                trainer.train_step(b)
                step_ms.append(1e3 * (time.process_time() - t0))
            t0 = time.process_time()
            for _ in range(per_block):
                trainer.train_step(fam.sample(T, "train", rng))
            its.append(per_block / (time.process_time() - t0))
        row: dict[str, object] = {
            "sample_ms": statistics.median(sample_ms), "step_ms": statistics.median(step_ms),
            "its": statistics.median(its), "per_block": per_block,
        }
        if paper:
            method_ms = {}
            for name, params in methods.items():
                tr = Trainer(RunConfig(family=family, **params), progress=False)
                tr.train_step(pool[0])
                times = []
                for _ in range(max(1, blocks // 2)):
                    for b in pool:
                        t0 = time.process_time()
                        tr.train_step(b)
                        times.append(1e3 * (time.process_time() - t0))
                method_ms[name] = statistics.median(times)
            row["method_step_ms"] = method_ms
        out[shown] = row
        print(f"  {shown}: sample {row['sample_ms']:.3f} ms, step {row['step_ms']:.3f} ms",
              file=sys.stderr)
    return out


# --------------------------------------------------------------------------------- parent side
def _run_child(checkout: str, families: list[str], blocks: int) -> dict[str, dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(HERE), "--child", "--blocks", str(blocks),
           "--families", ",".join(families)]
    print(f"measuring {checkout}", file=sys.stderr)
    done = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


def _median_rounds(rounds: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    merged: dict[str, dict[str, object]] = {}
    for family in rounds[0]:
        rows = [r[family] for r in rounds]
        merged[family] = {k: statistics.median(float(r[k]) for r in rows)  # type: ignore[arg-type]
                          for k in ("sample_ms", "step_ms", "its")}
        merged[family]["method_step_ms"] = {
            m: statistics.median(float(r["method_step_ms"][m]) for r in rows)  # type: ignore[index]
            for m in rows[0]["method_step_ms"]  # type: ignore[union-attr]
        }
    return merged


def _paper_hours(data: dict[str, dict[str, object]],
                 step_ms: dict[str, dict[str, float]]) -> dict[str, float]:
    """Meta-training CPU-hours of the paper study per family: seeds x steps x sum over methods
    of (this checkout's sample ms + ``step_ms[family][method]``)."""
    study = tomllib.loads(PAPER.read_text())
    seeds = study["seeds"] if isinstance(study["seeds"], int) else len(study["seeds"])
    hours = {}
    for family, fcfg in study["families"].items():
        steps = fcfg.get("steps", study.get("defaults", {}).get("steps", 1000))
        sample = float(data[family]["sample_ms"])  # type: ignore[arg-type]
        ms = sum(sample + s for s in step_ms[family].values())
        hours[family] = seeds * steps * ms / 3.6e6
    return hours


def _report(before: dict, after: dict, args: argparse.Namespace) -> str:
    lines = [
        "# Task sampling vs the train step",
        "",
        f"Measured by `benchmarks/sampling.py` ({args.rounds} round(s) of {args.blocks} blocks "
        f"per checkout, medians) on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s) shared with other jobs, one torch thread, process CPU time; "
        f"before = {args.before_label or args.before}, after = {args.after_label or args.after}. "
        "Each family at its defaults "
        "(MAML, mean aggregator, T = 25). sample = `family.sample(T, \"train\", rng)` amortised "
        "over whole chunks of the stream; step = `Trainer.train_step(batch)`; share = sample / "
        "(sample + step); it/s = end-to-end meta-iterations per second, sampling included.",
        "",
        "| family | sample ms before | sample ms after | step ms before | step ms after | "
        "share before | share after | it/s before | it/s after | it/s ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in before:
        b, a = before[f], after[f]
        sb = b["sample_ms"] / (b["sample_ms"] + b["step_ms"])
        sa = a["sample_ms"] / (a["sample_ms"] + a["step_ms"])
        lines.append(
            f"| {f} | {b['sample_ms']:.3f} | {a['sample_ms']:.3f} | {b['step_ms']:.3f} | "
            f"{a['step_ms']:.3f} | {100 * sb:.0f}% | {100 * sa:.1f}% | {b['its']:.0f} | "
            f"{a['its']:.0f} | {a['its'] / b['its']:.1f}x |")
    if set(before) == set(FAMILY_ORDER):
        # The change under test is the sampling; the train steps of the two checkouts differ
        # only by noise, so both estimates use the mean of the two measurements of each step.
        pooled = {f: {m: (before[f]["method_step_ms"][m] + after[f]["method_step_ms"][m]) / 2
                      for m in before[f]["method_step_ms"]} for f in before}
        hb, ha = _paper_hours(before, pooled), _paper_hours(after, pooled)
        lines += [
            "",
            "## Paper study: estimated meta-training CPU time",
            "",
            "`studies/paper.toml`: per family, seeds x steps x sum over its five methods of "
            "(sample ms + that method's train-step ms), evaluation not included. Each method's "
            "train step is measured as above in both checkouts, and both estimates use the mean "
            "of the two (the train step is the same code; its measurements differ by noise), so "
            "the ratio is that of the sampling change.",
            "",
            "| family | CPU-hours before | CPU-hours after | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for f in before:
            lines.append(f"| {f} | {hb[f]:.2f} | {ha[f]:.2f} | {hb[f] / ha[f]:.1f}x |")
        tb, ta = sum(hb.values()), sum(ha.values())
        lines.append(f"| **total** | **{tb:.2f}** | **{ta:.2f}** | **{tb / ta:.1f}x** |")
    over = [f for f in after
            if after[f]["sample_ms"] > 0.1 * (after[f]["sample_ms"] + after[f]["step_ms"])]
    if over:
        lines += [
            "",
            f"Above the 10% target: {', '.join(over)}. linear-binary and textbook-binary draw "
            "25 x 20 x 50 = 25,000 uniform numbers per meta-batch for the train step of a "
            "50-parameter logistic model. They come from NumPy's bit generator as raw 64-bit "
            "words, two numbers per word, turned into floats by three vectorised passes "
            "(gabench.tasks._base.uniform_float32): filling those 12,500 words alone takes "
            "about a tenth of such a step here, a floor for any NumPy generator (each word "
            "costs a call through the bit generator's function pointer).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=None, help="checkout measured as 'before'")
    p.add_argument("--after", default=str(HERE.parent.parent), help="checkout measured as 'after'")
    p.add_argument("--families", default=",".join(FAMILY_ORDER))
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--before-label", default=None, help="how the report names 'before'")
    p.add_argument("--after-label", default=None, help="how the report names 'after'")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    families = args.families.split(",")
    if args.child:
        print(json.dumps(_measure(families, args.blocks, paper=True)))
        return
    if args.before is None:
        after = _median_rounds([_run_child(args.after, families, args.blocks)])
        before = after
    else:
        rb, ra = [], []
        for _ in range(args.rounds):
            rb.append(_run_child(args.before, families, args.blocks))
            ra.append(_run_child(args.after, families, args.blocks))
        before, after = _median_rounds(rb), _median_rounds(ra)
    text = _report(before, after, args)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
