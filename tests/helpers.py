"""Helpers shared by several test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

# A two-method, two-seed study of three steps on sine: the smallest study that exercises a plan.
TINY_STUDY = """
name = "tiny"
seeds = 2
[defaults]
steps = 3
meta_batch = 2
test_tasks = 4
eval_every = 0
[families.sine]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


def study_file(tmp_path: Path, text: str = TINY_STUDY, name: str = "tiny.toml") -> Path:
    """Writes a study file (``text`` dedented) as ``tmp_path / name`` and returns its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and ')')."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The ids of the live child processes of ``pid`` (from /proc), ascending."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(_stat_fields(int(stat.parent.name))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False  # exited between the two looks

#: A tiny study with a [tuning] protocol: 2 families x 2 methods, 2 trials per cell.
TUNED_STUDY = """
name = "tt"
seeds = 2
[tuning]
storage = "journal:tt.journal"
trials = 2
seed = 1000
alpha_range = [0.01, 1.0]
beta_range = [0.0001, 0.01]
[defaults]
steps = 6
eval_every = 2
meta_batch = 2
val_tasks = 4
test_tasks = 4
[families.sine]
tuning = { alpha_range = [0.001, 0.1] }
[families.linear-binary]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


def family_params(names) -> list:
    """``names`` for ``pytest.mark.parametrize``, the image families (Conv-4 on generated image
    folders, seconds per test) marked ``slow`` so that they run in ``tox -e integration``."""
    import pytest

    from gabench.tasks import FAMILIES
    from gabench.tasks._images import ImageFamily

    return [pytest.param(n, marks=pytest.mark.slow) if issubclass(FAMILIES[n], ImageFamily) else n
            for n in names]


def diverge_ga_seed_1(monkeypatch):
    """Makes ``Trainer.fit`` diverge for the maml+ga run of seed 1 (as a run at too large a learning
    rate does) and returns the original ``fit``."""
    from gabench.trainer import DivergedError, Trainer

    original = Trainer.fit

    def fit(self):
        if self.run_config.aggregator == "ga" and self.seed == 1:
            raise DivergedError(2, "query_loss", float("inf"))
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    return original
