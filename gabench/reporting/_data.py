"""Loading result tables for a report: a study directory, or a directory of plain runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from gabench._errors import ConfigError

#: Metrics where a lower value is better (everything else reported is higher-is-better).
LOWER_IS_BETTER = ("loss_pre", "loss_post", "support_loss", "query_loss", "wall_seconds")


@dataclass
class StudyTables:
    """The result tables of one study (or of a directory of runs).

    Attributes:
        name: Study name (the report goes to ``reports/<name>/``).
        source: The directory the tables were read from.
        results: Long table (``RESULT_COLUMNS`` plus ``study``, ``family_label``, ``setting``).
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

    @cached_property
    def run_table(self) -> pd.DataFrame:
        """One row per run: run, family, family_label, setting, method, algorithm, aggregator,
        first_order, seed (in the order of the results table)."""
        cols = ["run", "family", "family_label", "setting", "method", "algorithm", "aggregator",
                "first_order", "seed"]
        return self.results.drop_duplicates("run")[cols].reset_index(drop=True)

    @property
    def cells(self) -> list[tuple[str, str]]:
        """``(family_label, setting)`` in plan order (families, then settings as first seen)."""
        runs = self.run_table
        order = self.meta.get("families") or list(dict.fromkeys(runs["family_label"]))
        seen = list(dict.fromkeys(zip(runs["family_label"], runs["setting"], strict=True)))
        rank = {f: i for i, f in enumerate(order)}
        return sorted(seen, key=lambda c: (rank.get(c[0], len(rank)), seen.index(c)))

    @property
    def methods(self) -> list[str]:
        """Method labels in plan order."""
        planned = list(self.meta.get("methods", {}))
        present = list(dict.fromkeys(self.run_table["method"]))
        return [m for m in planned if m in present] + [m for m in present if m not in planned]

    @property
    def pairs(self) -> dict[str, str]:
        """GA-style method -> its baseline, both present in the results."""
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
    def method_info(self) -> dict[str, tuple[str, str, bool]]:
        """Method label -> (algorithm, aggregator, first_order)."""
        first = self.run_table.drop_duplicates("method").set_index("method")
        return {m: (str(first.at[m, "algorithm"]), str(first.at[m, "aggregator"]),
                    bool(first.at[m, "first_order"])) for m in self.methods}

    def runs_per_cell(self) -> pd.DataFrame:
        """One row per run: run, family_label, setting, method, seed."""
        return self.run_table[["run", "family_label", "setting", "method", "seed"]]


def resolve_source(source: str | Path, runs_root: str | Path = "runs") -> Path:
    """The directory of result tables that ``source`` names.

    ``source`` may be a directory (a study directory or a directory of runs), a study name
    (``quick`` -> ``<runs_root>/quick``) or a study file (``studies/quick.toml`` -> its name).
    """
    path = Path(source)
    if path.is_dir():
        return path
    if path.suffix == ".toml":
        from gabench.study import load_study

        return Path(runs_root) / load_study(path).name
    candidate = Path(runs_root) / str(source)
    if candidate.is_dir():
        return candidate
    raise ConfigError("source", str(source),
                      f"a study directory, a study name with results under {runs_root}/, or a study "
                      "file (run `gabench compare studies/NAME.toml` first)")


def load_tables(source: str | Path, runs_root: str | Path = "runs") -> StudyTables:
    """Read the result tables of a study directory (or of every run below a directory).

    Raises:
        ConfigError: nothing to report in ``source``.
    """
    path = resolve_source(source, runs_root)
    meta = _read_json(path / "study.json", {})
    failures = _read_json(path / "failed.json", {})
    if (path / "results.parquet").is_file():
        results = pd.read_parquet(path / "results.parquet")
        weights_file = path / "weights.parquet"
        weights = pd.read_parquet(weights_file) if weights_file.is_file() else pd.DataFrame(
            columns=["run", "step", "task", "corrupted", "weight"])
    else:
        found = sorted(p.parent for p in path.glob("*/results.parquet"))
        if not found:
            raise ConfigError("source", str(source),
                              f"a directory with results.parquet or run directories ({path} has neither)")
        results = pd.concat([pd.read_parquet(p / "results.parquet") for p in found], ignore_index=True)
        weights = pd.concat([pd.read_parquet(p / "weights.parquet") for p in found
                             if (p / "weights.parquet").is_file()], ignore_index=True)
    if results.empty:
        raise ConfigError("source", str(source), f"a directory with finished runs ({path} has none yet)")
    results = _with_study_columns(results, meta.get("name", path.name))
    extra = {}
    if (path / "textbook.parquet").is_file():
        extra["textbook"] = pd.read_parquet(path / "textbook.parquet")
    return StudyTables(meta.get("name", path.name), path, results, weights, meta, failures, extra)


def _with_study_columns(results: pd.DataFrame, name: str) -> pd.DataFrame:
    """Tables of plain ``gabench run`` runs lack the study columns: derive them."""
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
    return results


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    return json.loads(path.read_text())
