"""Omniglot and Mini-ImageNet from disk, and Conv-4: on synthetic folders in the exact layouts.

The folders are written by the tests (generated PNG and JPEG images); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from gabench import ConfigError
from gabench import datasets as ds
from gabench.aggregators import GradientAgreement, Mean
from gabench.algorithms import MAML, Learner, Reptile
from gabench.commands import build_parser
from gabench.commands import main as cli_main
from gabench.commands.data import DATASET_FAMILIES
from gabench.config import RunConfig
from gabench.datasets import DatasetError, check_dataset, load_dataset, omniglot_split
from gabench.models import BatchStatNorm2d, Conv4
from gabench.results import RunResult
from gabench.study import load_study
from gabench.tasks import MiniImageNet, Omniglot, TaskBatch, init_generator, make_family, task_rng
from gabench.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def train(config: RunConfig) -> RunResult:
    """Meta-train and meta-test one configuration (the one place that builds a trainer here)."""
    return Trainer(config, progress=False).fit()


@pytest.fixture
def omniglot(tmp_path, monkeypatch) -> Path:
    """A small Omniglot folder (30 characters x 16 images) with its own cache."""
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "cache"))
    ds.clear_loaded()
    return ds.write_synthetic_omniglot(tmp_path / "omniglot", characters=30, images=16)


@pytest.fixture
def mini(tmp_path, monkeypatch) -> Path:
    """A small Mini-ImageNet folder (8/5/5 classes x 16 images) with its own cache."""
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "cache"))
    ds.clear_loaded()
    return ds.write_synthetic_mini_imagenet(tmp_path / "mini-imagenet", classes=(8, 5, 5), images=16)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- loading and cache
def test_omniglot_layout_is_read_and_cached(omniglot):
    data = load_dataset("omniglot", str(omniglot))
    assert not data.from_cache
    assert data.images.dtype == np.uint8 and data.images.shape == (30 * 16, 1, 28, 28)
    assert len(data.class_names) == 30 and (data.counts == 16).all()
    assert data.class_names[0].startswith("images_background/Alphabet_00/")
    # the cached pixels are the decoded files, class by class
    first = sorted((omniglot / data.class_names[3]).glob("*.png"))[0]
    np.testing.assert_array_equal(data.images[data.offsets[3]], ds.decode_image(first, "omniglot"))
    # a second load of the unchanged folder maps the cache: nothing is decoded
    ds.clear_loaded()
    entries = sorted(p.name for p in data.cache_path.parent.iterdir())
    again = load_dataset("omniglot", str(omniglot))
    assert again.from_cache and again.cache_path == data.cache_path
    np.testing.assert_array_equal(again.images, data.images)
    assert sorted(p.name for p in data.cache_path.parent.iterdir()) == entries  # no temporary left


def test_cache_hit_does_not_decode(omniglot, monkeypatch):
    load_dataset("omniglot", str(omniglot))
    ds.clear_loaded()

    def fail(path, dataset):
        raise AssertionError("decoded although the cache has the folder")

    monkeypatch.setattr(ds, "decode_image", fail)
    assert load_dataset("omniglot", str(omniglot)).from_cache


def test_changed_folder_invalidates_the_cache(omniglot):
    old = load_dataset("omniglot", str(omniglot))
    ds.clear_loaded()
    char = omniglot / old.class_names[0]
    png = sorted(char.glob("*.png"))[0]
    png.rename(char / "extra_copy.png")  # same bytes, other name: a different listing
    new = load_dataset("omniglot", str(omniglot))
    assert not new.from_cache and new.cache_path != old.cache_path
    assert not old.cache_path.exists()  # the folder's stale entry is removed
    ds.clear_loaded()
    time.sleep(0.01)
    os.utime(char / "extra_copy.png")  # touched: new modification time
    assert not load_dataset("omniglot", str(omniglot)).from_cache


def test_mini_imagenet_layout(mini):
    data = load_dataset("mini-imagenet", str(mini))
    assert data.images.shape == (18 * 16, 3, 84, 84)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 8, "val": 5, "test": 5}
    name = (mini / "val.csv").read_text().splitlines()[1].split(",")[0]
    label = name[:9]
    c = data.class_names.index(label)
    assert c in data.splits["val"]
    np.testing.assert_array_equal(data.images[data.offsets[c]],
                                  ds.decode_image(mini / "images" / name, "mini-imagenet"))
    assert check_dataset("mini-imagenet", str(mini)) == {
        "train": {"classes": 8, "images": 128}, "val": {"classes": 5, "images": 80},
        "test": {"classes": 5, "images": 80}}


def test_omniglot_split_rule():
    full = omniglot_split([f"images_background/a{i // 20:03d}/c{i:04d}" for i in range(1623)])
    assert [len(full[s]) for s in ("train", "val", "test")] == [1200, 100, 323]
    small = omniglot_split([f"s/a/c{i:02d}" for i in range(30)])
    assert [len(small[s]) for s in ("train", "val", "test")] == [22, 2, 6]  # round(30*1200/1623)=22
    everything = np.concatenate(list(small.values()))
    assert sorted(everything.tolist()) == list(range(30))
    # independent of the order the folders were listed in
    names = [f"s/a/c{i:02d}" for i in range(30)]
    shuffled = names[::-1]
    a = {s: {names[i] for i in v} for s, v in omniglot_split(names).items()}
    b = {s: {shuffled[i] for i in v} for s, v in omniglot_split(shuffled).items()}
    assert a == b
    with pytest.raises(ValueError):
        omniglot_split(["a", "b", "c"])


def test_root_parameter_wins_over_the_environment(tmp_path, monkeypatch, omniglot):
    other = ds.write_synthetic_omniglot(tmp_path / "elsewhere" / "omniglot", characters=40, images=16)
    monkeypatch.setenv(ds.DATA_ENV, str(tmp_path / "elsewhere"))
    assert len(load_dataset("omniglot").class_names) == 40
    assert load_dataset("omniglot", str(omniglot)).root == omniglot
    assert len(Omniglot(root=str(omniglot)).data.class_names) == 30
    assert Omniglot().data.root == other
    monkeypatch.delenv(ds.DATA_ENV)
    with pytest.raises(ConfigError, match="GABENCH_DATA"):
        Omniglot()


# --------------------------------------------------------------------------- sampling
def test_omniglot_tasks(omniglot):
    fam = Omniglot(root=str(omniglot), ways=5, shots=2, query_shots=3)
    b = fam.sample(6, "train", task_rng(0, "omniglot", "train"))
    assert b.support_x.shape == (6, 10, 1, 28, 28) and b.query_x.shape == (6, 15, 1, 28, 28)
    assert b.support_x.dtype == torch.float32 and 0 <= b.support_x.min() and b.support_x.max() <= 1
    assert b.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert b.classes.shape == (6, 5)
    for t in range(6):  # distinct classes per task, all from the train split
        assert len(set(b.classes[t].tolist())) == 5
        assert set(b.classes[t].tolist()) <= set(fam.classes_of("train").tolist())
    # each image is a stored image of its character, rotated by its class's rotation, and the
    # support and query images of a class are distinct images
    data = fam.data
    for t, label in [(0, 0), (3, 4), (5, 2)]:
        stored, rot = divmod(int(b.classes[t, label]), 4)
        pool = data.images[data.offsets[stored]:data.offsets[stored + 1], 0]
        candidates = np.rot90(pool, rot, axes=(-2, -1))
        shown = torch.cat([b.support_x[t, b.support_y[t] == label], b.query_x[t, b.query_y[t] == label]])
        pixels = np.rint((1.0 - shown[:, 0].numpy()) * 255).astype(np.uint8)  # strokes are 1
        found = [int(np.flatnonzero([np.array_equal(img, c) for c in candidates])[0]) for img in pixels]
        assert len(set(found)) == 5


def test_splits_are_disjoint_and_sampling_is_deterministic(mini):
    fam = MiniImageNet(root=str(mini), ways=3, shots=1, query_shots=2)
    seen = {}
    for split in ("train", "val", "test"):
        a = fam.sample(20, split, task_rng(1, "mini-imagenet", split))
        b = fam.sample(20, split, task_rng(1, "mini-imagenet", split))
        c = fam.sample(20, split, task_rng(2, "mini-imagenet", split))
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.classes, b.classes)
        assert not torch.equal(a.support_x, c.support_x)
        assert a.support_x.shape == (20, 3, 3, 84, 84)
        seen[split] = set(a.classes.flatten().tolist())
        assert seen[split] <= set(fam.classes_of(split).tolist())
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]
    assert len(seen["train"]) == 8  # 20 tasks of 3 classes reach every train class


@pytest.mark.slow
def test_sampling_is_a_small_share_of_a_meta_iteration(omniglot):
    """Sampling stays <= 10% of a meta-iteration (Omniglot 5-way 1-shot MAML, Conv-4 with 64 filters,
    CPU; T=8 instead of 32 to keep the test short: both costs grow linearly with T)."""
    config = RunConfig(family="omniglot", family_params={"root": str(omniglot), "query_shots": 1},
                       meta_batch=8, alpha=0.4, steps=1)
    trainer = Trainer(config, progress=False)
    rng = task_rng(0, "omniglot", "train")
    sample_s, step_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        batch = trainer.family.sample(8, "train", rng)
        t1 = time.perf_counter()
        trainer.train_step(batch)
        t2 = time.perf_counter()
        sample_s.append(t1 - t0)
        step_s.append(t2 - t1)
    assert np.median(sample_s) <= 0.1 * np.median(step_s)


# --------------------------------------------------------------------------- Conv-4
def test_batch_stat_norm_is_batch_norm_with_batch_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = BatchStatNorm2d(4).double()
    ref = nn.BatchNorm2d(4, track_running_stats=False).double()
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2, 4))
            m.bias.copy_(torch.linspace(-1, 1, 4))
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((out * w).sum(), x)[0],
                               torch.autograd.grad((expected * w).sum(), x)[0])
    assert not list(ours.buffers())


def test_conv4_architecture_and_seeded_init():
    omni = Conv4(1, 28, 5, init_generator(0, "omniglot"), filters=64)
    assert omni(torch.rand(7, 1, 28, 28)).shape == (7, 5)
    assert omni.head.in_features == 64  # 28 -> 14 -> 7 -> 3 -> 1
    conv = [m for m in omni.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in conv] == [
        (1, 64, (3, 3), (1, 1))] + [(64, 64, (3, 3), (1, 1))] * 3
    assert sum(p.numel() for p in omni.parameters()) == 9 * 64 + 3 * 9 * 64 * 64 + 4 * 128 + 64 * 5 + 5
    mini = Conv4(3, 84, 5, init_generator(0, "mini-imagenet"), filters=32)
    assert mini.head.in_features == 32 * 5 * 5 and mini(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    again = Conv4(1, 28, 5, init_generator(0, "omniglot"), filters=64)
    other = Conv4(1, 28, 5, init_generator(1, "omniglot"), filters=64)
    for p, q, r in zip(omni.parameters(), again.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
        assert p.numel() <= 64 or not torch.equal(p, r)
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Glorot-uniform
    w = omni.blocks[1].conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def _loop_direction(model: nn.Module, batch: TaskBatch, alpha: float, steps: int, weights: torch.Tensor,
                    algorithm: str, first_order: bool) -> list[torch.Tensor]:
    """The outer direction task by task with plain autograd (independent of gabench's vmap)."""
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    loss_fn = nn.functional.cross_entropy
    total = [torch.zeros_like(p) for p in params]
    for i in range(batch.n_tasks):
        fast = params
        for _ in range(steps):
            pred = functional_call(model, dict(zip(names, fast, strict=True)), (batch.support_x[i],))
            grads = torch.autograd.grad(loss_fn(pred, batch.support_y[i]), fast,
                                        create_graph=algorithm == "maml" and not first_order)
            fast = [p - alpha * g for p, g in zip(fast, grads, strict=True)]
        if algorithm == "reptile":
            contrib = [(p - f).detach() for p, f in zip(params, fast, strict=True)]
        else:
            if first_order:
                fast = [f.detach().requires_grad_(True) for f in fast]
            pred = functional_call(model, dict(zip(names, fast, strict=True)), (batch.query_x[i],))
            contrib = torch.autograd.grad(loss_fn(pred, batch.query_y[i]), fast if first_order else params)
        total = [t + weights[i] * c for t, c in zip(total, contrib, strict=True)]
    return total


@pytest.mark.parametrize("algorithm,first_order,steps,aggregator", [
    ("maml", False, 1, "ga"), ("maml", False, 2, "mean"), ("maml", True, 2, "ga"),
    ("reptile", False, 3, "ga"),
])
@pytest.mark.slow
def test_conv4_meta_gradient_matches_a_per_task_loop(omniglot, algorithm, first_order, steps, aggregator):
    """Conv-4 on the batched (vmap) path: the outer direction equals a per-task autograd loop.

    float64, with images plus a little noise (binary images make max-pool ties, whose subgradient
    choice may differ between batched and per-task kernels).
    """
    fam = Omniglot(root=str(omniglot), ways=5, shots=2, query_shots=2, filters=8)
    batch = fam.sample(4, "train", task_rng(0, "omniglot", "train"))
    g = torch.Generator().manual_seed(0)
    noisy = {k: getattr(batch, k).double() + 0.05 * torch.randn(getattr(batch, k).shape, generator=g,
                                                                dtype=torch.float64)
             for k in ("support_x", "query_x")}
    batch = dataclasses.replace(batch, **noisy)
    model = fam.make_model(init_generator(0, "omniglot")).double()
    learner = Learner(model, fam.loss, fam.accuracy, loss_kind="ce")
    assert learner.fast is None  # Conv-4 takes the general vmap path
    alpha = 0.4
    algo = MAML(alpha, steps, first_order=first_order) if algorithm == "maml" else Reptile(alpha, steps)
    agg = GradientAgreement() if aggregator == "ga" else Mean()
    params = dict(model.named_parameters())
    res = algo.step(learner, params, batch, agg)
    expected = _loop_direction(model, batch, alpha, steps, res.weights, algorithm, first_order)
    for name, e in zip(params, expected, strict=True):
        torch.testing.assert_close(res.direction[name], e, rtol=1e-9, atol=1e-12, msg=name)
    if aggregator == "ga":
        assert not torch.allclose(res.weights, torch.full_like(res.weights, 0.25))


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("family,method", [("omniglot", "maml"), ("omniglot", "reptile+ga"),
                                           ("mini-imagenet", "fomaml"), ("mini-imagenet", "maml+ga")])
@pytest.mark.slow
def test_trains_and_evaluates_through_the_trainer(family, method, omniglot, mini):
    from gabench.config import parse_method

    root = omniglot if family == "omniglot" else mini
    config = RunConfig(family=family, family_params={"root": str(root), "ways": 3, "shots": 1,
                                                     "query_shots": 2, "filters": 8},
                       **parse_method(method), inner_steps=2, eval_inner_steps=3, meta_batch=2,
                       steps=3, eval_every=2, val_tasks=2, test_tasks=4, eval_batch=4)
    result = train(config)
    table = result.results
    assert set(table["split"]) == {"train", "val", "test"}
    assert np.isfinite(table["value"]).all()
    assert result.test["acc_post"].n == 4 and 0 <= result.test["acc_post"].mean <= 1
    again = train(config)
    pd_cols = ["step", "split", "metric", "value"]
    a = table[table.metric != "wall_seconds"][pd_cols].reset_index(drop=True)
    b = again.results[again.results.metric != "wall_seconds"][pd_cols].reset_index(drop=True)
    assert a.equals(b)  # same config and seed, same numbers


# --------------------------------------------------------------------------- the study files
@pytest.mark.parametrize("study,labels", [
    ("omniglot", {"omniglot-5w1s": (5, 1, 32, 0.4, 1, 3), "omniglot-5w5s": (5, 5, 32, 0.4, 1, 3),
                  "omniglot-20w1s": (20, 1, 16, 0.1, 5, 5), "omniglot-20w5s": (20, 5, 16, 0.1, 5, 5)}),
    ("mini-imagenet", {"mini-imagenet-5w1s": (5, 1, 4, 0.01, 5, 10),
                       "mini-imagenet-5w5s": (5, 5, 2, 0.01, 5, 10)}),
])
@pytest.mark.slow
def test_study_files_plan_and_run(study, labels, tmp_path, monkeypatch):
    """The study files hold MAML's settings and each of their families runs a few steps."""
    data = tmp_path / "data"
    ds.write_synthetic_omniglot(data / "omniglot", characters=75, images=10)  # 5 val characters
    ds.write_synthetic_mini_imagenet(data / "mini-imagenet", classes=(6, 5, 5), images=20)
    monkeypatch.setenv(ds.DATA_ENV, str(data))
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "cache"))
    plan = load_study(ROOT / "studies" / f"{study}.toml")
    assert set(plan.methods) == {"maml", "fomaml", "maml+ga", "reptile", "reptile+ga"}
    assert plan.pairs == {"maml+ga": "maml", "reptile+ga": "reptile"}
    for run in plan.runs:
        c = run.config
        ways, shots, meta_batch, alpha, inner, eval_inner = labels[run.family_label]
        assert (c.family_params["ways"], c.family_params["shots"], c.meta_batch) == (ways, shots, meta_batch)
        assert (c.effective_alpha, c.beta, c.optimizer, c.steps) == (alpha, 0.001, "adam", 60000)
        if c.algorithm == "maml" or inner > 1:  # Reptile takes 5 steps where MAML takes 1
            assert (c.inner_steps, c.eval_inner_steps) == (inner, eval_inner)
        else:
            assert (c.inner_steps, c.eval_inner_steps) == (5, 5)
    methods = list(plan.methods)
    for i, label in enumerate(labels):  # one run per family, methods in turn, a few steps
        run = next(r for r in plan.runs if r.family_label == label and r.method_label == methods[i % 5])
        small = dataclasses.replace(run.config, steps=2, meta_batch=2, test_tasks=1,
                                    eval_every=0, family_params={**run.config.family_params,
                                                                 "query_shots": 1, "filters": 8})
        result = train(small)
        assert np.isfinite(result.results["value"]).all()
    out = tmp_path / "runs"
    study_file = str(ROOT / "studies" / f"{study}.toml")
    assert cli_main(["compare", study_file, "--plan", "--out-root", str(out)]) == 0


# --------------------------------------------------------------------------- bad folders
def _bad_omniglot(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A broken Omniglot folder and the path its error must name."""
    root = ds.write_synthetic_omniglot(tmp_path / "omni", characters=30, images=4)
    char = sorted((root / "images_background").glob("*/*"))[0]
    if kind == "missing":
        return tmp_path / "nowhere", tmp_path / "nowhere"
    if kind == "layout":  # the user pointed at images_background itself
        return root / "images_background", root / "images_background"
    if kind == "empty-character":
        for png in char.glob("*.png"):
            png.unlink()
        return root, char
    if kind == "unreadable":
        bad = char / "broken.png"
        bad.write_bytes(b"not a png at all")
        return root, bad
    if kind == "truncated":
        png = sorted(char.glob("*.png"))[0]
        png.write_bytes(png.read_bytes()[:60])
        return root, png
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,problem", [
    ("missing", "no such Omniglot folder"), ("layout", "wrong layout: no images_background/"),
    ("empty-character", "no .png images"), ("unreadable", "unreadable image"),
    ("truncated", "unreadable image"),
])
def test_bad_omniglot_folders_give_one_line(tmp_path, monkeypatch, kind, problem):
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "cache"))
    root, named = _bad_omniglot(tmp_path, kind)
    with pytest.raises(DatasetError) as exc:
        check_dataset("omniglot", str(root))
    assert one_line(exc).startswith(f"{named}: ") and problem in str(exc.value)
    assert not list((tmp_path / "cache").glob("omniglot-*"))  # nothing half-written is kept


def _bad_mini(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    root = ds.write_synthetic_mini_imagenet(tmp_path / "mini", classes=(3, 3, 3), images=4)
    if kind == "no-images":
        (root / "images").rename(root / "pictures")
        return root, root
    if kind == "no-csv":
        (root / "val.csv").unlink()
        return root, root
    if kind == "header":
        text = (root / "test.csv").read_text().splitlines()
        (root / "test.csv").write_text("\n".join(["image,class", *text[1:]]) + "\n")
        return root, root / "test.csv"
    if kind == "missing-image":
        name = (root / "train.csv").read_text().splitlines()[2].split(",")[0]
        (root / "images" / name).unlink()
        return root, root / "images" / name
    if kind == "shared-class":
        line = (root / "train.csv").read_text().splitlines()[1]
        with (root / "val.csv").open("a") as fh:
            fh.write(line + "\n")
        return root, root / "val.csv"
    if kind == "unreadable":
        name = (root / "val.csv").read_text().splitlines()[1].split(",")[0]
        (root / "images" / name).write_bytes(b"\xff\xd8 broken jpeg")
        return root, root / "images" / name
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,problem", [
    ("no-images", "no images/ folder"), ("no-csv", "no val.csv"), ("header", "wrong header"),
    ("missing-image", "missing (listed in train.csv line 3)"), ("shared-class", "must not share classes"),
    ("unreadable", "unreadable image"),
])
def test_bad_mini_imagenet_folders_give_one_line(tmp_path, monkeypatch, kind, problem):
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "cache"))
    root, named = _bad_mini(tmp_path, kind)
    with pytest.raises(DatasetError) as exc:
        check_dataset("mini-imagenet", str(root))
    assert one_line(exc).startswith(f"{named}: ") and problem in str(exc.value)


def test_too_few_classes_for_the_ways(omniglot, mini):
    with pytest.raises(DatasetError, match=r"too few classes for ways=9: the val split has 8 \(2 characters"):
        check_dataset("omniglot", str(omniglot), ways=9)
    with pytest.raises(DatasetError) as exc:
        MiniImageNet(root=str(mini), ways=6)
    assert one_line(exc) == f"{mini}: too few classes for ways=6: the val split has 5"
    with pytest.raises(ConfigError, match="shots=10"):
        Omniglot(root=str(omniglot), shots=10, query_shots=7)  # 16 images per character


def test_training_on_a_bad_folder_exits_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["run", "--family", "omniglot", "-P", f"root={tmp_path / 'nowhere'}", "--steps", "1",
                     "--out", str(out), "--no-tracking"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err == f"gabench run: error: {tmp_path / 'nowhere'}: no such Omniglot folder"


# --------------------------------------------------------------------------- gabench data check
def _data_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["data", "check", *argv])


def test_data_command_lists_the_dataset_families():
    assert DATASET_FAMILIES == ds.DATASETS


def test_data_check_prints_counts(omniglot, capsys):
    args = _data_args("--family", "omniglot", "-P", f"root={omniglot}", "-P", "ways=8")
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert f"omniglot at {omniglot}: OK (decoded now" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:6]}
    assert rows == {"train": ["22", "88", "352"], "val": ["2", "8", "32"], "test": ["6", "24", "96"],
                    "total": ["30", "120", "480"]}
    ds.clear_loaded()
    assert args.run(args) == 0
    assert "OK (cached" in capsys.readouterr().out


def test_data_check_refuses_bad_folders(omniglot, tmp_path):
    args = _data_args("--family", "omniglot", "-P", "ways=9", "-P", f"root={omniglot}")
    with pytest.raises(DatasetError, match="too few classes for ways=9"):
        args.run(args)
    args = _data_args("--family", "mini-imagenet", "-P", f"root={tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError, match="no such Mini-ImageNet folder"):
        args.run(args)
    args = _data_args("--family", "digits")
    with pytest.raises(ConfigError, match="--family"):
        args.run(args)


def test_cache_entry_records_its_folder(omniglot):
    data = load_dataset("omniglot", str(omniglot))
    meta = json.loads((data.cache_path / "meta.json").read_text())
    assert meta["root"] == str(omniglot) and meta["dataset"] == "omniglot"
    assert meta["offsets"][-1] == data.images.shape[0]


def test_family_from_string_parameters(omniglot):
    fam = make_family("omniglot", {"root": str(omniglot), "ways": "4", "filters": "16"})
    assert (fam.ways, fam.filters, fam.root) == (4, 16, str(omniglot))
    assert fam.make_model(init_generator(0, "omniglot")).head.out_features == 4
