"""gabench's trainer timed side by side with a per-task loop, learn2learn and higher.

    python benchmarks/run.py                 # every setting; writes reports/fast_path.md
    python benchmarks/run.py --quick         # T=25 only, fewer repeats (a smoke run)
    python benchmarks/run.py --device cuda   # the same table on a GPU
    tox -e bench                             # installs learn2learn + higher, then runs the above

Sine regression, MLP 1-40-40-1, K=10 support and 10 query points, alpha=0.01, Adam beta=1e-3.
For every group (algorithm, order, meta-batch T, inner steps) and aggregator (mean, ga):

1. every implementation is built from the same initial model and the same pool of task batches
   (sampled once from gabench's sine training stream);
2. their meta-gradients on the first batch are compared with gabench's general (vmap) path
   (``allclose``; the run stops on a mismatch, before anything is timed);
3. each implementation is warmed up, then timed for ``--repeats`` rounds (the order of the
   implementations rotates between rounds, so slow drifts of a shared machine hit all alike);
   one timing is a run of meta-iterations lasting about ``--seconds`` seconds;
4. the medians of meta-iterations per second, their ratios, and the peak tensor memory of one
   meta-iteration (torch profiler on CPU, ``max_memory_allocated`` on CUDA) are reported.

Ratios are what to read: they are measured in one process, interleaved. Absolute rates on a
shared machine move with its load (the load average is recorded in the report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from baselines import Gabench, Implementation, Setting, load_libraries, per_task_baselines

from gabench.aggregators import GradientAgreement, Mean
from gabench.tasks import FAMILIES, init_generator, task_rng
from gabench.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
BETA = 1e-3
SEED = 0
POOL = 8  # distinct task batches, cycled

#: Targets of issue 5 (ratios on a 2-core CPU).
TARGETS = [
    ("maml", 25, 1, "learn2learn", 20.0),
    ("maml", 100, 1, "learn2learn", 40.0),
    ("reptile", 25, 5, "loop", 15.0),
]
GA_OVERHEAD_TARGET = 0.05


@dataclass
class Row:
    setting: Setting
    rates: dict[str, float] = field(default_factory=dict)  # median it/s
    peak: dict[str, float] = field(default_factory=dict)  # MiB
    max_rel_err: dict[str, float] = field(default_factory=dict)
    ga_overhead: float | None = None  # paired measurement, GA rows only
    ga_weights: float | None = None  # GA's weighting alone / time per iteration, GA rows only


def groups(quick: bool) -> list[tuple[str, bool, int, int]]:
    Ts = (25,) if quick else (5, 25, 100)
    out = []
    for T in Ts:
        for steps in (1, 5):
            out.append(("maml", False, T, steps))
            out.append(("maml", True, T, steps))
        out.append(("reptile", False, T, 5))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(impl: Implementation, batch, device: torch.device) -> float:
    """Peak tensor memory allocated during one meta-iteration, in MiB."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        impl.step(batch)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        impl.step(batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    return max(itertools.accumulate((n for _, n in events), initial=0)) / 2**20


def check_directions(impls: list[Implementation], reference: Implementation, batch,
                     rtol: float) -> dict[str, float]:
    """Max relative error of each implementation's meta-gradient against ``reference``."""
    ref = reference.direction(batch)
    scale = max(float(r.abs().max()) for r in ref)
    errs = {}
    for impl in impls:
        got = impl.direction(batch)
        err = max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True)) / scale
        errs[impl.name] = err
        if err > rtol:
            raise SystemExit(f"meta-gradient mismatch: {impl.name} differs from {reference.name} "
                             f"by {err:.2e} (relative to the largest entry; allowed {rtol:.0e})")
    return errs


def time_rates(impls: list[Implementation], batches, device: torch.device, repeats: int,
               seconds: float) -> dict[str, list[float]]:
    """Meta-iterations per second of each implementation, ``repeats`` interleaved timings."""
    counts = {}
    for impl in impls:  # warm-up (first calls allocate, build caches) and calibration
        impl.step(batches[0])
        sync(device)
        t0 = time.perf_counter()
        n = 0
        while n < 2 or (time.perf_counter() - t0 < seconds / 4 and n < 50):
            impl.step(batches[n % len(batches)])
            n += 1
        sync(device)
        rate = n / (time.perf_counter() - t0)
        counts[impl.name] = max(2, round(rate * seconds))
    rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            n = counts[impl.name]
            sync(device)
            t0 = time.perf_counter()
            for i in range(n):
                impl.step(batches[i % len(batches)])
            sync(device)
            rates[impl.name].append(n / (time.perf_counter() - t0))
    return rates


def paired_overhead(mean: Implementation, ga: Implementation, batches, device: torch.device,
                    rounds: int, n: int) -> tuple[float, float]:
    """GA's cost over mean: (fastest of ``rounds`` timings of n GA steps) / (same for mean) - 1.

    The two runs of a round are adjacent (their order alternates) and, on a CPU, timed in
    process CPU time, which unlike wall time does not count the moments other processes hold
    the cores. The minimum over rounds is the least disturbed run (noise only adds time). On a
    busy shared machine this is still noisy by several percent either way, which is why
    :func:`weighting_cost` cross-checks it.

    Returns:
        The overhead, and the fastest time per step with mean (seconds, same clock).
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {mean.name: [], ga.name: []}
    for r in range(rounds):
        for impl in ((mean, ga) if r % 2 == 0 else (ga, mean)):
            sync(device)
            t0 = clock()
            for i in range(n):
                impl.step(batches[i % len(batches)])
            sync(device)
            times[impl.name].append(clock() - t0)
    return min(times[ga.name]) / min(times[mean.name]) - 1, min(times[mean.name]) / n


def weighting_cost(impl: Gabench, batch, reps: int = 500) -> float:
    """Seconds that computing the aggregator's weights takes, GA minus mean, on this step's G.

    The rest of a gabench step runs the same ops on the same shapes whatever the weights, so
    this is the whole of GA's extra work: a cross-check of :func:`paired_overhead`.
    """
    G = impl.update_matrix(batch)
    best = {}
    for agg in (Mean(), GradientAgreement()):
        runs = []
        for _ in range(7):
            sync(G.device)
            t0 = time.process_time() if G.device.type == "cpu" else time.perf_counter()
            for _ in range(reps):
                agg.weights(G)
            sync(G.device)
            runs.append((time.process_time() if G.device.type == "cpu" else time.perf_counter()) - t0)
        best[agg.name] = min(runs) / reps
    return best["ga"] - best["mean"]


def build(setting: Setting, device: torch.device, libraries: dict[str, Any]) -> list[Implementation]:
    fam = FAMILIES["sine"]()
    model = fam.make_model(init_generator(SEED, "sine")).to(device)
    return [
        Gabench(setting, str(device), BETA, SEED, fast_path=True),
        Gabench(setting, str(device), BETA, SEED, fast_path=False),
        *per_task_baselines(setting, model, fam.loss, fam.default_alpha, BETA, libraries),
    ]


def end_to_end(args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """``Trainer.fit()`` as a user runs it (sampling, logging, final meta-test excluded from the
    clock as in the result's ``wall_seconds``): second-order MAML, 1 step, mean, per T.

    Returns:
        (T, median it/s with the fast path, median it/s with the general path) per T.
    """
    out = []
    for T in ((25,) if args.quick else (5, 25, 100)):
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for fast in (True, False):
                steps = 300 if fast else 100
                cfg = Setting("maml", False, T, 1, "mean").config(args.device, BETA, SEED)
                cfg.steps = steps
                result = Trainer(cfg, progress=False, fast_path=fast, num_threads=args.threads).fit()
                rates[fast].append(steps / result.wall_seconds)
        out.append((T, statistics.median(rates[True]), statistics.median(rates[False])))
        print(f"  fit() T={T}: {out[-1][1]:.0f} it/s (general path {out[-1][2]:.0f})", file=sys.stderr)
    return out


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    libraries = load_libraries(("learn2learn", "higher"), "tox -e bench installs it", args.require_libraries)
    fam = FAMILIES["sine"]()
    rows: list[Row] = []
    for algorithm, first_order, T, steps in groups(args.quick):
        rng = task_rng(SEED, "sine", "train")
        batches = [fam.sample(T, "train", rng).to(device) for _ in range(POOL)]
        group_rows, impls = [], []
        for agg in ("mean", "ga"):
            setting = Setting(algorithm, first_order, T, steps, agg)
            these = build(setting, device, libraries)
            row = Row(setting)
            ref = next(i for i in these if i.name == "gabench-vmap")
            row.max_rel_err = check_directions(these, ref, batches[0], args.rtol)
            for impl in these:
                impl.name = f"{impl.name}|{agg}"
            group_rows.append(row)
            impls.extend(these)
        label = f"{Setting(algorithm, first_order, T, steps, '').method} T={T} steps={steps}"
        print(f"{label}: meta-gradients agree; timing {len(impls)} implementations ...",
              file=sys.stderr, flush=True)
        rates = time_rates(impls, batches, device, args.repeats, args.seconds)
        by_name = {impl.name: impl for impl in impls}
        n = max(2, round(statistics.median(rates["gabench|mean"]) * args.seconds / 2))
        group_rows[1].ga_overhead, per_step = paired_overhead(
            by_name["gabench|mean"], by_name["gabench|ga"], batches, device, args.pairs, n)
        for impl in impls:
            name, agg = impl.name.split("|")
            row = group_rows[0] if agg == "mean" else group_rows[1]
            row.rates[name] = statistics.median(rates[impl.name])
            row.peak[name] = peak_mib(impl, batches[1], device)
        # GA's weighting alone, as a fraction of gabench's time per iteration with mean
        group_rows[1].ga_weights = weighting_cost(by_name["gabench|ga"], batches[0]) / per_step
        for row in group_rows:
            print(format_row(row), file=sys.stderr, flush=True)
        rows.extend(group_rows)
    return rows


IMPLS = ("gabench", "gabench-vmap", "loop", "learn2learn", "higher")


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def ratio(row: Row, other: str) -> float | None:
    if other not in row.rates:
        return None
    return row.rates["gabench"] / row.rates[other]


def format_row(row: Row) -> str:
    s = row.setting
    rates = " ".join(f"{n}={fmt(row.rates.get(n))}" for n in IMPLS if n in row.rates)
    return f"  {s.method:8s} T={s.meta_batch:<3d} k={s.inner_steps} {s.aggregator:4s} it/s: {rates}"


def table(rows: list[Row]) -> str:
    head = ("| method | T | inner steps | aggregator | gabench it/s | vmap path it/s | loop it/s | "
            "learn2learn it/s | higher it/s | x vmap | x loop | x learn2learn | x higher | "
            "GA cost vs mean (weighting alone) | peak MiB gabench / loop / l2l |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in rows:
        s = row.setting
        ga = row.ga_overhead
        lines.append(
            f"| {s.method} | {s.meta_batch} | {s.inner_steps} | {s.aggregator} | "
            + " | ".join(fmt(row.rates.get(n)) for n in IMPLS) + " | "
            + " | ".join(fmt(ratio(row, n), ".1f") for n in IMPLS[1:]) + " | "
            + ("-" if ga is None else f"{100 * ga:+.1f}% ({100 * row.ga_weights:.1f}%)") + " | "
            + " / ".join(fmt(row.peak.get(n), ".2f") for n in ("gabench", "loop", "learn2learn"))
            + " |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for algorithm, T, steps, other, want in TARGETS:
        for agg in ("mean", "ga"):
            row = next((r for r in rows if r.setting == Setting(algorithm, False, T, steps, agg)), None)
            got = None if row is None else ratio(row, other)
            name = "second-order MAML" if algorithm == "maml" else f"Reptile k={steps}"
            met = "n/a" if got is None else ("yes" if got >= want else "no")
            lines.append(f"| {name}, T={T}, {steps} step(s), {agg}: gabench >= {want:.0f}x {other} | "
                         f"{fmt(got, '.1f')}x | {met} |")
    worst = [(r.ga_overhead, r) for r in rows if r.setting.aggregator == "ga"]
    worst = [(g, r) for g, r in worst if g is not None]
    if worst:
        g, r = max(worst, key=lambda t: t[0])
        s = r.setting
        lines.append(f"| GA costs <= {100 * GA_OVERHEAD_TARGET:.0f}% over mean in every setting | "
                     f"worst {100 * g:+.1f}% ({s.method} T={s.meta_batch} k={s.inner_steps}) | "
                     f"{'yes' if g <= GA_OVERHEAD_TARGET else 'no'} |")
        w, r = max(((r.ga_weights, r) for r in rows if r.ga_weights is not None), key=lambda t: t[0])
        s = r.setting
        lines.append(f"| the same, GA's weighting alone (the only code that differs) | worst "
                     f"{100 * w:.1f}% ({s.method} T={s.meta_batch} k={s.inner_steps}) | "
                     f"{'yes' if w <= GA_OVERHEAD_TARGET else 'no'} |")
    return "\n".join(lines)


def pkg_version(name: str) -> str:
    with contextlib.suppress(PackageNotFoundError):
        return version(name)
    return "not installed"


def machine(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch intra-op threads: "
           f"{torch.get_num_threads()}"]
    if device.type == "cuda":
        out.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    out.append(f"- Python {platform.python_version()} on {platform.platform()}")
    out.append("- versions: " + ", ".join(
        f"{n} {pkg_version(n)}" for n in ("gabench", "torch", "numpy", "learn2learn", "higher")))
    return out


def report(rows: list[Row], fits: list[tuple[int, float, float]], args: argparse.Namespace,
           load: tuple[tuple[float, ...], ...], seconds: float) -> str:
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    load_txt = " -> ".join("/".join(f"{x:.1f}" for x in la) for la in load)
    errs = max((e for r in rows for n, e in r.max_rel_err.items() if n != "gabench-vmap"), default=0.0)
    return "\n".join([
        "# Fast path: the trainer against a per-task loop, learn2learn and higher (sine)",
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{cmd}` "
        f"({seconds / 60:.1f} min).",
        "",
        *machine(torch.device(args.device)),
        f"- load average (1/5/15 min) at start -> end: {load_txt}",
        "",
        "Sine regression, MLP 1-40-40-1, K=10 support + 10 query points, alpha=0.01, Adam "
        "beta=1e-3; the same initial model and the same task batches for every implementation. "
        f"Median meta-iterations per second over {args.repeats} interleaved timings of about "
        f"{args.seconds:g} s each; `x NAME` is gabench's rate over NAME's. Before timing, every "
        "implementation's meta-gradient was checked against gabench's general (vmap) path on the "
        f"same batch: largest relative difference {errs:.1e} (allowed {args.rtol:.0e}). Peak MiB: "
        "tensor memory allocated during one meta-iteration. learn2learn and higher have no "
        "Reptile. `gabench` is `Trainer.train_step` with the fast path (batched matmul, hand-written "
        "inner backward); `vmap path` the same trainer with `fast_path=False`. GA cost: "
        f"{args.pairs} adjacent timings each of gabench with GA and with mean, (fastest GA time) / "
        "(fastest mean time) - 1, in process CPU time on a CPU (a busy machine disturbs it less "
        "than wall time, but still by several percent either way: see the negative values); in "
        "parentheses the "
        "time GA's weights take over mean's (`aggregator.weights(G)` on the step's G, timed "
        "alone) as a fraction of gabench's time per iteration with mean.",
        "",
        "## Targets (issue 5)",
        "",
        targets(rows),
        "",
        "GA's cost over mean is also counted in executed instructions, which the machine's load "
        "does not disturb: `python benchmarks/ga_cost.py` writes [ga_cost.md](ga_cost.md).",
        "",
        "## All settings",
        "",
        table(rows),
        "",
        "## End to end",
        "",
        "`Trainer.fit()` as `gabench run` calls it (task sampling and result logging included; "
        "the clock is the result's `wall_seconds`): second-order MAML, 1 inner step, mean, sine; "
        "median of 3 runs.",
        "",
        "| T | fit() it/s, fast path | fit() it/s, general path | x |",
        "| --- | --- | --- | --- |",
        *(f"| {T} | {a:.0f} | {b:.0f} | {a / b:.1f} |" for T, a, b in fits),
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for every implementation (default 1: these "
                        "kernels are too small to gain from more, and a busy machine makes "
                        "spinning OpenMP threads very slow)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timings per implementation")
    p.add_argument("--seconds", type=float, default=0.4, help="length of one timing")
    p.add_argument("--pairs", type=int, default=21,
                   help="adjacent mean/GA timings of gabench per group (GA overhead)")
    p.add_argument("--quick", action="store_true", help="T=25 only, 3 repeats of 0.2 s")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="allowed relative difference of the meta-gradients")
    p.add_argument("--out", default=str(ROOT / "reports" / "fast_path.md"),
                   help="Markdown report to write ('-': do not write)")
    p.add_argument("--require-libraries", action="store_true",
                   help="fail when learn2learn or higher is missing (tox -e bench sets it)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.pairs = min(args.repeats, 3), min(args.seconds, 0.2), 11
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available here")
    torch.set_num_threads(args.threads)
    start, load0 = time.perf_counter(), os.getloadavg()
    rows = run(args)
    fits = end_to_end(args)
    text = report(rows, fits, args, (load0, os.getloadavg()), time.perf_counter() - start)
    print(text)
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
