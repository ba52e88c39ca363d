"""``gabench data check``: validate an image dataset folder and print its counts per split."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gabench.commands._parser import OneLineErrorParser, add_command, key_value

#: The families that read a dataset folder (kept literal so building the parser imports nothing
#: heavy; ``tests/test_images.py`` checks it against :data:`gabench.datasets.DATASETS`).
DATASET_FAMILIES = ("omniglot", "mini-imagenet")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gabench data`` with its ``check`` subcommand."""
    p = add_command(sub, "data", _no_subcommand, help="check image dataset folders (Omniglot, Mini-ImageNet)",
                    description="Commands on the image datasets that families read from disk.")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=OneLineErrorParser)
    c = add_command(
        dsub, "check", run, help="validate a dataset folder and print class and image counts per split",
        description="Validate a dataset folder (layout, every image decodable, enough classes "
        "for -P ways=N), decoding it into the cache if it is not there yet, and print the "
        "classes and images of each split. The folder is -P root=PATH, else $GABENCH_DATA/<family>. "
        "A bad folder gives one line naming the path and the problem, exit status 2.")
    c.add_argument("--family", required=True, help="one of " + ", ".join(DATASET_FAMILIES))
    c.add_argument("-P", "--param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="family parameter (repeatable): root=PATH, and ways, shots, query_shots to "
                        "check them against the folder")
    return p


def _no_subcommand(args: argparse.Namespace) -> int:  # argparse requires the subcommand first
    return 2


def run(args: argparse.Namespace) -> int:
    """Build the family from the parameters (which checks the folder), then print the counts."""
    from gabench._errors import check_choice
    from gabench.datasets import check_dataset, load_dataset
    from gabench.tasks import make_family

    family = check_choice("--family", args.family, DATASET_FAMILIES)
    params: dict[str, Any] = dict(args.param)
    fam = make_family(family, params)  # DatasetError/ConfigError: the CLI prints one line, exit 2
    counts = check_dataset(family, fam.root, ways=fam.ways)
    data = load_dataset(family, fam.root)
    out = sys.stdout
    print(f"{family} at {data.root}: OK ({'cached' if data.from_cache else 'decoded now'}: "
          f"{data.cache_path})", file=out)
    columns = list(next(iter(counts.values())))
    print(f"  {'split':6s}" + "".join(f"{c:>12s}" for c in columns), file=out)
    for split, row in counts.items():
        print(f"  {split:6s}" + "".join(f"{row[c]:12d}" for c in columns), file=out)
    total = {c: sum(r[c] for r in counts.values()) for c in columns}
    print(f"  {'total':6s}" + "".join(f"{total[c]:12d}" for c in columns), file=out)
    print(f"  tasks: {fam.ways}-way {fam.shots}-shot, {fam.query_shots} query images per class: "
          "every split has enough classes and images", file=out)
    return 0
