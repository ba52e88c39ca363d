"""Hostile and absurd input: the families' size bounds and the up-front memory estimate refuse it
with one line naming the parameter, the value and what is allowed (exit 2), before anything is
created (not even the default ``mlflow.db`` in the working directory)."""

from __future__ import annotations

import pytest
import torch

from gabench import _memory
from gabench._errors import ConfigError
from gabench._memory import MemoryEstimate, TaskShape, estimate_run_memory, task_shape
from gabench.commands import main
from gabench.config import RunConfig
from gabench.study import load_study
from gabench.tasks import Sine, make_family
from gabench.trainer import Trainer

FAST = ["--steps", "2", "--meta-batch", "2", "--test-tasks", "4", "--no-progress"]

HOSTILE = [
    (["--family", "sine", "-P", "hidden=100000000"], "hidden=100000000", "[1, 4096]"),
    (["--family", "sine", "-P", "hidden=0"], "hidden=0", "[1, 4096]"),
    (["--family", "digits", "-P", "hidden=5000"], "hidden=5000", "[1, 4096]"),
    (["--family", "moons", "-P", "hidden=-3"], "hidden=-3", "[1, 4096]"),
    (["--family", "sine", "-P", "shots=0"], "shots=0", "[1, 100000]"),
    (["--family", "sine", "-P", "shots=1000000000"], "shots='1000000000'", "<= 100000"),
    (["--family", "sine", "-P", "query_shots=1000000000"], "query_shots='1000000000'", "<= 100000"),
    (["--family", "sine", "--shots", "1000000000"], "shots=1000000000", "<= 100000"),
    (["--family", "sine", "-P", "query_shots=0"], "query_shots=0", "[1, 100000]"),
    (["--family", "digits", "-P", "ways=9"], "ways=9", "the classes of the smallest split"),
    (["--family", "digits", "-P", "rotations=false", "-P", "ways=3"], "ways=3", "[2, 2]"),
    (["--family", "digits", "-P", "shots=170"], "shots=170", "shots + query_shots <= "),
    (["--family", "classification", "-P", "ways=65"], "ways=65", "[2, 32]"),
    (["--family", "classification", "-P", "dim=2", "-P", "ways=5"], "ways=5", "[2, 4]"),
    (["--family", "classification", "-P", "dim=1000000000"], "dim=1000000000", "[1, 256]"),
    (["--family", "blobs", "-P", "ways=1000"], "ways=1000", "[2, 64]"),
    (["--family", "regression", "-P", "dim=4"], "dim=4", "[5, 256]"),
    (["--family", "linear-binary", "-P", "dim=1000000000"], "dim=1000000000", "[1, 100000]"),
    (["--family", "textbook-binary", "-P", "dim=0"], "dim=0", "[1, 100000]"),
    (["--family", "moons", "-P", "noise=-0.1"], "noise=-0.1", ">= 0"),
    (["--family", "regression", "-P", "noise=-1"], "noise=-1.0", ">= 0"),
    (["--family", "linear-binary", "-P", "label_noise=0.5"], "label_noise=0.5", "[0, 0.5)"),
    (["--family", "sine", "-P", "amp_min=-1"], "amp_min=-1.0", ">= 0"),
    (["--family", "omniglot", "-P", "ways=100000"], "ways=100000", "too few classes"),
    (["--family", "omniglot", "-P", "filters=100000"], "filters=100000", "[1, 512]"),
    (["--family", "mini-imagenet", "-P", "shots=1000"], "shots=1000", "shots + query_shots <= "),
]


@pytest.mark.parametrize("args,named,allowed", HOSTILE, ids=[h[1] for h in HOSTILE])
def test_absurd_family_parameters_are_refused_before_anything_is_created(args, named, allowed, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # tracking on: its default store would be created here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and allowed in err, err
    assert list(tmp_path.iterdir()) == []


def _patch_free(monkeypatch, free: float) -> None:
    monkeypatch.setattr(_memory, "available_bytes", lambda device: (free, free))


@pytest.mark.parametrize("args,named", [
    (["--eval-batch", "100000", "--test-tasks", "100000"], "--eval-batch=100000"),
    (["-P", "hidden=2048"], "-P hidden=2048"),
    (["--meta-batch", "10000", "-P", "query_shots=1000"], "--meta-batch=10000"),
    (["--steps", "10000000", "--meta-batch", "1000"], "--steps=10000000"),
    (["--val-tasks", "1000000", "--eval-every", "10", "-P", "shots=1000"], "--val-tasks=1000000"),
])
def test_a_run_that_does_not_fit_in_memory_is_refused_naming_what_drives_it(args, named, tmp_path,
                                                                            monkeypatch, capsys):
    _patch_free(monkeypatch, 2**30)  # 1 GiB free, whatever this machine has
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "--family", "sine", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gabench run: error: {named} is not allowed"), err
    assert "GiB of memory" in err and "but 1 GiB is available" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_same_runs_fit_when_enough_memory_is_free(monkeypatch):
    _patch_free(monkeypatch, 2.0**50)
    RunConfig(family="sine", family_params={"hidden": 2048}).validate()
    RunConfig(family="sine", eval_batch=100000, test_tasks=100000).validate()


@pytest.mark.slow
def test_default_runs_and_the_shipped_studies_need_little_memory():
    for name in ("textbook-binary", "linear-binary", "sine", "classification", "moons", "circles",
                 "blobs", "regression", "digits"):
        config = RunConfig(family=name)
        est = estimate_run_memory(config, config.build_family())
        assert 0 < est.total < 2**30, (name, est.terms)
    for run in load_study("studies/paper.toml").runs:
        est = estimate_run_memory(run.config, run.config.build_family())
        assert 0 < est.total < 2**30, (run.run_id, est.terms)
    # Conv-4 on images: the run defaults (200 tasks of 75 query images evaluated at once) need
    # tens of GiB; the image study files (meant for a GPU) set eval_batch and meta_batch lower
    for path in ("studies/omniglot.toml", "studies/mini-imagenet.toml"):
        for run in load_study(path).runs:
            est = estimate_run_memory(run.config, run.config.build_family())
            assert 0 < est.total < 32 * 2**30, (run.run_id, est.terms)


def test_estimate_matches_the_documented_formula_by_hand():
    # linear-binary, dim 50: logistic model without bias, P = 50; one example: input 50 values,
    # output 1 -> a = 51, m = 50; 10 support and 10 query examples of 50 inputs
    config = RunConfig(family="linear-binary", meta_batch=4, inner_steps=3, steps=100, val_tasks=30,
                       eval_every=10, test_tasks=60, eval_batch=20)
    family = config.build_family()
    shape = task_shape(family)
    assert shape == TaskShape(params=50, activations=51, largest=50, support=10, query=10, inputs=50)
    est = estimate_run_memory(config, family, shape)
    T, S, P, a, m, Ks, Kq, x = 4, 3, 50, 51, 50, 10, 10, 50
    assert est.terms["meta-training"] == 4 * T * (3 * (S + 2) * P + 3 * (S * Ks + Kq) * a)
    assert est.terms["evaluation"] == 4 * 20 * (3 * P + 2 * Ks * a + 2 * Kq * m)
    assert est.terms["held-out tasks"] == 8 * (30 + 60) * (Ks + Kq) * (x + 1)
    assert est.terms["task sampling"] == 24 * 500 * (Ks + Kq) * (x + 1)  # chunks of 500 tasks
    assert est.terms["training log"] == 100 * (T + 10) * 16 + 48 * 100 * T
    assert est.terms["model and optimizer"] == 24 * P


def test_task_shape_counts_per_class_examples_and_the_conv_model():
    # digits: 5-way, 1 shot and 15 query images per class; the conv net of two 3x3 layers of 16
    # maps: 1*16*9+16 + 16*16*9+16 + (16*2*2)*5+5 parameters
    shape = task_shape(make_family("digits", {"model": "conv"}))
    assert (shape.support, shape.query, shape.inputs) == (5, 75, 64)
    assert shape.params == 160 + 2320 + 325
    # activations of one 8x8 image: input 64, conv1 16*8*8, conv2 16*4*4, head 5
    assert (shape.activations, shape.largest) == (64 + 1024 + 256 + 5, 1024)


def test_memory_split_between_gpu_and_host():
    est = MemoryEstimate(terms={"meta-training": 5.0, "evaluation": 1.0, "held-out tasks": 1.0,
                                "model and optimizer": 1.0, "task sampling": 3.0, "training log": 2.0})
    assert est.on("cpu") == (0.0, 13.0)
    assert est.on("cuda") == (8.0, 5.0)
    assert est.largest(("task sampling", "training log")) == "task sampling"


def test_available_memory_on_cuda_is_the_devices_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123.0, 456.0))
    free_dev, free_host = _memory.available_bytes(torch.device("cuda", 0))
    assert free_dev == 123.0 and free_host > 0


def test_trainer_checks_a_family_instance_it_is_given(monkeypatch):
    _patch_free(monkeypatch, 2**30)
    with pytest.raises(ConfigError, match=r"^-P hidden=2048 is not allowed"):
        Trainer(RunConfig(steps=1), family=Sine(hidden=2048))
    _patch_free(monkeypatch, 2.0**50)
    Trainer(RunConfig(steps=1, test_tasks=2), family=Sine(hidden=8))
