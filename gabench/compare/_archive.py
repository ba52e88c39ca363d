"""A study's archive: the compact summary of every finished run, kept where it survives the machine.

A run directory holds the full per-step record (up to a few MB for a long run with per-task
weights), so ``runs/`` is not committed; a study that takes longer than one session on one machine
would be lost with it. A study file's ``archive = "../reports/<name>/data"`` names a report
``data/`` directory (:mod:`gabench.reporting._data`) to which ``gabench compare`` adds each finished
run's per-seed summaries and its recorded configuration (``run_configs.json``) every 10 minutes
and at the end (the study table in the study directory is then rebuilt at the end only). On any
machine, a planned run whose archived configuration matches the plan counts as finished and is
not run again, and ``gabench report`` reads the archive, so the report covers every run whichever
machine ran it.

The archive is written under its own lock (several compares may share it, e.g. one per
``--out-root``), each file atomically, ``run_configs.json`` last (see
:meth:`~gabench.reporting._data.ReportData.write`): a write cut short by ``kill -9`` or a full disk
leaves the runs it listed before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gabench._atomic import read_json
from gabench._errors import ConfigError
from gabench.compare._state import _check_run, config_diff
from gabench.study import PlannedRun, Study

#: Key of ``study.json`` holding the configuration each diverged run of ``failed.json`` had.
DIVERGED_CONFIGS = "diverged_configs"


def archived_configs(archive: Path) -> dict[str, dict[str, Any]]:
    """Run id -> configuration of the runs ``archive`` holds (``{}`` when it does not exist yet).

    Raises:
        ConfigError: ``archive`` exists but is not an archive (one line naming it).
    """
    from gabench.reporting._data import RUN_CONFIGS  # imported late: matplotlib

    if not (archive / "data.json").is_file():
        return {}
    if not (archive / RUN_CONFIGS).is_file():
        raise ConfigError("archive", str(archive), f"a study archive (a data/ directory with {RUN_CONFIGS}; "
                          "this one holds a report's data without it: move it away, or name another "
                          "directory)")
    configs = read_json(archive / RUN_CONFIGS)
    return configs if isinstance(configs, dict) else {}


def archived_state(run: PlannedRun, configs: dict[str, dict[str, Any]]) -> str:
    """``"missing"``, ``"finished"`` (archived with the planned configuration) or ``"changed"``."""
    recorded = configs.get(run.run_id)
    if not isinstance(recorded, dict):
        return "missing"
    return "changed" if config_diff(recorded, run.config) else "finished"


def update_archive(study: Study, study_dir: Path, failures: dict[str, str]) -> int:
    """Add the runs finished in ``study_dir`` that ``study.archive`` lacks (or holds with another
    configuration) to the archive; returns how many were added.

    An archived run whose configuration the plan no longer has (a compare with
    ``--redo-changed`` redoes it) leaves the archive at once, so that a report never mixes two
    configurations of one run. Runs of the archive that are not in the plan (an earlier, larger
    plan) stay. ``failures`` (run id -> reason, this compare's) are merged into the archive's
    ``failed.json``; a run that finished since leaves it. The configurations of the runs that
    diverged are merged alike into ``study.json`` (``diverged_configs``), so that a compare on any
    machine keeps those runs as failed rather than rerunning them. The archive's ``study.json`` becomes
    the study directory's (the plan), with the provenance of every archived run.

    A report of a tuned study keeps its Optuna trials in the archive (``tuning_studies``,
    ``tuning_trials``). Once runs are added or redone, those tables may predate them (a cell tuned
    again, then its runs redone), so they are dropped, and the next ``gabench report`` reads them
    from the Optuna storage again. The other tables a report keeps there stay.
    """
    from gabench.reporting import _data as rd  # the report's tables (imported late: matplotlib)

    archive = study.archive
    assert archive is not None
    archive.mkdir(parents=True, exist_ok=True)
    with rd.data_lock(archive):
        rd.remove_partial_files(archive)
        archived_configs(archive)  # refuses a data/ directory that is not an archive
        old = rd.read_report_data(archive, locked=True) if (archive / rd.RUN_CONFIGS).is_file() else None
        configs = dict(old.configs) if old is not None else {}
        planned = {r.run_id: r for r in study.runs}
        stale = {k for k, v in configs.items() if k in planned and config_diff(v, planned[k].config)}
        new_ids, results, weights, recorded = [], [], [], {}
        for run in study.runs:
            config = read_json(study_dir / run.run_id / "config.json").get("config")
            if config is None or (configs.get(run.run_id) == config and run.run_id not in stale):
                continue  # not finished here, or archived already (its tables are not read)
            state, tables = _check_run(study_dir / run.run_id, run.config, pd.read_parquet)
            if state != "finished" or tables is None:
                continue
            new_ids.append(run.run_id)
            results.append(tables[0])
            weights.append(tables[1])
            recorded[run.run_id] = config
        keep = set(configs) - stale - set(new_ids)
        known = keep | set(new_ids)
        merged_failures = {k: v for k, v in {**(old.failures if old else {}), **failures}.items()
                           if k not in known}
        if old is None and not new_ids:
            return 0  # nothing finished yet: no archive (failures stay in the study directory)
        meta = read_json(study_dir / "study.json")
        # the configuration each divergence had: this compare's record for the runs it reports
        # on, the archive's for the others
        old_diverged = old.meta.get(DIVERGED_CONFIGS, {}) if old is not None else {}
        diverged = {k: v for k, v in old_diverged.items() if k not in failures}
        diverged.update(meta.get(DIVERGED_CONFIGS, {}))
        diverged = {k: v for k, v in diverged.items() if k in merged_failures}
        if (old is not None and not new_ids and not stale and merged_failures == old.failures
                and diverged == old_diverged):
            return 0
        parts = [old.only(keep)] if old is not None else []
        if new_ids:
            res = rd._with_study_columns(pd.concat(results, ignore_index=True), study.name)
            wts = pd.concat(weights, ignore_index=True)
            parts.append(rd.summarise(rd.StudyTables(study.name, study_dir, res, wts)))
        commits = {**(old.meta.get("run_commits", {}) if old else {}), **meta.get("run_commits", {})}
        meta["run_commits"] = {k: v for k, v in commits.items() if k in known}
        meta[DIVERGED_CONFIGS] = diverged
        tables = {name: pd.concat([getattr(p, name) for p in parts], ignore_index=True)
                  for name in rd._TABLES}
        extra = dict(old.extra) if old is not None else {}
        if new_ids or stale:  # the tuning tables a report kept describe the runs before these
            for name in rd.RUN_BOUND_EXTRAS:
                extra.pop(name, None)
        merged = rd.ReportData(study.name, archive, meta=meta, failures=merged_failures, extra=extra,
                               configs={**{k: configs[k] for k in keep}, **recorded}, **tables)
        merged.write_locked(archive)
    return len(new_ids)
