"""``gabench list``: the task families, algorithms, aggregators and outlier modes."""

from __future__ import annotations

import argparse

from gabench.commands._parser import add_command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(sub, "list", run, help="list task families, algorithms and aggregators",
                       description="List the registered task families (with their parameters and "
                       "defaults), algorithms, aggregators and outlier modes.")


def run(args: argparse.Namespace) -> int:
    from gabench.commands._catalog import read_catalog

    catalog = read_catalog()
    print("Task families (parameters with defaults; set with -P KEY=VALUE or --shots/--ways):")
    for fam in catalog.families:
        print(f"  {fam.name:15s} {fam.description}")
        params = ", ".join(f"{name}={default}" for name, default in fam.params)
        print(f"  {'':15s}   default alpha={fam.default_alpha}; {params}")
    print("\nAlgorithms:")
    for alg in catalog.algorithms:
        print(f"  {alg.name:15s} {alg.description}")
    print("\nAggregators:")
    for agg in catalog.aggregators:
        print(f"  {agg.name:15s} {agg.description}")
    print("\nOutlier modes (--outlier-mode):")
    for name, kinds in catalog.outlier_modes.items():
        print(f"  {name:15s} for {' and '.join(kinds)} families")
    return 0
