"""The documentation: self-contained, links that resolve, examples that run.

- No document points outside the repository (to notes that a clone does not have).
- Every relative link of the README and of ``docs/`` points to an existing file (and every
  in-page anchor to a heading).
- The README's Python API example runs as written.
- The worked examples of ``docs/extending.md`` (``docs/examples/``) do what the page says, and
  the code excerpts shown on the page are taken from those files. (The example test modules in
  ``docs/examples/`` also run gabench's contract suites on them: ``pytest docs/examples``.)
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

#: Files whose references must stay inside the repository.
SCOPE = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", DOCS, ROOT / "gabench",
         ROOT / "studies", ROOT / "tests", ROOT / "benchmarks", ROOT / "reports"]
#: Names of notes that live outside the repository (spelt in two pieces so that this file does
#: not contain them itself and the scope can include tests/).
FORBIDDEN = ("../" + "shared", "ALGORITHM" + ".md", "DESIGN" + ".md")
#: Markdown files whose links are checked.
LINKED = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
          *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _files(scope: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in scope:
        if p.is_dir():
            out += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in (".md", ".py", ".toml")]
        else:
            out.append(p)
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    text = _FENCE.sub("", markdown)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.MULTILINE)}


def _links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans."""
    return _LINK.findall(_CODE_SPAN.sub("", _FENCE.sub("", markdown)))


def _outside_references(text: str) -> list[str]:
    """The names of notes outside the repository that ``text`` mentions."""
    return [name for name in FORBIDDEN if name in text]


def _load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` by path (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"gabench_docs_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- self-contained
def test_the_scope_exists():
    for p in SCOPE:
        assert p.exists(), p
    assert len(_files(SCOPE)) >= 8


@pytest.mark.parametrize("path", _files(SCOPE), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path):
    found = _outside_references(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} refers to {found}, which a clone does not have"


def test_outside_references_are_detected():
    assert _outside_references("see " + FORBIDDEN[0] + "/" + FORBIDDEN[2]) == [FORBIDDEN[0], FORBIDDEN[2]]
    assert _outside_references("see docs/method.md") == []


# --------------------------------------------------------------------------- links
@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in _links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            broken.append(target)
        elif file_part and ROOT not in dest.parents and dest != ROOT:
            broken.append(target)  # resolves, but outside the repository
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_link_helpers():
    text = "[a](docs/x.md) ![img](y.png) `[not](code.md)`\n```\n[fenced](z.md)\n```\n[b](#sec-one)\n"
    assert _links(text) == ["docs/x.md", "y.png", "#sec-one"]
    assert _anchors("# Sec one\n## `gabench report STUDY`\n") == {"sec-one", "gabench-report-study"}


def test_docs_link_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("method.md", "textbook.md", "architecture.md", "extending.md"):
        assert (DOCS / page).is_file()
        assert f"]({page})" in index
        assert f"](docs/{page})" in readme


# --------------------------------------------------------------------------- README example
def _readme_api_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    assert match is not None, "the Python API section has no python code block"
    return match.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = _readme_api_example()
    assert "Trainer" in code and "RunConfig" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", out)  # the meta-test summary with its CI
    run_dir = tmp_path / "runs" / "api-example"
    assert {p.name for p in run_dir.iterdir()} == {"results.parquet", "weights.parquet", "config.json"}
    table = pd.read_parquet(run_dir / "results.parquet")
    assert set(table.split) == {"train", "val", "test"}
    assert (namespace["result"].weights.weight < 0).any()  # GA gave some task a negative weight


# --------------------------------------------------------------------------- docs/examples
@pytest.fixture
def examples(monkeypatch):
    """The three example plug-ins, registered for the duration of a test."""
    from gabench.aggregators import AGGREGATORS
    from gabench.algorithms import ALGORITHMS
    from gabench.tasks import FAMILIES

    agg, fam, alg = _load("my_aggregator"), _load("my_family"), _load("my_algorithm")
    monkeypatch.setitem(AGGREGATORS, agg.SoftAgreement.name, agg.SoftAgreement)
    monkeypatch.setitem(FAMILIES, fam.Lines.name, fam.Lines)
    monkeypatch.setitem(ALGORITHMS, alg.Pretrain.name, alg.Pretrain)
    return agg, fam, alg


def test_soft_agreement_hand_computed(examples):
    agg = examples[0]
    # sum_j g_j = (1, 0), s = (1, 1, -1), ||s||_1 = 3: relative GA weights (1, 1, -1)
    G = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    e, f = math.exp(1.0), math.exp(-1.0)
    expected = torch.tensor([e, e, f], dtype=torch.float64) / (2 * e + f)
    torch.testing.assert_close(agg.SoftAgreement(1.0).weights(G), expected)
    # temperature 0.5 doubles the exponents
    e2, f2 = math.exp(2.0), math.exp(-2.0)
    torch.testing.assert_close(agg.SoftAgreement(0.5).weights(G),
                               torch.tensor([e2, e2, f2], dtype=torch.float64) / (2 * e2 + f2))


def test_soft_agreement_properties(examples):
    agg = examples[0].SoftAgreement(0.5)
    G = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = agg.weights(G)
    assert w.shape == (7,) and (w > 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(agg.weights(1e-4 * G), w)  # scale-free
    torch.testing.assert_close(agg.weights(torch.zeros(4, 3)), torch.full((4,), 0.25))  # degenerate
    torch.testing.assert_close(agg.weights(torch.ones(1, 3)), torch.ones(1))
    with pytest.raises(ValueError, match="n_tasks"):
        agg.weights(torch.zeros(3))
    from gabench import ConfigError

    with pytest.raises(ConfigError, match="temperature"):
        examples[0].SoftAgreement(-1.0)


def test_lines_family(examples):
    from gabench.tasks import init_generator, task_rng

    lines = examples[1].Lines(shots=4, query_shots=6)
    batch = lines.sample(5, "train", task_rng(0, "lines", "train"))
    assert batch.support_x.shape == (5, 4, 1) and batch.query_y.shape == (5, 6)
    x = torch.cat([batch.support_x[..., 0], batch.query_x[..., 0]], dim=1).double().numpy()
    y = torch.cat([batch.support_y, batch.query_y], dim=1).double().numpy()
    for i in range(5):
        slope, intercept = np.polyfit(x[i], y[i], 1)
        assert abs(slope) <= 2.0 and abs(intercept) <= 1.0
        np.testing.assert_allclose(slope * x[i] + intercept, y[i], atol=1e-5)
    assert lines.make_model(init_generator(0, "lines"))(batch.support_x[0]).shape == (4, 1)


@pytest.mark.parametrize("fast_path", [True, False])
def test_pretrain_direction_equals_a_per_task_loop(examples, fast_path):
    from gabench.aggregators import GradientAgreement
    from gabench.algorithms import Learner
    from gabench.tasks import init_generator, task_rng

    lines = examples[1].Lines(shots=5, query_shots=5, hidden=8)
    model = lines.make_model(init_generator(0, "lines"))
    params = dict(model.named_parameters())
    batch = lines.sample(4, "train", task_rng(0, "lines", "train"))
    learner = Learner(model, lines.loss, loss_kind="mse", fast_path=fast_path)
    assert (learner.fast is not None) == fast_path
    res = examples[2].Pretrain(alpha=0.05).step(learner, params, batch, GradientAgreement())
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(4):
        loss = lines.loss(model(batch.query_x[i]), batch.query_y[i])
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            expected[k] += res.weights[i] * g
    for k in params:
        torch.testing.assert_close(res.direction[k], expected[k], rtol=1e-5, atol=1e-6)
    # the per-task rows, for aggregators that combine per-task outer gradients
    grads, support_loss, query_loss = examples[2].Pretrain(alpha=0.05).outer_gradients(learner, params, batch)
    for i in range(4):
        loss = lines.loss(model(batch.query_x[i]), batch.query_y[i])
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            torch.testing.assert_close(grads[k][i], g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(support_loss, res.support_loss)
    torch.testing.assert_close(query_loss, res.query_loss)


def test_examples_run_together(examples):
    from gabench.config import RunConfig
    from gabench.trainer import Trainer

    config = RunConfig(family="lines", algorithm="pretrain", aggregator="soft-agreement", steps=30,
                       meta_batch=5, eval_every=15, val_tasks=20, test_tasks=40)
    result = Trainer(config, progress=False).fit()
    assert math.isfinite(result.test["loss_post"].mean)
    w = result.weights
    assert (w.weight > 0).all()
    np.testing.assert_allclose(w.groupby("step").weight.sum(), 1.0, rtol=1e-5)


def test_extending_excerpts_come_from_the_example_files():
    """Each code block of docs/extending.md headed ``# docs/examples/NAME.py`` is a sequence of
    lines of that file, in order (docstrings may be left out on the page)."""
    page = (DOCS / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n# (docs/examples/\S+\.py)\n(.*?)```", page, re.DOTALL)
    assert {b[0] for b in blocks} >= {"docs/examples/my_aggregator.py", "docs/examples/my_family.py",
                                      "docs/examples/my_algorithm.py",
                                      "docs/examples/test_my_aggregator.py"}
    for name, code in blocks:
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        pos = 0
        for line in code.splitlines():
            if not line.strip():
                continue
            while pos < len(lines) and lines[pos] != line:
                pos += 1
            assert pos < len(lines), f"docs/extending.md shows a line not in {name} (in order): {line!r}"
            pos += 1
