"""The textbook's gradient-agreement example, reproduced as published, beside gabench's runs.

:func:`textbook_run` is a NumPy re-implementation, written from the description in gabench's
ALGORITHM.md, of the worked example of chapter 8 of "Hands-On Meta Learning with Python"
(first-order MAML with gradient-agreement weights on random binary tasks). It keeps that
example's **known defects on purpose**, to show what its printed output means; gabench's own
algorithms never copy them:

1. the weights are normalised by ``sum_i sum_j |<g_i, g_j>|`` instead of
   ``sum_k |sum_j <g_k, g_j>|``;
2. ``weighted_gradient += np.sum(w_i * meta_gradient)`` collapses each task's meta-gradient to
   one scalar that is added to every coordinate;
3. the weighted sum is divided by the number of tasks again;
4. the meta-gradient is divided by the support size instead of the query size (with the
   book's k = 10 for both this changes no number);
5. the printed loss is the last task's pre-adaptation *support* loss of the epoch.

(Defect 6, Python 2 code that fails on NumPy 2, is not reproduced; this code runs on NumPy 2.)

``gabench book`` runs it over many seeds, writes ``<out-root>/<study>/textbook.parquet``, runs
``studies/book.toml`` (gabench's corrected runs of the same example) with ``gabench compare``
and writes the report, whose first section is :func:`textbook_section`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gabench._errors import ConfigError, check_int, check_positive

LN2 = math.log(2)


@dataclass(frozen=True)
class TextbookSettings:
    """The example's settings (the published values are the defaults).

    Attributes:
        tasks: Tasks per meta-batch.
        shots: Support rows per task (``num_samples``).
        query_shots: Query rows per task.
        dim: Input dimension.
        epochs: Meta-iterations.
        alpha: Inner learning rate.
        beta: Outer learning rate.
        test_tasks: Held-out tasks on which the initial and final parameters are evaluated
            (not part of the published example, which evaluates nothing).
        fixed: Defects (numbers 1-4 of the module docstring) to correct, for ablations; empty
            reproduces the example as published.
    """

    tasks: int = 2
    shots: int = 10
    query_shots: int = 10
    dim: int = 50
    epochs: int = 100
    alpha: float = 1e-4
    beta: float = 1e-4
    test_tasks: int = 600
    fixed: tuple[int, ...] = ()

    def validate(self) -> TextbookSettings:
        for name in ("tasks", "shots", "query_shots", "dim", "epochs", "test_tasks"):
            check_int(name, getattr(self, name))
        check_positive("alpha", self.alpha)
        check_positive("beta", self.beta)
        for d in self.fixed:
            if d not in (1, 2, 3, 4):
                raise ConfigError("fixed", self.fixed, "defect numbers among 1, 2, 3, 4")
        return self


@dataclass(frozen=True)
class TextbookRun:
    """What one seed of the textbook example produced.

    Attributes:
        printed_loss: Array of shape (epochs,), the number the example prints each epoch.
        theta_init: Array of shape (dim, 1), the initial parameters.
        theta: Array of shape (dim, 1), the final parameters.
    """

    printed_loss: np.ndarray
    theta_init: np.ndarray
    theta: np.ndarray


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def sample_points(rng: np.random.Generator, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One set of the textbook's task: ``x ~ U[0,1)^dim``, ``y ~ Bernoulli(0.5)`` independent of x.

    Returns:
        ``(x, y)``: arrays of shape (k, dim) and (k, 1).
    """
    return rng.random((k, dim)), rng.integers(0, 2, size=(k, 1)).astype(np.float64)


def textbook_run(rng: np.random.Generator, settings: TextbookSettings | None = None) -> TextbookRun:
    """The chapter-8 gradient-agreement MAML example as published, defects 1-5 included.

    ``settings.fixed`` corrects chosen defects (1-4) for ablations; the published example has
    none corrected.

    Args:
        rng: The only source of randomness (initial parameters and every sampled task).
        settings: The example's settings (default: the published ones).

    Returns:
        The printed losses and the initial and final parameters.

    References:
        S. Ravichandiran, "Hands-On Meta Learning with Python", Packt 2018, chapter 8.
    """
    s = (settings or TextbookSettings()).validate()
    theta = rng.normal(size=(s.dim, 1))
    theta_init = theta.copy()
    printed = np.empty(s.epochs)
    for epoch in range(s.epochs):
        adapted, updates = [], []
        loss = float("nan")
        for _ in range(s.tasks):
            x, y = sample_points(rng, s.shots, s.dim)
            y_hat = _sigmoid(x @ theta)
            loss = float(((-y.T @ np.log(y_hat) - (1 - y).T @ np.log(1 - y_hat)) / s.shots)[0, 0])
            gradient = x.T @ (y_hat - y) / s.shots
            adapted.append(theta - s.alpha * gradient)
            updates.append(theta - adapted[-1])
        G = np.hstack(updates).T  # (tasks, dim)
        gram = G @ G.T
        agreement = gram.sum(axis=1)
        if 1 in s.fixed:
            normalisation = np.abs(agreement).sum()  # the paper: sum_k |sum_j <g_k, g_j>|
        else:
            normalisation = np.abs(gram).sum()  # defect 1: sum_i sum_j |<g_i, g_j>|
        w = agreement / normalisation
        weighted_gradient = np.zeros_like(theta)
        for i in range(s.tasks):
            xq, yq = sample_points(rng, s.query_shots, s.dim)
            y_pred = _sigmoid(xq @ adapted[i])
            size = s.query_shots if 4 in s.fixed else s.shots  # defect 4: support size
            meta_gradient = xq.T @ (y_pred - yq) / size
            if 2 in s.fixed:
                weighted_gradient += w[i] * meta_gradient
            else:
                weighted_gradient += np.sum(w[i] * meta_gradient)  # defect 2: one scalar for all coords
        divisor = 1 if 3 in s.fixed else s.tasks  # defect 3: divided by T again
        theta = theta - s.beta * weighted_gradient / divisor
        printed[epoch] = loss  # defect 5: last task's pre-adaptation support loss
    return TextbookRun(printed, theta_init, theta)


def heldout_loss(theta: np.ndarray, rng: np.random.Generator, settings: TextbookSettings,
                 adapt: bool) -> float:
    """Mean query cross-entropy of ``theta`` on fresh tasks, optionally after one inner step.

    Args:
        theta: Array of shape (dim, 1).
        rng: Generator of the held-out tasks.
        settings: Shapes, ``alpha`` and the number of tasks.
        adapt: Take one SGD step of size ``alpha`` on each task's support set first.
    """
    n, k, q, d = settings.test_tasks, settings.shots, settings.query_shots, settings.dim
    xs, ys = rng.random((n, k, d)), rng.integers(0, 2, size=(n, k, 1)).astype(np.float64)
    xq, yq = rng.random((n, q, d)), rng.integers(0, 2, size=(n, q, 1)).astype(np.float64)
    th = np.broadcast_to(theta, (n, d, 1))
    if adapt:
        grad = np.swapaxes(xs, 1, 2) @ (_sigmoid(xs @ th) - ys) / k
        th = th - settings.alpha * grad
    z = xq @ th
    ce = np.logaddexp(0.0, z) - yq * z  # stable binary cross-entropy with logits
    return float(ce.mean())


#: Textbook variants in the table: the example as published, and two ablations that correct
#: defects (same seeds, so the same initial parameters and the same task draws).
VARIANTS: dict[str, tuple[int, ...]] = {
    "as published": (),
    "defect 2 fixed": (2,),
    "defects 1-4 fixed": (1, 2, 3, 4),
}


def textbook_table(seeds: int, settings: TextbookSettings | None = None,
                   variants: dict[str, tuple[int, ...]] | None = None) -> pd.DataFrame:
    """The textbook example over seeds ``0..seeds-1`` as a long table, one block per variant.

    Rows (``method`` = ``textbook (<variant>)``): ``split=train``, ``metric=printed_loss`` for
    every epoch; ``split=test`` (step = epochs): ``loss_init`` (held-out query loss of the initial
    parameters), ``loss_pre`` and ``loss_post`` (final parameters, before / after one inner step)
    and ``theta_change`` (``||theta - theta_0||``).

    Args:
        seeds: Number of seeds.
        settings: The example's settings (default: the published ones); ``fixed`` is set per variant.
        variants: Label -> defects corrected (default :data:`VARIANTS`).
    """
    base = (settings or TextbookSettings()).validate()
    seeds = check_int("seeds", seeds)
    frames = []
    for label, fixed in (variants or VARIANTS).items():
        s = replace(base, fixed=tuple(fixed)).validate()
        for seed in range(seeds):
            run = textbook_run(np.random.default_rng([seed, 8]), s)
            test_seed = [seed, 8, 1]  # the same held-out tasks for both parameter vectors
            tests = {
                "loss_init": heldout_loss(run.theta_init, np.random.default_rng(test_seed), s, adapt=False),
                "loss_pre": heldout_loss(run.theta, np.random.default_rng(test_seed), s, adapt=False),
                "loss_post": heldout_loss(run.theta, np.random.default_rng(test_seed), s, adapt=True),
                "theta_change": float(np.linalg.norm(run.theta - run.theta_init)),
            }
            frames.append(pd.DataFrame({
                "run": f"textbook-{label.replace(' ', '-')}__s{seed}", "method": f"textbook ({label})",
                "seed": seed,
                "step": np.r_[np.arange(1, s.epochs + 1), np.full(len(tests), s.epochs)],
                "split": ["train"] * s.epochs + ["test"] * len(tests),
                "metric": ["printed_loss"] * s.epochs + list(tests),
                "value": np.r_[run.printed_loss, list(tests.values())],
            }))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- report section
def _trend(printed: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: least-squares change over the run and residual std around that line."""
    coef = np.polyfit(steps, printed.T, 1)  # (2, seeds)
    fitted = coef[0][:, None] * steps[None, :] + coef[1][:, None]
    return coef[0] * (steps[-1] - steps[0]), (printed - fitted).std(axis=1, ddof=2)


def _direction(iv: Any, fmt: Any, what: str) -> str:
    if iv.n >= 2 and iv.high < 0:
        return f"{what} decreases: {fmt(iv)}"
    if iv.n >= 2 and iv.low > 0:
        return f"{what} increases: {fmt(iv)}"
    return f"{what} shows no systematic change: {fmt(iv)}"


def textbook_section(tables: Any, out_dir: Path) -> str:
    """Markdown (and ``textbook.png``) for the textbook replica in ``tables.extra["textbook"]``.

    Every statement is computed from the table (trends and changes with 95% bootstrap CIs over
    seeds), so the text follows the numbers.
    """
    from gabench.reporting._plots import plt
    from gabench.reporting._render import fmt_interval as fmt
    from gabench.reporting._render import md_table as _md_table
    from gabench.reporting._stats import mean_interval as bootstrap_ci
    from gabench.reporting._stats import t_interval_columns as bootstrap_ci_columns

    tb: pd.DataFrame = tables.extra["textbook"]
    methods = list(dict.fromkeys(tb["method"]))
    published = next((m for m in methods if "as published" in m), methods[0])
    stats: dict[str, dict[str, Any]] = {}
    for m in methods:
        part = tb[tb.method == m]
        printed = part[part.metric == "printed_loss"].pivot_table(index="seed", columns="step",
                                                                   values="value")
        test = part[part.split == "test"].pivot_table(index="seed", columns="metric", values="value")
        p, steps = printed.to_numpy(), printed.columns.to_numpy().astype(float)
        change, noise = _trend(p, steps)
        stats[m] = {
            "p": p, "steps": steps, "n": p.shape[0], "change": bootstrap_ci(change),
            "noise": bootstrap_ci(noise), "neg": float((change < 0).mean()),
            "last_below_first": float((p[:, -1] < p[:, 0]).mean()),
            "level": bootstrap_ci(p.mean(axis=1)), "init": bootstrap_ci(test["loss_init"].to_numpy()),
            "final": bootstrap_ci(test["loss_pre"].to_numpy()),
            "gain": bootstrap_ci((test["loss_pre"] - test["loss_init"]).to_numpy()),
            "below_ln2": float((test["loss_pre"] < LN2).mean()),
            "theta": bootstrap_ci(test["theta_change"].to_numpy()),
        }
    st = stats[published]

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for i in range(min(4, st["n"])):
        axes[0].plot(st["steps"], st["p"][i], lw=1, label=f"seed {i}")
    axes[0].axhline(LN2, color="black", ls=":", lw=0.8, label="ln 2")
    axes[0].set_title("what the example prints (as published, 4 seeds)", fontsize=10)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("printed loss")
    axes[0].legend(fontsize=8, ncol=2)
    for k, m in enumerate(methods):
        sm = stats[m]
        low, high = bootstrap_ci_columns(sm["p"])
        label = m.removeprefix("textbook (").rstrip(")")
        axes[1].plot(sm["steps"], sm["p"].mean(axis=0), color=f"C{k}", label=label)
        axes[1].fill_between(sm["steps"], low, high, color=f"C{k}", alpha=0.2, lw=0)
    axes[1].axhline(LN2, color="black", ls=":", lw=0.8, label="ln 2")
    axes[1].set_title(f"printed loss, mean over {st['n']} seeds (95% band)", fontsize=10)
    axes[1].set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    x = np.arange(len(methods))
    for j, (key, label) in enumerate((("init", "initial parameters"), ("final", "after 100 epochs"))):
        ivs = [stats[m][key] for m in methods]
        mean = np.array([iv.mean for iv in ivs])
        err = np.array([[iv.mean - iv.low for iv in ivs], [iv.high - iv.mean for iv in ivs]])
        axes[2].bar(x + (j - 0.5) * 0.38, mean, 0.38, yerr=err, capsize=3, label=label, color=f"C{j + 7}")
    axes[2].axhline(LN2, color="black", ls=":", lw=0.8, label="ln 2 (best possible)")
    axes[2].set_xticks(x, [m.removeprefix("textbook ").strip("()") for m in methods], fontsize=8)
    axes[2].set_title("held-out query loss (600 fresh tasks)", fontsize=10)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "textbook.png", dpi=110)
    plt.close(fig)

    lines = [
        "## The textbook's example as published (chapter 8): what its printed loss means", "",
        "`textbook.parquet` (written by `gabench book`) holds a NumPy re-implementation of the book's "
        "gradient-agreement MAML example **with its known defects 1-5 kept on purpose** (ALGORITHM.md): "
        "the normalisation `sum_ij |<g_i,g_j>|` (1), each task's meta-gradient collapsed to one scalar that "
        "is added to every coordinate (2), a second division by the number of tasks (3), the support size "
        "as divisor (4; no effect with k = 10 for both sets) and, as the printed number, the last task's "
        "pre-adaptation *support* loss (5). Settings as published: 2 tasks per batch, k = 10, 100 epochs, "
        f"alpha = beta = 1e-4, one inner step, first order; {st['n']} seeds. Two ablations run the same "
        "seeds (same initial parameters, same task draws) with defect 2 corrected, and with defects 1-4 "
        "corrected. The labels are independent of the inputs: no model can beat ln 2 = 0.693 on held-out "
        "tasks in expectation.", "",
        "![textbook printed loss](textbook.png)", "",
    ]
    rows = []
    for m in methods:
        sm = stats[m]
        rows.append([m, fmt(sm["level"]), fmt(sm["change"]), f"{100 * sm['neg']:.0f}%", fmt(sm["noise"]),
                     fmt(sm["init"]), fmt(sm["final"]), fmt(sm["gain"]), fmt(sm["theta"])])
    header = ["variant", "printed loss (mean)", "fitted change over 100 epochs", "seeds with a downward fit",
              "epoch-to-epoch noise (sd)", "held-out loss, initial", "held-out loss, final",
              "held-out change", "norm of theta - theta_0"]
    lines += [_md_table(header, rows)]
    lines += ["", "Mean over seeds [95% bootstrap CI over seeds]. ||theta_0|| is about 7 (50 coordinates "
              "drawn from N(0, 1)).", "", "What this measures:", ""]
    lines.append(f"- As published, {_direction(st['change'], fmt, 'the printed loss')} over the 100 epochs "
                 f"(downward fit on {100 * st['neg']:.0f}% of seeds; the last printed value is below the "
                 f"first on {100 * st['last_below_first']:.0f}%), against epoch-to-epoch noise of sd "
                 f"{fmt(st['noise'])}: each epoch prints the loss of a fresh random 10-example task, so a "
                 "single printout is mostly noise around the trend.")
    lines.append(f"- On held-out tasks, as published, {_direction(st['gain'], fmt, 'the query loss')} "
                 f"(from {fmt(st['init'])} to {fmt(st['final'])}); it stays above ln 2 = {LN2:.3f} "
                 f"({100 * st['below_ln2']:.0f}% of seeds end below ln 2). Nothing about the tasks can be "
                 "learned: a lower loss here only means that the randomly initialised model, which makes "
                 "confident random predictions, moved towards predicting 1/2.")
    fix2 = next((m for m in methods if "defect 2 fixed" in m), None)
    if fix2 is not None and st["change"].high < 0 and not stats[fix2]["change"].excludes_zero:
        dim = TextbookSettings().dim
        lines.append(
            f"- The printed decrease disappears when defect 2 alone is corrected. Collapsing a meta-gradient "
            f"to the sum of its {dim} coordinates and adding that to every coordinate is a step along "
            f"(1, ..., 1) that is {dim} times the gradient's own component along that direction; since the "
            "inputs are non-negative, it shifts every logit together and so mostly corrects the random "
            "initial model's overall bias towards 0 or 1. It is an accident of the defect, not gradient "
            "agreement at work and not learning about the tasks; with the defect corrected, "
            "alpha = beta = 1e-4 for 100 epochs barely moves the model.")
    for m in methods:
        if m == published:
            continue
        sm = stats[m]
        lines.append(f"- `{m}`: {_direction(sm['gain'], fmt, 'the held-out loss')}; "
                     f"{_direction(sm['change'], fmt, 'the printed loss')}.")
    res = getattr(tables, "results", None)
    if res is not None and len(res):
        test = res[(res.split == "test") & (res.metric == "loss_post")]
        for cell, part in test.groupby("family_label", sort=False):
            ivs = {m: bootstrap_ci(g["value"].to_numpy()) for m, g in part.groupby("method", sort=False)}
            below = [m for m, iv in ivs.items() if iv.n >= 2 and iv.high < LN2]
            lines.append(
                f"- gabench, corrected, cell `{cell}`: meta-test query loss after adaptation "
                + ", ".join(f"`{m}` {fmt(iv)}" for m, iv in ivs.items())
                + (f"; no method is below ln 2 = {LN2:.3f} beyond its CI." if not below
                   else f"; below ln 2 beyond the CI: {', '.join(below)} (check the sampler).")
            )
    lines += ["", "gabench's corrected runs of the same example follow (cells `book-as-published`: T = 2, "
              "k = 10, 100 steps, alpha = beta = 1e-4, plain SGD outer step; `book-trained`: enough learning "
              "rate and steps to learn whatever can be learned), measured by the meta-validation and "
              "meta-test query loss after adaptation on held-out tasks.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def add_book_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``gabench book`` on the CLI's subparsers."""
    p = sub.add_parser("book", help="the textbook's chapter-8 example as published, beside gabench's runs",
                       description="Run a NumPy re-implementation of the textbook's gradient-agreement "
                       "example with its known defects (labelled as such) over many seeds, run the "
                       "corrected gabench study (studies/book.toml) with gabench compare, and write "
                       "the report.")
    p.add_argument("--study", default="studies/book.toml", help="the corrected runs (studies/book.toml)")
    p.add_argument("--seeds", type=int, default=200, help="seeds of the textbook replica (200)")
    p.add_argument("--workers", type=int, default=1, help="processes for the gabench runs (1)")
    p.add_argument("--out-root", default="runs", help="parent of the study directory (runs)")
    p.add_argument("--reports-root", default="reports", help="parent of the report directory (reports)")
    p.add_argument("--redo-changed", action="store_true",
                   help="rerun finished runs whose configuration differs from the study file")
    p.set_defaults(func=cmd_book)
    return p


def _textbook_done(path: Path, seeds: int) -> bool:
    """``path`` holds the replica for exactly ``seeds`` seeds and every variant."""
    if not path.is_file():
        return False
    t = pd.read_parquet(path, columns=["method", "seed"])
    return (set(t["method"]) == {f"textbook ({v})" for v in VARIANTS}
            and set(t["seed"]) == set(range(seeds)))


def cmd_book(args: argparse.Namespace) -> int:
    from gabench.compare import _write_parquet, run_study
    from gabench.reporting import report_study
    from gabench.study import load_study

    study = load_study(args.study)
    seeds = check_int("--seeds", args.seeds)
    out = Path(args.out_root) / study.name
    path = out / "textbook.parquet"
    if _textbook_done(path, seeds):
        print(f"textbook example: {path} already holds {seeds} seeds (deterministic; kept)")
    else:
        table = textbook_table(seeds)
        out.mkdir(parents=True, exist_ok=True)
        _write_parquet(path, table)
        print(f"textbook example as published (and ablations): {seeds} seeds -> {path}")
    result = run_study(study, args.out_root, args.workers, threads=1, redo_changed=args.redo_changed)
    if result.failures:
        print(f"gabench book: {len(result.failures)} run(s) failed (listed in the report)")
    cmd = "gabench report " + study.name
    if args.out_root != "runs":
        cmd += f" --runs-root {args.out_root}"
    if args.reports_root != "reports":
        cmd += f" --reports-root {args.reports_root}"
    path = report_study(study.name, args.out_root, args.reports_root, command=cmd)
    print(f"report written to {path}")
    return 0
