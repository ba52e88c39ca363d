"""``gabench data check``: validate an image dataset folder and print its counts per split."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gabench._errors import check_choice
from gabench.datasets import DATA_ENV, DATASETS, check_dataset, load_dataset


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gabench data`` (with its ``check`` subcommand) on the CLI's subparsers."""
    p = sub.add_parser("data", help="check image dataset folders (Omniglot, Mini-ImageNet)",
                       description="Commands on the image datasets that families read from disk.")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    c = dsub.add_parser(
        "check", help="validate a dataset folder and print class and image counts per split",
        description="Validate a dataset folder (layout, every image decodable, enough classes "
        "for -P ways=N), decoding it into the cache if it is not there yet, and print the "
        f"classes and images of each split. The folder is -P root=PATH, else ${DATA_ENV}/<family>. "
        "A bad folder gives one line naming the path and the problem, exit status 2.")
    c.add_argument("--family", required=True, help="one of " + ", ".join(DATASETS))
    c.add_argument("-P", "--param", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="family parameter (repeatable): root=PATH, and ways, shots, query_shots to "
                        "check them against the folder")
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """Build the family from the parameters (which checks the folder), then print the counts."""
    from gabench.tasks import make_family

    family = check_choice("--family", args.family, DATASETS)
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
