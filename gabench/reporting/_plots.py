"""PNG figures of a report (matplotlib, Agg backend): curves with bands, forest plots, weights,
performance profiles. Each function draws prepared data; no statistics are computed here beyond
the bands of :func:`~gabench.reporting._stats.t_interval_columns`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gabench.reporting._stats import t_interval_columns  # noqa: E402

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
                    hline: float | None = None) -> Path:
    """One panel per cell (cells without data get none); per method the mean over seeds with a
    95% Student-t band over seeds.

    Args:
        curves: cell -> method -> DataFrame with index step and one column per seed.
        styles: From :func:`method_styles`.
        ylabel: Axis label.
        path: Output PNG.
        hline: Optional reference level (ln 2 for the book).
    """
    curves = {c: {m: f.dropna(axis=1) for m, f in bm.items() if f.dropna(axis=1).shape[1]}
              for c, bm in curves.items()}
    curves = {c: bm for c, bm in curves.items() if bm}
    fig, axes = _grid(max(len(curves), 1))
    for ax, (cell, by_method) in zip(axes, curves.items(), strict=False):
        shown, bands = [], []
        for method, frame in by_method.items():
            steps = frame.index.to_numpy()
            values = frame.to_numpy().T  # (seeds, steps)
            mean = values.mean(axis=0)
            st = styles[method]
            ax.plot(steps, mean, color=st["color"], linestyle=st["linestyle"], label=method, lw=1.6)
            shown.append(mean)
            if values.shape[0] >= 2:
                low, high = t_interval_columns(values)
                ax.fill_between(steps, low, high, color=st["color"], alpha=0.15, lw=0)
                bands += [low, high]
        if hline is not None:
            ax.axhline(hline, color="black", lw=0.8, ls=":", label="ln 2")
            shown.append(np.array([hline]))
        ax.set_title(cell_title(cell), fontsize=10)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _fit_ylim(ax, shown, bands)
    return _save(fig, path, _legend_from(axes))


def _fit_ylim(ax: plt.Axes, series: list[np.ndarray], bands: list[np.ndarray] | None = None) -> None:
    """Y-limits that show every plotted mean, the first evaluations included, and the bands up to
    half the means' range beyond them; a log axis when the values span more than a factor of 10
    (an untrained model far above the trained ones)."""
    vals = np.concatenate([np.ravel(s) for s in series]) if series else np.array([])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return
    lo, hi = float(vals.min()), float(vals.max())
    band = np.concatenate([np.ravel(b) for b in bands]) if bands else np.array([])
    band = band[np.isfinite(band)]
    if band.size:
        reach = 0.5 * (hi - lo)
        lo, hi = min(lo, max(float(band.min()), lo - reach)), max(hi, min(float(band.max()), hi + reach))
    if lo > 0 and hi / lo > 10:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.15, hi * 1.15)
        return
    pad = 0.06 * (hi - lo if hi > lo else abs(hi) + 1e-9)
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


def _share_pct(share: float) -> str:
    """A share as a percentage with two significant digits: ``0.0123`` -> ``1.2%``, ``1.0`` -> ``100%``."""
    pct = 100 * share
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def weight_histograms(data: dict[tuple[str, str], dict[str, np.ndarray]], edges: np.ndarray,
                      styles: dict[str, dict[str, object]], path: Path) -> Path:
    """Distribution of relative weights ``T * w_i`` (1 = uniform) per cell and method.

    Args:
        data: cell -> method -> counts of shape (len(edges) + 1,): below ``edges[0]``, the
            ``len(edges) - 1`` bins, above ``edges[-1]``.
        edges: Bin edges, shape (k,).
        styles: Method styles.
        path: Output PNG.

    Weights outside the range are drawn in the edge bins, and each panel whose weights were
    clipped says the largest share of any method, and which (PCGrad's relative weights are about
    ``T``: TorchJD's PCGrad sums the projected rows).
    """
    fig, axes = _grid(max(len(data), 1))
    width = float(edges[1] - edges[0])
    for ax, (cell, by_method) in zip(axes, data.items(), strict=False):
        clipped = []
        for method, counts in by_method.items():
            c = np.asarray(counts, dtype=float).copy()
            total = c.sum()
            if total == 0:
                continue
            inner = c[1:-1].copy()
            inner[0] += c[0]
            inner[-1] += c[-1]
            clipped.append(((c[0] + c[-1]) / total, method))
            st = styles[method]
            ax.stairs(inner / (total * width), edges, color=st["color"], linestyle=st["linestyle"], lw=1.5,
                      label=method)
        ax.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax.axvline(0.0, color="black", lw=0.8)
        title = cell_title(cell)
        share, worst = max(clipped, default=(0.0, ""))
        if share > 0:
            title += (f"\n{_share_pct(share)} of {worst}'s weights outside [{edges[0]:g}, {edges[-1]:g}] "
                      f"(in the edge bins)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("relative weight T * w_i (1 = uniform)")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
    return _save(fig, path, _legend_from(axes))


def performance_profile(profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                        styles: dict[str, dict[str, object]], xlabel: str, path: Path) -> Path:
    """Performance profiles: per compared pair, the fraction of runs whose score exceeds tau.

    Args:
        profiles: Label ("method - baseline") -> (taus, fractions, band low, band high), arrays of
            shape (k,).
        styles: Method styles (keyed by the method, the label's first word).
        xlabel: What tau is.
        path: Output PNG.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (taus, frac, low, high) in profiles.items():
        st = styles.get(label.split(" ")[0], {"color": "gray", "linestyle": "-"})
        ax.step(taus, frac, where="post", color=st["color"], linestyle=st["linestyle"], lw=1.6, label=label)
        ax.fill_between(taus, low, high, step="post", color=st["color"], alpha=0.15, lw=0)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of runs (cell x seed) with score > tau")
    ax.grid(alpha=0.3)
    return _save(fig, path, _legend_from([ax]))


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
