"""The report sections of a tuned study: the Optuna tuning behind it, and tuned against untuned.

A study with a ``[tuning]`` table (``study.json`` has a ``tuning`` entry) takes every family x
method's alpha and beta from the best trial of its own Optuna study (``gabench tune --study``).
Its report gets two more sections:

- **Tuning**: the protocol (trials, sampler seed, task seed, pruner warm-up, objective,
  selection, ranges per family), per cell the tuned alpha and beta with their best validation
  value, the trials by state (so that a reader sees every method of a family had the same
  budget), an EDGE flag when a best value lies near an end of its range, Optuna's fANOVA
  parameter importance, and one alpha x beta figure per family;
- **Tuned vs untuned**: cell by cell, the verdicts of this report's ``comparisons.csv`` against
  those of the untuned report of the same comparison (``reports/paper`` for ``reports/tuned``),
  where the conclusion changed, and every method's tuned and untuned meta-test means.

Everything is read once from the Optuna storage and the untuned report, and kept in the report's
``data/`` as four tidy tables, so that ``gabench report reports/<study>/data`` rebuilds both
sections without either:

=======================  =======================================================================
``tuning_studies``       one row per cell: study (Optuna name), family_label, setting, method,
                         storage, found, direction, metric_name, objective, select, base_config
                         (JSON of the run every trial started from)
``tuning_trials``        one row per trial: study, number, state, value, alpha, beta, params and
                         distributions (JSON, exact), duration_s, val_step, reason
``untuned_comparisons``  the untuned report's primary comparisons (``comparisons.csv`` rows)
                         with its name, path and number of Holm-corrected tests
``untuned_means``        the untuned report's meta-test mean [interval] per cell x method x
                         primary metric, with the alpha and beta its runs used
=======================  =======================================================================

A table of trials rather than a copy of the journal: it is a few kB of parquet like the rest of
``data/``, it can be read without Optuna and without replaying a log whose format belongs to
Optuna's version, and the journal itself is committed beside the study file anyway. The
importances are recomputed from it by rebuilding each cell's study in memory
(:func:`rebuild_study`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gabench._errors import ConfigError
from gabench.reporting import _analysis as an
from gabench.reporting._data import RUN_BOUND_EXTRAS, ReportData, read_report_data

STUDIES, TRIALS = RUN_BOUND_EXTRAS  # dropped from an archive when its runs change
UNTUNED_COMPARISONS, UNTUNED_MEANS = "untuned_comparisons", "untuned_means"
#: A best value within this share of its range's log-width of an end is flagged EDGE.
EDGE_FRACTION = 0.1
#: Seed of the fANOVA random forest (the importances are deterministic).
IMPORTANCE_SEED = 0
#: Trial states counted against the budget once ended.
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
#: The states that spend a study's budget (gabench.tuning.FINISHED): a FAIL trial is redone.
BUDGET_STATES = ("COMPLETE", "PRUNED")
_STUDY_COLUMNS = ["study", "family_label", "setting", "method", "storage", "found", "direction",
                  "metric_name", "objective", "select", "base_config"]
_TRIAL_COLUMNS = ["study", "number", "state", "value", "alpha", "beta", "params", "distributions",
                  "duration_s", "val_step", "reason"]
_UNTUNED_MEAN_COLUMNS = ["report", "path", "select", "family_label", "setting", "method", "metric",
                         "n_seeds", "mean", "low", "high", "alpha", "beta"]
_SELECT_TEXT = {"best_val": "its best meta-validation value", "final": "its last meta-validation value"}


# ---------------------------------------------------------------------------- the cells
def tuning_cells(meta: dict[str, Any]) -> pd.DataFrame:
    """The Optuna study of every family (x setting) x method of a tuned study's plan.

    The study of a cell is named like its runs without the seed: run ``<family>__<method>__s<seed>
    [__<setting>]`` of study ``<name>`` was tuned in ``<name>__<family>__<method>[__<setting>]``.

    Returns:
        Columns study, family_label, setting, method; in plan order.
    """
    rows, seen = [], set()
    for r in meta.get("runs", []):
        key = (r["family_label"], r.get("setting", "") or "", r["method_label"])
        if key in seen:
            continue
        seen.add(key)
        prefix = f"{r['family_label']}__{r['method_label']}__s{r['seed']}"
        suffix = r["run_id"][len(prefix):] if r["run_id"].startswith(prefix) else ""
        rows.append((f"{meta['name']}__{r['family_label']}__{r['method_label']}{suffix}", *key))
    return pd.DataFrame(rows, columns=["study", "family_label", "setting", "method"])


def read_tuning_storage(meta: dict[str, Any],
                        storage: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the Optuna study of every cell of a tuned study into the two tidy tables.

    Args:
        meta: ``study.json`` of the study (its ``tuning`` entry names the storage).
        storage: Another storage URL to read instead (``journal:PATH``, ``sqlite:///PATH``).

    Returns:
        ``(tuning_studies, tuning_trials)``, see the module docstring.

    Raises:
        ConfigError: the storage cannot be opened (nothing is created).
    """
    import optuna

    from gabench.tuning import make_storage

    url = storage or meta["tuning"]["storage"]
    try:
        opened = make_storage(url, create=False)
    except ConfigError as exc:
        raise ConfigError("--tuning-storage", url, f"the Optuna storage of study {meta.get('name')!r}: "
                          f"{exc.allowed}") from None
    names = set(optuna.get_all_study_names(opened))
    studies, trials = [], []
    for cell in tuning_cells(meta).itertuples(index=False):
        row = {**cell._asdict(), "storage": url, "found": cell.study in names, "direction": "",
               "metric_name": "", "objective": "", "select": "", "base_config": ""}
        if row["found"]:
            study = optuna.load_study(study_name=cell.study, storage=opened)
            attrs = study.user_attrs
            row.update(direction=study.direction.name.lower(), metric_name=(study.metric_names or [""])[0],
                       objective=str(attrs.get("objective", "")), select=str(attrs.get("select", "")),
                       base_config=json.dumps(attrs.get("base_config", {}), sort_keys=True))
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                trials.append(_trial_row(cell.study, t))
        studies.append(row)
    return (pd.DataFrame(studies, columns=_STUDY_COLUMNS),
            _typed_trials(pd.DataFrame(trials, columns=_TRIAL_COLUMNS)))


def _trial_row(study: str, t: Any) -> dict[str, Any]:
    from optuna.distributions import distribution_to_json

    duration = (t.datetime_complete - t.datetime_start).total_seconds() \
        if t.datetime_complete is not None and t.datetime_start is not None else math.nan
    value = t.value if t.values is not None and len(t.values) == 1 else None
    return {"study": study, "number": int(t.number), "state": t.state.name,
            "value": math.nan if value is None else float(value),
            "alpha": float(t.params.get("alpha", math.nan)), "beta": float(t.params.get("beta", math.nan)),
            "params": json.dumps(t.params, sort_keys=True),
            "distributions": json.dumps({k: distribution_to_json(d) for k, d in t.distributions.items()},
                                        sort_keys=True),
            "duration_s": float(duration),
            "val_step": float(t.user_attrs["val_step"]) if t.user_attrs.get("val_step") is not None
            else math.nan,
            "reason": str(t.user_attrs.get("reason", ""))}


def _typed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    trials = trials.astype({"number": "int64", "value": "float64", "alpha": "float64", "beta": "float64",
                            "duration_s": "float64", "val_step": "float64"})
    for col in ("study", "state", "params", "distributions", "reason"):
        trials[col] = trials[col].astype(str)
    return trials.reset_index(drop=True)


# ---------------------------------------------------------------------------- in-memory studies
def rebuild_study(trials: pd.DataFrame, direction: str, *, log_scale: bool = False) -> Any:
    """An in-memory Optuna study holding the given trials (one cell's rows of ``tuning_trials``).

    Args:
        trials: Rows of one study's trials.
        direction: ``minimize`` or ``maximize``.
        log_scale: Replace every log-distributed parameter by its log10 on a uniform range (the
            scale the sampler drew it on), for importances that weigh the range as it was searched.

    Returns:
        An ``optuna.Study`` (in memory) with a :class:`~optuna.trial.FrozenTrial` per ended trial
        (complete, pruned, failed) with its state, value, parameters and distributions.
    """
    import optuna
    from optuna.distributions import FloatDistribution, json_to_distribution

    from gabench.tuning import _quiet_optuna

    _quiet_optuna()
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    frozen = []
    for r in trials.itertuples(index=False):
        if r.state not in FINISHED_STATES:
            continue
        params = json.loads(r.params)
        dists = {k: json_to_distribution(v) for k, v in json.loads(r.distributions).items()}
        if log_scale:
            for k, d in list(dists.items()):
                if isinstance(d, FloatDistribution) and d.log:
                    dists[k] = FloatDistribution(math.log10(d.low), math.log10(d.high))
                    params[k] = math.log10(params[k])
        value = None if r.state == "FAIL" or not math.isfinite(r.value) else float(r.value)
        frozen.append(optuna.trial.create_trial(state=optuna.trial.TrialState[r.state], value=value,
                                                params=params, distributions=dists))
    study.add_trials(frozen)
    return study


def importances(studies: pd.DataFrame, trials: pd.DataFrame, seed: int = IMPORTANCE_SEED) -> pd.DataFrame:
    """Optuna's fANOVA importance of every tuned parameter per cell, from the trials table alone.

    ``optuna.importance.get_param_importances`` with ``FanovaImportanceEvaluator(seed=seed)`` (Optuna
    5 defaults to PED-ANOVA, which needs more trials than a cell's budget to separate its top
    quantile), on the completed trials, with log-distributed parameters on their log10 scale.

    Returns:
        Columns study, param, importance (normalised to sum 1 per cell; NaN with fewer than 2
        completed trials), n_complete.
    """
    import optuna

    rows = []
    for s in studies.itertuples(index=False):
        part = trials[trials["study"] == s.study]
        complete = part[part["state"] == "COMPLETE"]
        params = sorted(set().union(*[json.loads(p) for p in complete["params"]])) if len(complete) else []
        if len(complete) < 2:
            rows += [(s.study, p, math.nan, len(complete)) for p in params]
            continue
        study = rebuild_study(part, s.direction or "minimize", log_scale=True)
        ev = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        imp = optuna.importance.get_param_importances(study, evaluator=ev)
        rows += [(s.study, p, float(imp.get(p, math.nan)), len(complete)) for p in params]
    return pd.DataFrame(rows, columns=["study", "param", "importance", "n_complete"])


# ---------------------------------------------------------------------------- per cell
def edge_position(value: float, low: float, high: float, log: bool = True) -> float:
    """Where ``value`` lies in ``[low, high]``: 0 at the low end, 1 at the high end (log scale)."""
    if log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def edge_flags(position: float, fraction: float = EDGE_FRACTION) -> str:
    """``low`` / ``high`` when a position (:func:`edge_position`) is within ``fraction`` of an end."""
    if not math.isfinite(position):
        return ""
    return "low" if position < fraction else "high" if position > 1 - fraction else ""


def cell_summary(studies: pd.DataFrame, trials: pd.DataFrame, budget: int,
                 meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per cell: the best trial, its alpha and beta, their ranges and edge flags, the
    trials by state, whether the cell holds its budget, and whether the compared runs used it.

    Returns:
        Columns study, family_label, setting, method, best_number, best_value, alpha, beta,
        alpha_low, alpha_high, beta_low, beta_high, alpha_pos, beta_pos, alpha_edge, beta_edge,
        complete, pruned, fail, running, finished, short, runs_match (True, False, or None when
        the plan records no alpha), tuning_seconds.
    """
    from optuna.distributions import json_to_distribution

    runs = pd.DataFrame((meta or {}).get("runs", []))
    rows = []
    for s in studies.itertuples(index=False):
        part = trials[trials["study"] == s.study]
        counts = part["state"].value_counts()
        row: dict[str, Any] = {"study": s.study, "family_label": s.family_label, "setting": s.setting,
                               "method": s.method,
                               **{k.lower(): int(counts.get(k, 0)) for k in (*FINISHED_STATES, "RUNNING")}}
        row["finished"] = sum(row[k.lower()] for k in BUDGET_STATES)
        row["short"] = row["finished"] < budget
        row["tuning_seconds"] = float(part["duration_s"].sum())
        complete = part[(part["state"] == "COMPLETE") & np.isfinite(part["value"])]
        best = None
        if len(complete):
            values = complete["value"].to_numpy()
            i = int(np.argmax(values) if s.direction == "maximize" else np.argmin(values))  # first best
            best = complete.iloc[i]
        for p in ("alpha", "beta"):
            row[p] = float(best[p]) if best is not None else math.nan
            low = high = pos = math.nan
            source = best if best is not None else (part.iloc[0] if len(part) else None)
            if source is not None:
                d = json.loads(source["distributions"]).get(p)
                if d is not None:
                    dist = json_to_distribution(d)
                    low, high = float(dist.low), float(dist.high)
                    if best is not None:
                        pos = edge_position(row[p], low, high, bool(getattr(dist, "log", False)))
            row.update({f"{p}_low": low, f"{p}_high": high, f"{p}_pos": pos, f"{p}_edge": edge_flags(pos)})
        row["other_params"] = _other_params(best) if best is not None else ""
        row["best_number"] = int(best["number"]) if best is not None else -1
        row["best_value"] = float(best["value"]) if best is not None else math.nan
        row["runs_match"] = None
        if best is not None and {"alpha", "beta", "family_label", "method_label"} <= set(runs):
            sel = runs[(runs["family_label"] == s.family_label) & (runs["method_label"] == s.method)
                       & (runs.get("setting", pd.Series("", index=runs.index)).fillna("") == s.setting)]
            if len(sel):
                row["runs_match"] = bool(np.allclose(sel["alpha"].astype(float), row["alpha"], rtol=1e-9)
                                         and np.allclose(sel["beta"].astype(float), row["beta"], rtol=1e-9))
        rows.append(row)
    return pd.DataFrame(rows)


def _other_params(best: pd.Series) -> str:
    """``name=value (position; EDGE ...)`` for each tuned parameter of the best trial other than
    alpha and beta (an aggregator's, e.g. ga-softmax's temperature), ``""`` when there is none."""
    from optuna.distributions import json_to_distribution

    params, dists = json.loads(best["params"]), json.loads(best["distributions"])
    out = []
    for name in sorted(set(params) - {"alpha", "beta"}):
        text = f"{name}={_g(float(params[name]))}"
        if name in dists:
            dist = json_to_distribution(dists[name])
            pos = edge_position(float(params[name]), float(dist.low), float(dist.high),
                                bool(getattr(dist, "log", False)))
            flag = edge_flags(pos)
            text += f" ({pos:.2f}" + (f"; **EDGE** {flag}" if flag else "") + ")"
        out.append(text)
    return ", ".join(out)


# ---------------------------------------------------------------------------- untuned counterpart
def _plan_signature(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two studies the same comparison: the methods, and per family its budget."""
    methods = tuple(sorted((k, v.get("algorithm"), v.get("aggregator"), bool(v.get("first_order")))
                           for k, v in (meta.get("methods") or {}).items()))
    budgets = sorted({(r["family_label"], r.get("steps"), r.get("eval_every"), r.get("meta_batch"))
                      for r in meta.get("runs", [])})
    return methods, tuple(budgets)


def find_untuned(meta: dict[str, Any], reports_root: str | Path, exclude: Path | None = None) -> list[Path]:
    """Reports under ``reports_root`` of the same comparison without tuning.

    A candidate is a report directory (``<reports_root>/<name>/`` with ``comparisons.csv`` and
    ``data/study.json``) whose study has no ``[tuning]`` table, the same methods (labels, algorithms,
    aggregators, first order) and per family the same budget (steps, eval_every, meta_batch).
    """
    root = Path(reports_root)
    if not root.is_dir():
        return []
    want = _plan_signature(meta)
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if exclude is not None and d.resolve() == exclude.resolve():
            continue
        info = d / "data" / "study.json"
        if not (info.is_file() and (d / "comparisons.csv").is_file()):
            continue
        try:
            other = json.loads(info.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if other.get("tuning") or other.get("name") == meta.get("name"):
            continue
        if _plan_signature(other) == want:
            found.append(d)
    return found


def read_untuned(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The untuned report's primary comparisons and per-method meta-test means.

    Args:
        path: A report directory (with ``comparisons.csv`` and ``data/``).

    Returns:
        ``(untuned_comparisons, untuned_means)``, see the module docstring.

    Raises:
        ConfigError: not a report directory with both, or an unreadable table.
    """
    path = Path(path)
    csv = path / "comparisons.csv"
    if not csv.is_file() or not (path / "data" / "data.json").is_file():
        raise ConfigError("--untuned", str(path), "a report directory with comparisons.csv and data/ "
                          "(written by gabench report)")
    try:
        comp = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas raises several types for damaged files
        raise ConfigError("--untuned", str(csv),
                          f"a readable comparisons.csv ({type(exc).__name__})") from None
    for col in ("method_failed", "baseline_failed"):  # not in reports written before they existed
        if col not in comp:
            comp[col] = 0
    missing = [c for c in an.COMPARISON_COLUMNS if c not in comp]
    if missing:
        raise ConfigError("--untuned", str(csv),
                          f"the columns of comparisons.csv (lacks {', '.join(missing)})")
    data = read_report_data(path / "data")
    primary = an.primary_select(data)
    comp = comp[comp["metric"].isin(an.PRIMARY) & (comp["select"] == primary)].copy()
    comp["setting"] = comp["setting"].fillna("") if "setting" in comp else ""
    comp["report"], comp["path"], comp["n_tests"] = data.name, str(path), int(comp["p_value"].notna().sum())
    comp["cell"] = comp["cell"].astype(str)
    means = _method_means(data, primary)
    means.insert(0, "report", data.name)
    means.insert(1, "path", str(path))
    means.insert(2, "select", primary)
    return comp.reset_index(drop=True), means[_UNTUNED_MEAN_COLUMNS]


def _method_means(data: ReportData, select: str) -> pd.DataFrame:
    """Meta-test mean [interval] per cell x method x primary metric, with the run's alpha and beta."""
    frames = []
    for metric in an.PRIMARY:
        ivs = an.cell_intervals(an.seed_values(data, metric, select))
        if not ivs.empty:
            frames.append(ivs.assign(metric=metric))
    cols = ["family_label", "setting", "method", "metric", "n_seeds", "mean", "low", "high"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    hp = _hyperparameters(data.meta)
    out = out.merge(hp, on=["family_label", "setting", "method"], how="left")
    return out[[*cols, "alpha", "beta"]]


def _hyperparameters(meta: dict[str, Any]) -> pd.DataFrame:
    runs = pd.DataFrame(meta.get("runs", []))
    cols = ["family_label", "setting", "method", "alpha", "beta"]
    if runs.empty or "alpha" not in runs:
        return pd.DataFrame(columns=cols)
    runs = runs.rename(columns={"method_label": "method"})
    runs["setting"] = runs.get("setting", "").fillna("") if "setting" in runs else ""
    return runs.drop_duplicates(["family_label", "setting", "method"])[cols].astype(
        {"alpha": float, "beta": float})


def tuned_vs_untuned(tuned: pd.DataFrame, untuned: pd.DataFrame) -> pd.DataFrame:
    """Cell by cell, the verdicts of two reports' primary comparisons side by side.

    Args:
        tuned, untuned: Rows of ``comparisons.csv`` (columns metric, cell, method, baseline,
            n_seeds, diff_mean, ci_low, ci_high, p_holm, verdict) of each report's primary family.

    Returns:
        One row per metric x cell x pair present in either: metric, cell, method, baseline and,
        suffixed ``_untuned``/``_tuned``, n_seeds, diff_mean, ci_low, ci_high, p_holm, verdict
        (``""`` where a report lacks the row); ``changed`` (both have the row and their verdicts
        differ) and ``change`` (``"worse -> unresolved"``, or ``""``). In the tuned report's order,
        then the rows only the untuned report has.
    """
    keys = ["metric", "cell", "method", "baseline"]
    cols = ["n_seeds", "diff_mean", "ci_low", "ci_high", "p_holm", "verdict"]
    t = tuned[keys + cols].assign(_order=range(len(tuned)))
    u = untuned[keys + cols].assign(_uorder=range(len(untuned)))
    out = t.merge(u, on=keys, how="outer", suffixes=("_tuned", "_untuned"))
    out = out.sort_values(["_order", "_uorder"], na_position="last", kind="stable").drop(
        columns=["_order", "_uorder"])
    for side in ("tuned", "untuned"):
        out[f"verdict_{side}"] = out[f"verdict_{side}"].fillna("").astype(str)
    both = (out["verdict_tuned"] != "") & (out["verdict_untuned"] != "")
    out["changed"] = both & (out["verdict_tuned"] != out["verdict_untuned"])
    out["change"] = np.where(out["changed"], out["verdict_untuned"] + " -> " + out["verdict_tuned"], "")
    order = keys + [f"{c}_{s}" for c in cols for s in ("untuned", "tuned")] + ["changed", "change"]
    return out[order].reset_index(drop=True)


# ---------------------------------------------------------------------------- preparing a report
def prepare_tuning(data: ReportData, *, storage: str | None = None, untuned: str | Path | None = None,
                   reports_root: str | Path | None = None,
                   out_dir: Path | None = None) -> list[Callable[[Any, Path], str]]:
    """Put the tuning tables into ``data.extra`` (read once; kept from ``data/``) and return the
    report sections (for :func:`~gabench.reporting.build_report`'s ``extra_sections``).

    Args:
        data: The report data of a study with a ``tuning`` entry in ``study.json``.
        storage: Read the trials from this Optuna storage instead of the one ``study.json`` names
            (also when ``data`` comes from a ``data/`` directory that already holds them).
        untuned: The untuned report to compare with: a report directory, ``"none"`` for none, or
            None: keep the one ``data/`` already holds, else look for exactly one candidate under
            ``reports_root`` (:func:`find_untuned`).
        reports_root: Where to look for the untuned report.
        out_dir: The report being written (never its own counterpart).

    Raises:
        ConfigError: an Optuna storage or untuned report that cannot be read.
    """
    if not data.meta.get("tuning"):
        return []
    if storage is not None or STUDIES not in data.extra or TRIALS not in data.extra:
        data.extra[STUDIES], data.extra[TRIALS] = read_tuning_storage(data.meta, storage)
    note = ""
    if untuned is not None and str(untuned).lower() == "none":
        data.extra.pop(UNTUNED_COMPARISONS, None)
        data.extra.pop(UNTUNED_MEANS, None)
    elif untuned is not None:
        data.extra[UNTUNED_COMPARISONS], data.extra[UNTUNED_MEANS] = read_untuned(untuned)
    elif UNTUNED_COMPARISONS not in data.extra and reports_root is not None:
        found = find_untuned(data.meta, reports_root, out_dir)
        if len(found) == 1:
            data.extra[UNTUNED_COMPARISONS], data.extra[UNTUNED_MEANS] = read_untuned(found[0])
        elif found:
            note = ("Several untuned reports of the same comparison were found ("
                    f"{', '.join(map(str, found))}); choose one with `--untuned DIR`.")
    return [tuning_section, lambda d, out: untuned_section(d, out, note)]


# ---------------------------------------------------------------------------- rendering
def _g(x: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}g}"


def _range(low: float, high: float) -> str:
    return "–" if not math.isfinite(low) else f"[{low:g}, {high:g}]"


def _cell(family: str, setting: str) -> str:
    return an.cell_label(family, setting)


def tuning_section(data: Any, out_dir: Path) -> str:
    """Markdown (and one ``tuning_<family>.png`` per family) of the tuning behind a tuned study."""
    from gabench.reporting._render import md_table

    studies: pd.DataFrame = data.extra[STUDIES]
    trials: pd.DataFrame = data.extra[TRIALS]
    proto = data.meta["tuning"]
    budget = int(proto.get("trials", 0))
    cells = cell_summary(studies, trials, budget, data.meta)
    imp = importances(studies, trials)
    found = studies[studies["found"].astype(bool)]
    directions = sorted(set(found["direction"]))
    metric_names = sorted(set(found["metric_name"]) - {""})
    objective = f"`{', '.join(metric_names)}`" if metric_names else f"`{proto.get('objective')}`"
    storage = sorted(set(studies["storage"]))
    seeds = data.meta.get("seeds") or sorted(data.runs["seed"].unique())
    configs = [json.loads(c) for c in found["base_config"] if c]
    task_seeds = sorted({c.get("seed") for c in configs if "seed" in c})

    lines = ["## Tuning: alpha and beta of every family x method (Optuna)", ""]
    lines.append(
        f"Every family x method was tuned in its own Optuna study (`{data.meta.get('name')}__<family>__"
        f"<method>`, in `{', '.join(storage)}`; the trials are copied to `data/tuning_trials.parquet`), "
        f"with the same protocol: {budget} trials per study (complete or pruned; a failed "
        f"trial, from a process that died or was stopped, is redone), the TPE sampler "
        f"with seed {proto.get('sampler_seed')} (trial k samples from (seed, k)), median pruning after "
        f"{proto.get('prune_warmup')} validations beyond the one at step 0; alpha and beta log-uniform "
        f"in the ranges below. Every trial trains on task seed "
        f"{', '.join(map(str, task_seeds)) or proto.get('seed')} (the protocol's: {proto.get('seed')}; "
        f"the compared runs use seeds {', '.join(map(str, seeds))}) and is scored on meta-validation "
        f"tasks only (no meta-test): its value is "
        f"{_SELECT_TEXT.get(proto.get('select'), proto.get('select'))} "
        f"of {objective} ({' / '.join(directions) or '?'}d). The compared runs take the best "
        f"completed trial of their cell.")
    lines.append("")
    missing = studies[~studies["found"].astype(bool)]
    if len(missing):
        lines += [f"> **{len(missing)} cell(s) have no Optuna study in the storage:** "
                  + ", ".join(f"`{s}`" for s in missing["study"]) + ".", ""]

    # ranges per family (from the trials' own distributions)
    rows = []
    for (f, s), g in cells.groupby(["family_label", "setting"], sort=False):
        cfg = next((json.loads(c) for c, st in zip(studies["base_config"], studies["study"], strict=True)
                    if st in set(g["study"]) and c), {})
        rngs = []
        for p in ("alpha", "beta"):
            r = {_range(a, b) for a, b in zip(g[f"{p}_low"], g[f"{p}_high"], strict=True)}
            rngs.append(" / ".join(sorted(r)) + (" (differs between methods)" if len(r) > 1 else ""))
        rows.append([_cell(f, s), *rngs, str(cfg.get("steps", "–")), str(cfg.get("eval_every", "–")),
                     str(cfg.get("seed", "–")), f"{g['tuning_seconds'].sum() / 3600:.2f}"])
    lines += ["### Protocol per family", "",
              "Search ranges as recorded in the trials (log-uniform), and the run every trial starts from.",
              "", md_table(["family", "alpha range", "beta range", "steps", "eval_every", "task seed",
                            "tuning hours (sum of trial times)"], rows), ""]

    # budget
    short = cells[cells["short"]]
    if short.empty:
        lines.append(f"**Budget:** every cell holds {budget} finished trials (the protocol's budget), so "
                     f"every method of a family had the same number of trials.")
    else:
        lines.append(f"> **Budget not met:** {len(short)} cell(s) hold fewer than the protocol's {budget} "
                     f"finished trials: " + ", ".join(
                         f"{_cell(r.family_label, r.setting)} `{r.method}` ({r.finished})" for r in
                         short.itertuples()) + ". Their methods did not have the same budget as the rest of "
                     "their family.")
    running = cells[cells["running"] > 0]
    if len(running):
        lines.append(f" {int(running['running'].sum())} trial(s) were still RUNNING when the trials were "
                     "read.")
    lines.append("")
    mismatch = cells[cells["runs_match"].astype(object).eq(False)]
    if len(mismatch):
        lines += [f"> **The compared runs did not use the best trial** of {len(mismatch)} cell(s) ("
                  + ", ".join(f"{_cell(r.family_label, r.setting)} `{r.method}`"
                              for r in mismatch.itertuples())
                  + "): the storage changed after `gabench compare`; rerun it.", ""]

    # per cell
    edges = cells[(cells["alpha_edge"] != "") | (cells["beta_edge"] != "")]
    others = bool(cells.get("other_params", pd.Series("", index=cells.index)).astype(bool).any())
    rows = []
    for r in cells.itertuples():
        edge = ", ".join(f"**EDGE** {p} {getattr(r, f'{p}_edge')}" for p in ("alpha", "beta")
                         if getattr(r, f"{p}_edge"))
        budget_mark = f"{r.finished}" + (" **short**" if r.short else "")
        rows.append([_cell(r.family_label, r.setting), f"`{r.method}`", _g(r.alpha), _g(r.beta),
                     f"{_g(r.best_value, 4)} (#{r.best_number})" if r.best_number >= 0 else "–",
                     f"{r.complete} / {r.pruned} / {r.fail}", budget_mark,
                     f"{r.alpha_pos:.2f} / {r.beta_pos:.2f}" if math.isfinite(r.alpha_pos) else "–",
                     edge] + ([r.other_params or "–"] if others else []))
    lines += ["### Tuned alpha and beta per cell", "",
              f"Best completed trial (its number), its value ({objective}), trials complete / pruned / "
              f"failed, finished (complete or pruned) trials against the budget of {budget}, and where the "
              f"best alpha and beta "
              f"lie in their ranges on the log scale (0 = low end, 1 = high end). **EDGE** marks a best "
              f"value within {100 * EDGE_FRACTION:g}% of the range's log-width of an end: the optimum may "
              f"lie outside the range, so that range should be widened on that side and the cell tuned "
              f"again.", "",
              md_table(["family", "method", "alpha", "beta", "best value (trial)",
                        "complete / pruned / failed", "finished", "position alpha / beta", "edge"]
                       + (["other tuned parameters (position)"] if others else []), rows), ""]
    if edges.empty:
        lines += ["No best value lies at an edge of its range.", ""]
    else:
        lines += [f"{len(edges)} of {len(cells)} cells have a best value at an edge: "
                  + "; ".join(f"{_cell(r.family_label, r.setting)} `{r.method}` ("
                              + ", ".join(f"{p} {getattr(r, f'{p}_edge')}" for p in ("alpha", "beta")
                                          if getattr(r, f"{p}_edge")) + ")" for r in edges.itertuples())
                  + ". Their ranges should be widened.", ""]

    # importances
    params = list(dict.fromkeys(imp["param"]))
    if params:
        idx = {(r.study, r.param): r for r in imp.itertuples()}
        rows = []
        for r in cells.itertuples():
            vals = [idx.get((r.study, p)) for p in params]
            n = next((v.n_complete for v in vals if v is not None), r.complete)
            rows.append([_cell(r.family_label, r.setting), f"`{r.method}`",
                         *[f"{v.importance:.2f}" if v is not None and math.isfinite(v.importance) else "–"
                           for v in vals], str(n)])
        lines += ["### Parameter importance (Optuna, fANOVA)", "",
                  f"`optuna.importance.get_param_importances` with `FanovaImportanceEvaluator(seed="
                  f"{IMPORTANCE_SEED})` on the completed trials of each cell, with alpha and beta on the "
                  "log10 scale they were sampled on (Optuna's fANOVA otherwise integrates over the raw "
                  "values, where the top decade of a log range fills at least 90% of the space); importances "
                  "sum to 1 per cell, and rest on the number of completed trials shown (a random forest "
                  "fitted to so few points is a rough guide). Recomputed from `data/tuning_trials.parquet` "
                  "alone.", "",
                  md_table(["family", "method", *params, "completed trials"], rows), ""]

    # figures
    lines += ["### Validation value over alpha and beta", "",
              "One figure per family, one panel per method: every trial at its (alpha, beta) on log axes "
              "spanning the search range; completed trials coloured by their value (one colour scale per "
              "family, bright = better), pruned trials grey x, failed trials red +, the best trial a star; "
              f"the shaded bands are the outer {100 * EDGE_FRACTION:g}% of each range (EDGE). The "
              "background is the value interpolated between the completed trials (a guide for the eye, not a "
              "model).", ""]
    for (f, s), g in cells.groupby(["family_label", "setting"], sort=False):
        name = _figure_name(f, s)
        drawn = _plot_family(g, trials, studies, out_dir / name, _cell(f, s))
        if drawn:
            lines += [f"![{_cell(f, s)}: value over alpha and beta]({name})", ""]
    return "\n".join(lines)


def _figure_name(family: str, setting: str) -> str:
    label = f"{family}_{setting}" if setting else family
    slug = "".join(c if c.isalnum() or c in "._+-" else "_" for c in label)
    return f"tuning_{slug}.png"


def _plot_family(cells: pd.DataFrame, trials: pd.DataFrame, studies: pd.DataFrame, path: Path,
                 title: str) -> bool:
    """Scatter (and interpolated contour) of every trial of one family's cells; False: nothing to draw."""
    from gabench.reporting._plots import plt

    parts = [trials[trials["study"] == s] for s in cells["study"]]
    if not any(len(p) for p in parts):
        return False
    # Matplotlib's defaults, whatever style an earlier figure of this process left behind (Optuna's
    # plots switch to ggplot globally), so that the figure does not depend on what ran before.
    with plt.style.context("default"):
        _draw_family(cells, parts, studies, path, title)
    return True


def _draw_family(cells: pd.DataFrame, parts: list[pd.DataFrame], studies: pd.DataFrame, path: Path,
                 title: str) -> None:
    import matplotlib.colors as mcolors
    import matplotlib.tri as mtri

    from gabench.reporting._plots import _legend_from, plt

    direction = studies.set_index("study").loc[list(cells["study"]), "direction"]
    maximize = (direction == "maximize").any()
    comp = pd.concat([p[(p["state"] == "COMPLETE") & np.isfinite(p["value"])] for p in parts])
    use_log = (not maximize) and len(comp) and bool((comp["value"] > 0).all())

    def colour_value(v: np.ndarray) -> np.ndarray:
        return np.log10(v) if use_log else v

    cv = colour_value(comp["value"].to_numpy()) if len(comp) else np.array([0.0, 1.0])
    lo, hi = float(np.min(cv)), float(np.max(cv))
    norm = mcolors.Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = plt.get_cmap("viridis" if maximize else "viridis_r")
    n = len(cells)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.7 * cols + 1.0, 3.3 * rows + 0.9), squeeze=False,
                             layout="constrained")
    for ax in grid.ravel()[n:]:
        ax.set_visible(False)
    axes = grid.ravel()[:n]
    for ax, r, part in zip(axes, cells.itertuples(), parts, strict=True):
        xlo, xhi, ylo, yhi = r.alpha_low, r.alpha_high, r.beta_low, r.beta_high
        ax.set_xscale("log")
        ax.set_yscale("log")
        c = part[(part["state"] == "COMPLETE") & np.isfinite(part["value"])]
        if len(c) >= 4 and math.isfinite(xlo):
            try:
                tri = mtri.Triangulation(np.log10(c["alpha"].to_numpy()), np.log10(c["beta"].to_numpy()))
                gx, gy = np.meshgrid(np.linspace(math.log10(xlo), math.log10(xhi), 60),
                                     np.linspace(math.log10(ylo), math.log10(yhi), 60))
                z = mtri.LinearTriInterpolator(tri, colour_value(c["value"].to_numpy()))(gx, gy)
                ax.contourf(10 ** gx, 10 ** gy, z, levels=12, cmap=cmap, norm=norm, alpha=0.35)
            except (RuntimeError, ValueError):  # collinear or repeated points: no triangulation
                pass
        for state, marker, colour, size in (("PRUNED", "x", "0.55", 22), ("FAIL", "+", "#d62728", 30)):
            q = part[part["state"] == state]
            if len(q):
                ax.scatter(q["alpha"], q["beta"], marker=marker, c=colour, s=size, lw=1, label=state.lower())
        if len(c):
            ax.scatter(c["alpha"], c["beta"], c=colour_value(c["value"].to_numpy()), cmap=cmap, norm=norm,
                       s=28, edgecolors="black", linewidths=0.4, label="complete")
        if r.best_number >= 0:
            ax.scatter([r.alpha], [r.beta], marker="*", s=240, c=colour_value(np.array([r.best_value])),
                       cmap=cmap, norm=norm, edgecolors="black", linewidths=1.2, zorder=5, label="best",
                       clip_on=False)
        if math.isfinite(xlo):
            fx = (xhi / xlo) ** EDGE_FRACTION
            fy = (yhi / ylo) ** EDGE_FRACTION
            for a, b in ((xlo, xlo * fx), (xhi / fx, xhi)):
                ax.axvspan(a, b, color="0.5", alpha=0.12, lw=0)
            for a, b in ((ylo, ylo * fy), (yhi / fy, yhi)):
                ax.axhspan(a, b, color="0.5", alpha=0.12, lw=0)
            ax.set_xlim(xlo, xhi)
            ax.set_ylim(ylo, yhi)
        edge = " EDGE" if (r.alpha_edge or r.beta_edge) else ""
        ax.set_title(f"{r.method}{edge}\n{r.complete}/{r.pruned}/{r.fail} complete/pruned/failed", fontsize=9)
        ax.set_xlabel("alpha (inner step)", fontsize=9)
        ax.set_ylabel("beta (outer step)", fontsize=9)
        ax.tick_params(labelsize=8)
    handles, labels = _legend_from(axes)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    metric = studies.set_index("study").loc[cells["study"].iloc[0], "metric_name"] or "value"
    fig.colorbar(sm, ax=grid.ravel().tolist(), label=f"{'log10 ' if use_log else ''}{metric}", shrink=0.7)
    fig.suptitle(f"{title}: trials over alpha and beta", fontsize=10)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def untuned_section(data: Any, out_dir: Path, note: str = "") -> str:
    """Markdown: this (tuned) report's primary verdicts against the untuned report's, cell by cell."""
    from gabench.reporting._render import fmt_interval, fmt_p, md_table
    from gabench.reporting._stats import Interval

    if UNTUNED_COMPARISONS not in data.extra:
        text = ("No untuned report of the same comparison was found beside this one (a report of a study "
                "without [tuning], the same methods and per family the same budget); name one with "
                "`gabench report ... --untuned reports/NAME`.")
        return "\n".join(["## Tuned vs untuned", "", note or text, ""])
    ucomp: pd.DataFrame = data.extra[UNTUNED_COMPARISONS]
    umeans: pd.DataFrame = data.extra[UNTUNED_MEANS]
    comp = an.comparisons(data)
    prim = comp[comp["test_family"] == "primary"]
    table = tuned_vs_untuned(prim, ucomp)
    name = str(ucomp["report"].iloc[0]) if len(ucomp) else str(umeans["report"].iloc[0])
    where = str(ucomp["path"].iloc[0]) if len(ucomp) else str(umeans["path"].iloc[0])
    n_u = int(ucomp["n_tests"].iloc[0]) if len(ucomp) else 0
    n_t = int(prim["p_value"].notna().sum())
    u_select = str(umeans["select"].iloc[0]) if len(umeans) else "?"
    t_select = an.primary_select(data)

    def diff(r: Any, side: str) -> str:
        v = getattr(r, f"verdict_{side}")
        if not v:
            return "–"
        iv = Interval(getattr(r, f"diff_mean_{side}"), getattr(r, f"ci_low_{side}"),
                      getattr(r, f"ci_high_{side}"), int(getattr(r, f"n_seeds_{side}")))
        mark = f"**{v}**" if v != "unresolved" else v
        return f"{mark}: {fmt_interval(iv)}, p_H={fmt_p(getattr(r, f'p_holm_{side}'))}"

    changed = table[table["changed"]]
    lines = ["## Tuned vs untuned", "",
             f"The untuned comparison is the report `{name}` (`{where}`): the same families, methods and "
             f"budgets with alpha and beta as its study file sets them. Per cell and compared pair, its "
             f"verdict against this report's, each under its own primary selection (untuned `{u_select}`, "
             f"tuned `{t_select}`) and Holm correction ({n_u} primary tests there, {n_t} here); diff = "
             f"method - baseline [95% paired-t interval], p_H = Holm-adjusted p. The verdict tables "
             f"are saved in `data/` (`{UNTUNED_COMPARISONS}.parquet`, `{UNTUNED_MEANS}.parquet`), so this "
             f"section is rebuilt without the untuned report.", ""]
    both = table[(table["verdict_tuned"] != "") & (table["verdict_untuned"] != "")]
    seeds = [sorted({int(n) for n in both[f"n_seeds_{k}"].dropna()}) for k in ("untuned", "tuned")]
    if len(both) and seeds[0] != seeds[1]:
        lines += [f"The untuned report paired {'/'.join(map(str, seeds[0]))} seeds per cell, this one "
                  f"{'/'.join(map(str, seeds[1]))}: a verdict can change with the number of seeds (narrower "
                  f"intervals) as well as with the tuning.", ""]
    what = "comparisons (metric x cell x pair) made in both reports"
    if changed.empty:
        lines.append(f"**The conclusion changed in none of the {len(both)} {what}.**")
    else:
        kinds = changed.groupby("change", sort=False)
        lines.append(f"**The conclusion changed in {len(changed)} of {len(both)} {what}:** " + "; ".join(
                         f"{k} in {len(g)} ("
                         + ", ".join(f"`{r.method}` on {r.cell}, `{r.metric}`" for r in g.itertuples()) + ")"
                         for k, g in kinds) + ".")
    only = table[(table["verdict_tuned"] == "") | (table["verdict_untuned"] == "")]
    if len(only):
        lines.append(f" {len(only)} row(s) exist in one report only.")
    lines.append("")
    rows = [[f"`{r.metric}`", r.cell, f"`{r.method}` - `{r.baseline}`", diff(r, "untuned"), diff(r, "tuned"),
             f"**{r.change}**" if r.changed else ""] for r in table.itertuples()]
    header = ["metric", "cell", "pair", f"untuned ({name})", "tuned (this report)", "changed"]
    lines += [md_table(header, rows), ""]

    # per-method means
    tmeans = _method_means(data, t_select)
    merged = tmeans.merge(umeans.drop(columns=["report", "path", "select"]),
                          on=["family_label", "setting", "method", "metric"], how="outer",
                          suffixes=("_tuned", "_untuned"))
    if len(merged):
        order = {c: i for i, c in enumerate(data.cells)}
        morder = {m: i for i, m in enumerate(data.methods)}
        merged["setting"] = merged["setting"].fillna("")
        merged["_o"] = [(order.get((f, s), len(order)), morder.get(m, len(morder)))
                        for f, s, m in zip(merged["family_label"], merged["setting"], merged["method"],
                                           strict=True)]
        merged = merged.sort_values("_o", kind="stable")
        metrics = [m for m in an.PRIMARY if m in set(merged["metric"])]
        rows = []
        for (f, s, m), g in merged.groupby(["family_label", "setting", "method"], sort=False):
            g = g.set_index("metric")
            first = g.iloc[0]
            hp = " -> ".join(f"{_g(first[f'alpha_{k}'])}, {_g(first[f'beta_{k}'])}"
                             for k in ("untuned", "tuned"))
            row = [_cell(f, s), f"`{m}`", hp]
            for metric in metrics:
                if metric not in g.index:
                    row.append("–")
                    continue
                x = g.loc[metric]
                ivs = [Interval(float(x[f"mean_{k}"]), float(x[f"low_{k}"]), float(x[f"high_{k}"]),
                                int(x[f"n_seeds_{k}"]) if math.isfinite(x[f"n_seeds_{k}"]) else 0)
                       for k in ("untuned", "tuned")]
                rel = ((ivs[1].mean - ivs[0].mean) / abs(ivs[0].mean)
                       if ivs[0].n and ivs[1].n and ivs[0].mean else math.nan)
                change = f" ({100 * rel:+.1f}%)" if math.isfinite(rel) else ""
                row.append(f"{fmt_interval(ivs[0])} -> {fmt_interval(ivs[1])}{change}")
            rows.append(row)
        lines += ["### Each method's meta-test mean, untuned -> tuned", "",
                  "Mean over seeds [95% interval] of the primary metrics under each report's primary "
                  "selection, and the alpha, beta each used (untuned -> tuned). The two reports ran "
                  "different seeds and hyperparameters, so these are not paired: read them as levels, and "
                  "the verdicts above as the tests.", "",
                  md_table(["family", "method", "alpha, beta", *[f"`{m}`" for m in metrics]], rows), ""]
    return "\n".join(lines)
