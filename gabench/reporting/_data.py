"""The data a report is built from: result tables read from disk, reduced to per-seed summaries.

Two kinds of source give the same :class:`ReportData`:

- result tables (``results.parquet`` + ``weights.parquet`` of a study directory, or of every run
  below a directory), reduced by :func:`summarise`;
- the ``data/`` directory a report writes beside its README (:meth:`ReportData.write`), so that a
  report regenerates without the runs (``gabench report reports/<study>/data``).

The summaries (a few MB for a whole study) are tidy tables, one row per observation:

==================  ===========================================================================
``runs``            one row per run: run, family, family_label, setting, method, algorithm,
                    aggregator, first_order, seed, outlier_fraction, corrupted_per_batch
``test``            run, select, metric, value: meta-test metrics of the final iterate
                    (``select = "final"``) and of the parameters at the best meta-validation
                    step (``select = "best_val"``, when the runs recorded it)
``curves``          run, split, metric, step, value: meta-validation curves (or, for runs
                    without meta-validation, the meta-training query loss averaged over bins of
                    steps)
``run_stats``       run, metric, value: wall_seconds, w_frac_negative and w_eff_frac (means over
                    meta-training steps), auc and auc_late (outlier runs)
``weight_hist``     run, bin, count: histogram of relative weights ``T w_i`` on
                    :data:`HIST_EDGES` (bin 0 = below the first edge, last bin = above the last);
                    none for a run that recorded no weights (all NaN: ConFIG gives a direction
                    only)
``outlier_weights`` run, step, corrupted, rel: mean relative weight of corrupted and clean tasks
                    over bins of meta-training steps
==================  ===========================================================================

A ``data/`` directory that also holds ``run_configs.json`` (run id -> the configuration the run
recorded) is a study's *archive* (:mod:`gabench.compare._archive`): ``gabench compare`` adds each
finished run to it and does not run again what it holds. Only the runs listed there count: the
file is replaced last when the directory is written (and first, without the runs whose rows
change), so a write cut short leaves at most rows that are ignored. Writers hold the
directory's ``.lock``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gabench._atomic import write_json, write_parquet
from gabench._errors import ConfigError
from gabench.reporting._stats import roc_auc_rows

#: Metrics where a lower value is better (everything else reported is higher-is-better).
LOWER_IS_BETTER = ("loss_pre", "loss_post", "support_loss", "query_loss", "wall_seconds")
#: Edges of the relative-weight histogram (values outside fall into the two edge bins).
HIST_EDGES = np.round(np.linspace(-2.0, 4.0, 121), 6)
#: Curves and outlier-weight traces keep at most this many bins of meta-training steps.
STEP_BINS = 50
#: Format tag of a report's ``data/`` directory.
DATA_FORMAT = "gabench-report-data/1"
_TABLES = ("runs", "test", "curves", "run_stats", "weight_hist", "outlier_weights")
#: Extra tables that describe the runs they were read with: a report of a tuned study keeps the
#: Optuna trials behind its runs (:mod:`gabench.reporting.tuning_section`). Once runs are added
#: to an archive or redone (a cell tuned again, then its runs redone), they may predate those
#: runs, so the archive drops them and a report never writes them back over newer runs; the
#: next report reads them from the Optuna storage again.
RUN_BOUND_EXTRAS = ("tuning_studies", "tuning_trials")
#: The file of a ``data/`` directory that makes it an archive (run id -> recorded configuration).
RUN_CONFIGS = "run_configs.json"
_RUN_COLUMNS = ["run", "family", "family_label", "setting", "method", "algorithm", "aggregator",
                "first_order", "seed", "outlier_fraction"]


@dataclass
class StudyTables:
    """The raw result tables of one study (or of a directory of runs).

    Attributes:
        name: Study name (the report goes to ``reports/<name>/``).
        source: The directory the tables were read from.
        results: Long table (``RESULT_COLUMNS`` plus ``study``, ``family_label``, ``setting``,
            ``select``).
        weights: Long table ``run, step, task, corrupted, weight``.
        meta: ``study.json`` (plan, pairs, provenance), or ``{}`` for plain runs.
        failures: Run id -> reason, for runs that stopped.
        extra: Other tables found beside (``textbook`` for the book study).
    """

    name: str
    source: Path
    results: pd.DataFrame
    weights: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class ReportData:
    """Per-seed summaries of a study: everything a report reads (see the module docstring).

    Attributes:
        name: Study name.
        source: Where the summaries were made from (a results directory or a ``data/`` directory).
        runs, test, curves, run_stats, weight_hist, outlier_weights: The tidy tables.
        meta: ``study.json`` of the study (``{}`` for plain runs).
        failures: Run id -> reason, for runs that stopped.
        extra: Other tables (``textbook``), copied as they are.
        configs: Run id -> the configuration the run recorded (``run_configs.json``; only
            archives have it, ``{}`` otherwise).
        subset: How the runs read were narrowed for this report (:func:`complete_seeds`), ``""``
            when they were not; stated in the report's header, never written to ``data/``.
    """

    name: str
    source: Path
    runs: pd.DataFrame
    test: pd.DataFrame
    curves: pd.DataFrame
    run_stats: pd.DataFrame
    weight_hist: pd.DataFrame
    outlier_weights: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    subset: str = ""

    # ------------------------------------------------------------------ plan
    @property
    def cells(self) -> list[tuple[str, str]]:
        """``(family_label, setting)`` in plan order (families, then settings as first seen)."""
        runs = self.runs
        order = self.meta.get("families") or list(dict.fromkeys(runs["family_label"]))
        seen = list(dict.fromkeys(zip(runs["family_label"], runs["setting"], strict=True)))
        rank = {f: i for i, f in enumerate(order)}
        return sorted(seen, key=lambda c: (rank.get(c[0], len(rank)), seen.index(c)))

    @property
    def methods(self) -> list[str]:
        """Method labels in plan order."""
        planned = list(self.meta.get("methods", {}))
        present = list(dict.fromkeys(self.runs["method"]))
        return [m for m in planned if m in present] + [m for m in present if m not in planned]

    @property
    def method_info(self) -> dict[str, tuple[str, str, bool]]:
        """Method label -> (algorithm, aggregator, first_order)."""
        first = self.runs.drop_duplicates("method").set_index("method")
        return {m: (str(first.at[m, "algorithm"]), str(first.at[m, "aggregator"]),
                    bool(first.at[m, "first_order"])) for m in self.methods}

    @property
    def pairs(self) -> dict[str, str]:
        """Compared method -> its baseline (same algorithm with uniform weights), both present."""
        if "pairs" in self.meta:
            pairs = dict(self.meta["pairs"])
        else:
            info = self.method_info
            pairs = {}
            for m, (algo, agg, fo) in info.items():
                if agg == "mean":
                    continue
                base = [b for b, (a2, g2, f2) in info.items() if g2 == "mean" and a2 == algo and f2 == fo]
                if len(base) == 1:
                    pairs[m] = base[0]
        present = set(self.methods)
        return {k: v for k, v in pairs.items() if k in present and v in present}

    @property
    def selections(self) -> list[str]:
        """Model selections present in ``test``: ``best_val`` first (the primary one) when present."""
        present = set(self.test["select"])
        return [s for s in ("best_val", "final") if s in present] + sorted(present - {"best_val", "final"})

    # ------------------------------------------------------------------ disk
    def write(self, directory: str | Path) -> Path:
        """Write the summaries to ``directory`` (parquet tables + JSON); returns the directory.

        Each file is replaced atomically, under the directory's lock (:func:`data_lock`). In an
        archive, ``run_configs.json`` first loses the runs whose configuration changes and is
        written whole last, so that a write cut short never lists a run whose rows it lacks.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with data_lock(out):
            self.write_locked(out)
        return out

    def write_locked(self, out: Path) -> None:
        """:meth:`write` for a caller that holds ``data_lock(out)`` already."""
        configs_file = out / RUN_CONFIGS
        before = _read_json(configs_file, {}) if configs_file.is_file() else None
        if before is not None:
            write_json(configs_file, {k: v for k, v in before.items() if self.configs.get(k) == v})
        for name in _TABLES:
            write_parquet(out / f"{name}.parquet", getattr(self, name))
        for name, table in self.extra.items():
            write_parquet(out / f"{name}.parquet", table)
        write_json(out / "study.json", self.meta)
        write_json(out / "failed.json", self.failures)
        listed = _listed_extras(_read_json(out / "data.json", {}))
        write_json(out / "data.json", {"format": DATA_FORMAT, "name": self.name, "extra": sorted(self.extra)})
        for name in listed - set(self.extra):  # tables dropped: no stale file is left behind
            (out / f"{name}.parquet").unlink(missing_ok=True)
        if self.configs or before is not None:
            write_json(configs_file, self.configs)  # last: from here on the new runs count

    def write_extras(self, out: Path) -> None:
        """Add this report's extra tables (e.g. the tuning tables) to ``out`` without touching the
        runs' tables: for a report made from the archive it is written into (a compare may have
        added runs since it was read). The :data:`RUN_BOUND_EXTRAS` are not written when the
        archive's runs are no longer those this report read."""
        with data_lock(out):
            configs_file = out / RUN_CONFIGS
            runs_changed = configs_file.is_file() and _read_json(configs_file, {}) != self.configs
            extras = {k: v for k, v in self.extra.items() if not (runs_changed and k in RUN_BOUND_EXTRAS)}
            for name, table in extras.items():
                write_parquet(out / f"{name}.parquet", table)
            info = _read_json(out / "data.json", {})
            extra = sorted(_listed_extras(info) | set(extras))
            write_json(out / "data.json", {**info, "format": DATA_FORMAT, "name": self.name, "extra": extra})

    def only(self, run_ids: set[str]) -> ReportData:
        """A copy holding the rows of ``run_ids`` only (meta, failures and extras kept)."""
        keep = {name: getattr(self, name)[getattr(self, name)["run"].astype(str).isin(run_ids)]
                .reset_index(drop=True) for name in _TABLES}
        return ReportData(self.name, self.source, meta=self.meta, failures=self.failures, extra=self.extra,
                          configs={k: v for k, v in self.configs.items() if k in run_ids}, **keep)


def remove_partial_files(directory: Path) -> None:
    """Temporary files of writes that were cut short (``.NAME.tmp-PID``); call under the lock."""
    for entry in directory.glob(".*.tmp-*"):
        entry.unlink(missing_ok=True)


@contextmanager
def data_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` (exclusive; the kernel releases it if the process dies)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- sources
def resolve_source(source: str | Path, runs_root: str | Path = "runs") -> Path:
    """The directory that ``source`` names.

    ``source`` may be a directory (a study directory, a directory of runs, a report's ``data/``
    directory or the report directory holding it), a study name (``quick`` ->
    ``<runs_root>/quick``) or a study file (``studies/quick.toml`` -> its name). A study with an
    ``archive`` resolves to the archive (it holds every run the study directory holds, and those
    that other machines ran).
    """
    path = Path(source)
    if path.is_dir():
        if (path / "data.json").is_file():
            return path  # a data/ directory (an archive, or a copy of one) is read as it is
        if (path / "data" / "data.json").is_file() and not (path / "results.parquet").is_file():
            return path / "data"
        return _archive_of(path) or path
    if path.suffix == ".toml":
        from gabench.study import load_study

        study = load_study(path, resolve_tuned=False)
        if study.archive is not None and (study.archive / "data.json").is_file():
            if (Path(runs_root) / study.name).is_dir():
                _archive_of(Path(runs_root) / study.name)  # warns about runs not archived yet
            return study.archive
        return Path(runs_root) / study.name
    candidate = Path(runs_root) / str(source)
    if candidate.is_dir():
        return _archive_of(candidate) or candidate
    raise ConfigError("source", str(source),
                      f"a study directory, a study name with results under {runs_root}/, a report's data/ "
                      "directory, or a study file (run `gabench compare studies/NAME.toml` first)")


def _archive_of(study_dir: Path) -> Path | None:
    """The archive that a study directory's ``study.json`` names (relative to the study file),
    when it exists. Warns on stderr about finished runs of the directory that the archive lacks
    (a compare stopped before it archived them): the report leaves them out."""
    archive = _named_archive(_read_json(study_dir / "study.json", {}))
    if archive is None or not (archive / "data.json").is_file():
        return None
    listed = _read_json(archive / RUN_CONFIGS, {}) if (archive / RUN_CONFIGS).is_file() else {}
    local = {p.parent.name: _read_json(p, {}).get("config") for p in study_dir.glob("*/config.json")}
    missing = sorted(k for k, v in local.items() if (k not in listed or listed[k] != v)
                     and (study_dir / k / "results.parquet").is_file())
    if missing:
        import sys

        print(f"warning: {len(missing)} finished run(s) in {study_dir} are not in its archive {archive} "
              f"(e.g. {missing[0]}; a compare stopped before archiving them): the report leaves them out; "
              f"rerun the same `gabench compare` to archive them without running them again",
              file=sys.stderr)
    return archive


def _named_archive(meta: Any) -> Path | None:
    """The archive a study's ``study.json`` names (relative to the study file), None for none."""
    if not isinstance(meta, dict) or not isinstance(meta.get("archive"), str):
        return None
    return Path(os.path.normpath(Path(str(meta.get("file", ""))).parent / meta["archive"]))


def check_not_an_archive(target: Path, data: ReportData) -> None:
    """Refuse to write a report's ``data/`` over a study's archive unless the report was made from
    that archive (anything else would drop runs that only the archive holds), and into the
    directory a study names as its archive before its compare has written it (a plain ``data/``
    there would keep the compare from archiving).

    Raises:
        ConfigError: ``target`` holds ``run_configs.json`` and ``data`` was not read from it, or
            ``target`` is ``data``'s study's archive-to-be.
    """
    if not (target / RUN_CONFIGS).is_file():
        named = _named_archive(data.meta)
        if named is not None and named.resolve() == target.resolve():
            raise ConfigError("--reports-root", str(target.parent.parent),
                              f"a reports root where {target} is not the archive of study {data.name!r} "
                              "before its compare has written it (it does every 10 minutes and at the end; "
                              "a report there now would keep it from archiving): wait, or report elsewhere")
        return
    if Path(data.source).resolve() == target.resolve():
        return
    raise ConfigError("source", str(data.source),
                      f"the archive {target} itself, since the report would be written over it (report from "
                      f"it: `gabench report {target}` or the study file), or another --reports-root")


def load_tables(source: str | Path, runs_root: str | Path = "runs",
                only_complete_seeds: bool = False) -> ReportData:
    """The :class:`ReportData` of ``source``: read from a ``data/`` directory, or summarised from runs.

    Args:
        only_complete_seeds: Keep only the seeds whose planned runs have all finished
            (:func:`complete_seeds`): a report of a study still running.

    Raises:
        ConfigError: nothing to report, an unreadable table or JSON file, a single method, or a
            method and its baseline with different seeds (one line naming the problem).
    """
    path = resolve_source(source, runs_root)
    if (path / "data.json").is_file():
        data = read_report_data(path)
    else:
        data = summarise(read_raw_tables(path, source))
    if only_complete_seeds:
        data = complete_seeds(data)
    check_report_data(data)
    return data


def complete_seeds(data: ReportData) -> ReportData:
    """The runs of the seeds whose planned runs (``study.json``) have all finished or are recorded
    as failed: a study that spans sessions (planned seed by seed) reported as it grows, every
    compared pair on the same seeds. ``subset`` says what was kept.

    Raises:
        ConfigError: the data has no plan, or no seed is complete yet.
    """
    planned = data.meta.get("runs") or []
    if not planned:
        raise ConfigError("--complete-seeds", True, f"a study's data with its plan (study.json lists the "
                          f"planned runs; {data.source} has none)")
    by_seed: dict[int, list[str]] = {}
    for r in planned:
        by_seed.setdefault(int(r["seed"]), []).append(str(r["run_id"]))
    finished = set(data.runs["run"].astype(str))
    present = finished | set(data.failures)
    done = sorted(s for s, ids in by_seed.items() if all(i in present for i in ids))
    keep = {i for s in done for i in by_seed[s]}
    if not keep & finished:
        counts = ", ".join(f"seed {s}: {sum(i in present for i in ids)} of {len(ids)}"
                           for s, ids in sorted(by_seed.items())[:3])
        raise ConfigError("--complete-seeds", True, "at least one seed whose planned runs have all finished "
                          f"or failed, some finished (none has yet; {counts}"
                          f"{', ...' if len(by_seed) > 3 else ''})")
    if len(done) == len(by_seed) and finished <= keep:
        return data  # every planned seed is complete: nothing to leave out
    out = data.only(finished & keep)
    out.failures = {k: v for k, v in data.failures.items() if k in keep}
    out.meta = {**data.meta, "run_commits": {k: v for k, v in (data.meta.get("run_commits") or {}).items()
                                             if k in keep}}
    planned_ids = {i for ids in by_seed.values() for i in ids}
    other_seeds, unplanned = len(finished & planned_ids - keep), len(finished - planned_ids)
    left = [f"{_runs(other_seeds)} of other seeds"] if other_seeds else []
    left += [f"{_runs(unplanned)} outside the current plan"] if unplanned else []
    out.subset = (f"(`--complete-seeds`) seeds {', '.join(map(str, done))} only ({len(done)} of "
                  f"{len(by_seed)} planned), those whose {len(keep)} planned runs have all finished or "
                  "failed" + (f"; left out: {' and '.join(left)}" if left else "")
                  + ". Verdicts can change as more seeds finish.")
    return out


def _runs(n: int) -> str:
    return f"{n} finished run" + ("" if n == 1 else "s")


def read_raw_tables(path: Path, source: str | Path | None = None) -> StudyTables:
    """Read ``results.parquet`` (and ``weights.parquet``) of a study directory or of every run below it."""
    src = str(source if source is not None else path)
    meta = _read_json(path / "study.json", {})
    failures = _read_json(path / "failed.json", {})
    if (path / "results.parquet").is_file():
        results = _read_parquet(path / "results.parquet")
        weights_file = path / "weights.parquet"
        weights = _read_parquet(weights_file) if weights_file.is_file() else _empty_weights()
    else:
        found = sorted(p.parent for p in path.glob("*/results.parquet"))
        if not found:
            raise ConfigError("source", src,
                              f"a directory with results.parquet, run directories or data.json ({path} has "
                              "none)")
        results = pd.concat([_read_parquet(p / "results.parquet") for p in found], ignore_index=True)
        ws = [_read_parquet(p / "weights.parquet") for p in found if (p / "weights.parquet").is_file()]
        weights = pd.concat(ws, ignore_index=True) if ws else _empty_weights()
    if results.empty:
        raise ConfigError("source", src, f"a directory with finished runs ({path} has none yet)")
    missing = [c for c in ("run", "method", "seed", "split", "metric", "value") if c not in results]
    if missing:
        raise ConfigError("source", src, f"result tables with the columns of gabench runs ({path} lacks "
                          f"{', '.join(missing)})")
    results = _with_study_columns(results, meta.get("name", path.name))
    extra = {}
    if (path / "textbook.parquet").is_file():
        extra["textbook"] = _read_parquet(path / "textbook.parquet")
    return StudyTables(meta.get("name", path.name), path, results, weights, meta, failures, extra)


def read_report_data(path: str | Path, locked: bool = False) -> ReportData:
    """Read a report's ``data/`` directory written by :meth:`ReportData.write`.

    An archive is read under its lock (unless the caller holds it: ``locked``), so that a
    compare adding runs meanwhile cannot leave a torn copy; only the runs its
    ``run_configs.json`` lists and whose rows are there count.
    """
    path = Path(path)
    if not locked and (path / RUN_CONFIGS).is_file() and (path / ".lock").is_file():
        with data_lock(path):
            return read_report_data(path, locked=True)
    info = _read_json(path / "data.json", {})
    if info.get("format") != DATA_FORMAT:
        raise ConfigError("source", str(path), f"a data directory of format {DATA_FORMAT!r} (data.json says "
                          f"{info.get('format')!r})")
    tables = {}
    for name in _TABLES:
        file = path / f"{name}.parquet"
        if not file.is_file():
            raise ConfigError("source", str(path), f"a complete report data directory ({name}.parquet is "
                              "missing)")
        tables[name] = _read_parquet(file)
    extra = {name: _read_parquet(path / f"{name}.parquet") for name in info.get("extra", [])}
    data = ReportData(info.get("name", path.parent.name), path, meta=_read_json(path / "study.json", {}),
                      failures=_read_json(path / "failed.json", {}), extra=extra, **tables)
    if (path / RUN_CONFIGS).is_file():  # an archive: only the runs it lists count
        configs = _read_json(path / RUN_CONFIGS, {})
        if not isinstance(configs, dict):
            raise ConfigError("source", str(path / RUN_CONFIGS), "a JSON object of run id -> configuration")
        present = set(data.runs["run"].astype(str))
        configs = {k: v for k, v in configs.items() if k in present}  # listed, and its rows are there
        data = data.only(set(configs))
        data.configs = configs
    return data


def check_report_data(data: ReportData) -> None:
    """Refuse what no comparison can be made from.

    Raises:
        ConfigError: only one method; or, in some cell, a compared method and its baseline ran
            different seeds and the missing runs are not recorded as failed.
    """
    methods = data.methods
    if len(methods) < 2:
        raise ConfigError("source", str(data.source),
                          f"results of at least two methods to compare (found only {methods[0]!r})")
    failed = set(data.failures)
    runs = data.runs
    for method, base in data.pairs.items():
        for (f, s), part in runs[runs["method"].isin([method, base])].groupby(["family_label", "setting"],
                                                                             sort=False):
            seeds = {m: set(g["seed"]) for m, g in part.groupby("method")}
            a, b = seeds.get(method, set()), seeds.get(base, set())
            missing = [(base, s_) for s_ in a - b] + [(method, s_) for s_ in b - a]
            if any(not _recorded_failed(failed, f, m, s_) for m, s_ in missing):
                where = f"{f}" + (f" ({s})" if s else "")
                raise ConfigError("source", str(data.source),
                                  f"the same seeds for {method!r} and its baseline {base!r} on {where} "
                                  f"(found {sorted(a)} and {sorted(b)}; missing runs not in failed.json)")


def _recorded_failed(failed: set[str], family: str, method: str, seed: int) -> bool:
    """A run of ``family x method x seed`` is listed as failed (study run ids start with
    ``family__method__s<seed>``)."""
    prefix = f"{family}__{method}__s{seed}"
    return any(r == prefix or r.startswith(prefix + "__") for r in failed)


# ---------------------------------------------------------------------------- summarising
def summarise(raw: StudyTables) -> ReportData:
    """Reduce raw result tables to the per-seed summaries of a report (see the module docstring)."""
    res = raw.results
    runs = res.drop_duplicates("run")[_RUN_COLUMNS].reset_index(drop=True)
    runs["seed"] = runs["seed"].astype(int)
    runs["first_order"] = runs["first_order"].astype(bool)
    runs["outlier_fraction"] = runs["outlier_fraction"].astype(float)

    test = res.loc[res["split"] == "test", ["run", "select", "metric", "value"]].reset_index(drop=True)

    val = res[res["split"] == "val"]
    if not val.empty:
        curves = val[["run", "split", "metric", "step", "value"]]
    else:
        tr = res[(res["split"] == "train") & (res["metric"] == "query_loss")]
        curves = _binned(tr, ["run", "split", "metric"], "value")
    curves = curves.sort_values(["run", "metric", "step"], kind="stable").reset_index(drop=True)

    train = res[res["split"] == "train"]
    stats = []
    wall = train[train["metric"] == "wall_seconds"]
    stats.append(wall.drop_duplicates("run", keep="last")[["run", "value"]].assign(metric="wall_seconds"))
    for metric, name in (("w_frac_negative", "w_frac_negative"), ("w_eff_n", "w_eff_frac")):
        part = train[train["metric"] == metric]
        if part.empty:
            continue
        value = part["value"] / part["n"].astype(float) if metric == "w_eff_n" else part["value"]
        stats.append(value.groupby(part["run"]).mean().rename("value").reset_index().assign(metric=name))

    weighted = set(runs.loc[runs["aggregator"] != "mean", "run"])
    w = raw.weights[raw.weights["run"].isin(weighted)]
    hist, outlier_w, auc, counts = _weight_summaries(w)
    stats += auc
    run_stats = pd.concat(stats, ignore_index=True)[["run", "metric", "value"]]
    runs["corrupted_per_batch"] = [counts.get(str(r), "") for r in runs["run"]]
    return ReportData(raw.name, raw.source, runs, test, curves, run_stats, hist, outlier_w,
                      raw.meta, raw.failures, raw.extra)


def _binned(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean of ``value`` (and of ``step``) over consecutive bins of steps, at most STEP_BINS per group."""
    if frame.empty:
        return frame.assign(step=pd.Series(dtype=float))[[*keys, "step", value]]
    last = frame.groupby(keys, sort=False)["step"].transform("max")
    width = np.maximum(1, last // STEP_BINS)
    b = (frame["step"] - 1) // width
    out = frame.assign(_bin=b).groupby([*keys, "_bin"], sort=False)[["step", value]].mean().reset_index()
    return out.drop(columns="_bin")


def _weight_summaries(w: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.DataFrame],
                                                dict[str, str]]:
    """Histogram counts, outlier traces, AUCs and corrupted counts per batch of the weighted runs."""
    hist_cols = {"run": pd.Series(dtype=str), "bin": pd.Series(dtype=int), "count": pd.Series(dtype=int)}
    ow_cols = {"run": pd.Series(dtype=str), "step": pd.Series(dtype=float),
               "corrupted": pd.Series(dtype=bool), "rel": pd.Series(dtype=float)}
    # a run whose weights are all NaN recorded none (a direction-only aggregator): it has no
    # histogram (NaN would sort above the last edge) and no outlier traces or AUCs
    w = w[w["weight"].notna().groupby(w["run"]).transform("any")]
    if w.empty:
        return pd.DataFrame(hist_cols), pd.DataFrame(ow_cols), [], {}
    w = w.sort_values(["run", "step", "task"], kind="stable")
    T = w.groupby("run")["task"].transform("max") + 1
    w = w.assign(rel=w["weight"] * T)
    idx = np.searchsorted(HIST_EDGES, w["rel"].to_numpy(), side="right")  # 0 below, len(edges) above
    hist = (w.assign(bin=idx).groupby(["run", "bin"]).size().rename("count").reset_index())
    hist["bin"] = hist["bin"].astype(int)

    auc_rows, counts, traces = [], {}, []
    for run, g in w[w.groupby("run")["corrupted"].transform("any")].groupby("run", sort=False):
        steps = g["step"].nunique()
        wt = g["weight"].to_numpy().reshape(steps, -1)  # (steps, T)
        ct = g["corrupted"].to_numpy().reshape(steps, -1)
        a = roc_auc_rows(wt, ~ct)
        late = a[-max(1, steps // 10):]
        auc_rows += [(run, "auc", float(np.nanmean(a))), (run, "auc_late", float(np.nanmean(late)))]
        k = ct.sum(axis=1)
        counts[str(run)] = ", ".join(f"{int(v)} of {ct.shape[1]}" for v in sorted(set(k.tolist())))
        per_step = g.groupby(["step", "corrupted"])["rel"].mean().reset_index().assign(run=run)
        traces.append(_binned(per_step, ["run", "corrupted"], "rel"))
    outlier_w = (pd.concat(traces, ignore_index=True)[["run", "step", "corrupted", "rel"]] if traces
                 else pd.DataFrame(ow_cols))
    auc = [pd.DataFrame(auc_rows, columns=["run", "metric", "value"])] if auc_rows else []
    return hist, outlier_w, auc, counts


# ---------------------------------------------------------------------------- helpers
def _with_study_columns(results: pd.DataFrame, name: str) -> pd.DataFrame:
    """Tables of plain ``gabench run`` runs lack the study columns; older tables lack ``select``."""
    results = results.copy()
    if "study" not in results:
        results["study"] = name
    if "family_label" not in results:
        results["family_label"] = results["family"]
    if "setting" not in results:
        multi = results["outlier_fraction"].nunique() > 1
        results["setting"] = (results["outlier_fraction"].map(lambda p: f"outlier_fraction={p:g}")
                              if multi else "")
    results["setting"] = results["setting"].fillna("")
    if "select" not in results:
        results["select"] = "final"
    results["select"] = results["select"].fillna("final").astype(str)
    return results


def _empty_weights() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=str), "step": pd.Series(dtype=int),
                         "task": pd.Series(dtype=int), "corrupted": pd.Series(dtype=bool),
                         "weight": pd.Series(dtype=float)})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ConfigError("source", str(path), f"a readable parquet table ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from None


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("source", str(path), f"a valid JSON file ({_first_line(exc)})") from None


def _listed_extras(info: Any) -> set[str]:
    """The extra tables a ``data.json`` (``info``, as read) lists: plain names only, never one of
    the run tables (a name read from a shared file decides which files a write removes)."""
    names = info.get("extra", []) if isinstance(info, dict) else []
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n.isidentifier() and n not in _TABLES}
