"""PNG figures of a report (matplotlib, Agg backend): curves with bands, forest plots, weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gabench.reporting._stats import bootstrap_ci_columns  # noqa: E402

_COLOURS = {"maml": "#1f77b4", "fomaml": "#2ca02c", "reptile": "#d62728"}
_EXTRA = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_STYLES = {"mean": "-", "ga": "--", "ga-textbook": ":"}


def method_styles(info: dict[str, tuple[str, str, bool]]) -> dict[str, dict[str, object]]:
    """Matplotlib line styles: colour by algorithm (MAML, FOMAML, Reptile), dash by aggregator.

    Args:
        info: Method label -> (algorithm, aggregator, first_order).
    """
    styles: dict[str, dict[str, object]] = {}
    extra = iter(_EXTRA * 4)
    seen: dict[str, str] = {}
    for label, (algo, agg, fo) in info.items():
        base = "fomaml" if (algo == "maml" and fo) else algo
        if base not in seen:
            seen[base] = _COLOURS.get(base) or next(extra)
        styles[label] = {"color": seen[base], "linestyle": _STYLES.get(agg, "-."), "label": label}
    return styles


def cell_title(cell: tuple[str, str]) -> str:
    family, setting = cell
    return f"{family}\n{setting}" if setting else family


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 4):
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig: plt.Figure, path: Path, legend_handles: Sequence | None = None) -> Path:
    if legend_handles:
        handles, labels = legend_handles
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 0.94))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend_from(axes: Sequence[plt.Axes]) -> tuple[list, list]:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def learning_curves(curves: dict[tuple[str, str], dict[str, pd.DataFrame]],
                    styles: dict[str, dict[str, object]], ylabel: str, path: Path,
                    hline: float | None = None, seed: int = 0) -> Path:
    """One panel per cell; per method the mean over seeds with a 95% bootstrap band.

    Args:
        curves: cell -> method -> DataFrame with index step and one column per seed.
        styles: From :func:`method_styles`.
        ylabel: Axis label.
        path: Output PNG.
        hline: Optional reference level (ln 2 for the book).
        seed: Seed of the bootstrap.
    """
    fig, axes = _grid(len(curves))
    for ax, (cell, by_method) in zip(axes, curves.items(), strict=False):
        for method, frame in by_method.items():
            frame = frame.dropna(axis=1)
            if frame.shape[1] == 0:
                continue
            steps = frame.index.to_numpy()
            values = frame.to_numpy().T  # (seeds, steps)
            mean = values.mean(axis=0)
            st = styles[method]
            ax.plot(steps, mean, color=st["color"], linestyle=st["linestyle"], label=method, lw=1.6)
            if values.shape[0] >= 2:
                low, high = bootstrap_ci_columns(values, rng=seed)
                ax.fill_between(steps, low, high, color=st["color"], alpha=0.15, lw=0)
        if hline is not None:
            ax.axhline(hline, color="black", lw=0.8, ls=":", label="ln 2")
        ax.set_title(cell_title(cell), fontsize=10)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _robust_ylim(ax, [f for f in by_method.values()], hline)
    return _save(fig, path, _legend_from(axes))


def _robust_ylim(ax: plt.Axes, frames: list[pd.DataFrame], hline: float | None = None) -> None:
    """Ignore the first evaluations when they are far off (an untrained model), so curves stay readable."""
    vals = np.concatenate([f.to_numpy().ravel() for f in frames if f.size]) if frames else np.array([])
    vals = vals[np.isfinite(vals)]
    if vals.size < 4:
        return
    lo, hi = np.percentile(vals, [1, 99])
    late = np.concatenate([f.iloc[len(f) // 5:].to_numpy().ravel() for f in frames if f.size])
    late = late[np.isfinite(late)]
    if late.size:
        lo, hi = min(lo, late.min()), max(np.percentile(vals, 90), late.max())
    if hline is not None:
        lo, hi = min(lo, hline), max(hi, hline)
    pad = 0.05 * (hi - lo if hi > lo else abs(hi) + 1e-9)
    ax.set_ylim(lo - pad, hi + pad)


def forest(rows: list[tuple[str, str, float, float, float]], styles: dict[str, dict[str, object]],
           xlabel: str, path: Path) -> Path:
    """Paired differences with CIs: one row per (cell, pair), a line at 0.

    Args:
        rows: ``(cell label, treatment method, mean, low, high)`` in display order.
        styles: Method styles (the treatment's colour is used).
        xlabel: Axis label (says which sign is better).
        path: Output PNG.
    """
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.4))
    ys = np.arange(len(rows))[::-1]
    for y, (_, method, mean, low, high) in zip(ys, rows, strict=True):
        st = styles[method]
        err = None if np.isnan(low) else [[mean - low], [high - mean]]
        ax.errorbar(mean, y, xerr=err, fmt="o", color=st["color"], capsize=3, ms=5,
                    label=method)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{cell}: {m}" for cell, m, *_ in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, _legend_from([ax]))


def weight_histograms(data: dict[tuple[str, str], dict[str, np.ndarray]],
                      styles: dict[str, dict[str, object]], path: Path) -> Path:
    """Distribution of relative weights ``T * w_i`` (1 = uniform) per cell and method."""
    fig, axes = _grid(len(data))
    for ax, (cell, by_method) in zip(axes, data.items(), strict=False):
        allv = np.concatenate(list(by_method.values())) if by_method else np.array([1.0])
        lo, hi = np.percentile(allv, [0.5, 99.5])
        lo, hi = min(lo, -0.1), max(hi, 2.0)
        bins = np.linspace(lo, hi, 60)
        for method, v in by_method.items():
            st = styles[method]
            ax.hist(np.clip(v, lo, hi), bins=bins, density=True, histtype="step", lw=1.5,
                    color=st["color"], linestyle=st["linestyle"], label=method)
        ax.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_title(cell_title(cell), fontsize=10)
        ax.set_xlabel("relative weight T * w_i (1 = uniform)")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
    return _save(fig, path, _legend_from(axes))


def smoothed_lines(data: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]],
                   styles: dict[str, dict[str, object]], ylabel: str, path: Path,
                   hline: float | None = None) -> Path:
    """Per cell, one line per method: ``method -> (steps, values)``."""
    fig, axes = _grid(len(data))
    for ax, (cell, by_method) in zip(axes, data.items(), strict=False):
        for method, (x, y) in by_method.items():
            st = styles.get(method.split(" ")[0], {"color": "gray", "linestyle": "-"})
            ls = st["linestyle"]
            if method.endswith("(corrupted)"):
                ls = "-"
            elif method.endswith("(clean)"):
                ls = ":"
            ax.plot(x, y, color=st["color"], linestyle=ls, lw=1.5, label=method)
        if hline is not None:
            ax.axhline(hline, color="gray", lw=0.8, ls=":")
        ax.set_title(cell_title(cell), fontsize=10)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return _save(fig, path, _legend_from(axes))


def by_setting(data: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]],
               styles: dict[str, dict[str, object]], xlabel: str, ylabel: str, path: Path) -> Path:
    """Per family, metric vs a numeric setting: ``family -> method -> (x, mean, low, high)``."""
    fig, axes = _grid(len(data), max_cols=3)
    for ax, (family, by_method) in zip(axes, data.items(), strict=False):
        for method, (x, mean, low, high) in by_method.items():
            st = styles[method]
            ax.plot(x, mean, marker="o", color=st["color"], linestyle=st["linestyle"], label=method)
            ax.fill_between(x, low, high, color=st["color"], alpha=0.12, lw=0)
        ax.set_title(family, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return _save(fig, path, _legend_from(axes))
