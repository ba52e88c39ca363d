"""Would coarser random inputs bring linear-binary and textbook-binary under the 10% sampling share?

The two families draw 25 x 20 x 50 = 25,000 uniform float32 inputs per meta-batch for the train
step of a 50-parameter logistic model, and their sampling share stays above the 10% target (see
reports/performance.md). The only levers left in NumPy are fewer random bits per number. This
script measures, for each family at its defaults (MAML, mean aggregator, T = 25, one torch
thread, process CPU time, medians over blocks):

- sample ms: ``family.sample(T, "train", rng)`` amortised over whole chunks, as
  ``benchmarks/sampling.py`` measures it;
- step ms: ``Trainer.train_step(batch)``, median over calls;
- inputs ms: the family's uniform inputs alone (support and query, per meta-batch), as drawn now
  (23-bit grid, :func:`gabench.tasks._base.uniform_float32`) and on a 16-bit and an 8-bit grid
  (4 and 8 numbers per 64-bit word, converted by one cast and two in-place passes);
- projected share: (sample - inputs now + inputs on the grid) / (that + step).

The coarser grids are measured here only; the families do not use them::

    OMP_NUM_THREADS=1 python benchmarks/input_resolution.py --blocks 9
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import numpy as np
import torch

from gabench.config import RunConfig
from gabench.tasks import task_rng
from gabench.tasks._base import uniform_float32
from gabench.trainer import Trainer

FAMILIES = ("linear-binary", "textbook-binary")


def _grid_uniform(gen: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """``n`` numbers uniform on the ``2**bits`` midpoints of an equal split of [-1, 1)."""
    per_word = 64 // bits
    dtype = {8: np.uint8, 16: np.uint16}[bits]
    u = gen.bit_generator.random_raw(-(-n // per_word)).view(dtype)[:n]
    x = u.astype(np.float32)
    x *= np.float32(2.0 ** (1 - bits))
    x -= np.float32(1 - 2.0**-bits)
    return x


def _median_block(fn, calls: int, blocks: int) -> float:
    """Median over blocks of the mean CPU ms per call."""
    times = []
    for _ in range(blocks):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        times.append(1e3 * (time.process_time() - t0) / calls)
    return statistics.median(times)


def _rows(name: str, blocks: int) -> list[str]:
    """The table rows of one family."""
    trainer = Trainer(RunConfig(family=name), progress=False)
    fam, T = trainer.family, trainer.meta_batch
    per_block = max(20, math.ceil(fam.chunk_tasks / T))
    rng = task_rng(0, name, "train")
    pool = [fam.sample(T, "train", rng) for _ in range(per_block)]
    for b in pool[:3]:
        trainer.train_step(b)
    sample = _median_block(partial(fam.sample, T, "train", rng), per_block, blocks)
    calls = []
    for _ in range(blocks):
        for b in pool:
            t0 = time.process_time()
            trainer.train_step(b)
            calls.append(1e3 * (time.process_time() - t0))
    step = statistics.median(calls)
    gen = np.random.Generator(np.random.SFC64(0))
    n = T * (fam.shots + fam.query_shots) * fam.dim
    now = _median_block(partial(uniform_float32, gen, (n,), -1.0, 1), per_block, blocks)
    share = sample / (sample + step)
    rows = [
        f"| {name} | {sample:.3f} | {step:.3f} | {100 * share:.1f}% | 23-bit (now) | "
        f"{now:.3f} | {100 * share:.1f}% |"
    ]
    for bits in (16, 8):
        grid = _median_block(partial(_grid_uniform, gen, n, bits), per_block, blocks)
        s = sample - now + grid
        rows.append(f"| | | | | {bits}-bit | {grid:.3f} | {100 * s / (s + step):.1f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | sample ms | step ms | share now | grid | inputs ms | projected share |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name in FAMILIES:
        print("\n".join(_rows(name, args.blocks)))


if __name__ == "__main__":
    main()
