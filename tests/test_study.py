"""Study files: validation errors name the file, the key and the problem; plans expand as declared."""

from __future__ import annotations

import pytest
from helpers import study_file

from gabench.commands import main
from gabench.study import StudyError, Tuned, load_study

BASE = """
name = "demo"
seeds = 2
[defaults]
steps = 7
meta_batch = 3
[families.sine]
[methods.maml]
algorithm = "maml"
[methods."maml+ga"]
algorithm = "maml"
aggregator = "ga"
"""


def write(tmp_path, text: str, name: str = "s.toml"):
    return study_file(tmp_path, text, name)


def test_plan_expands_seeds_families_settings_methods(tmp_path):
    path = write(tmp_path, """
        seeds = [3, 5]
        [defaults]
        steps = 7
        beta = 0.002
        [settings]
        outlier_fraction = [0.0, 0.25]
        [families.sine]
        steps = 11
        [families.moons-noisy]
        family = "moons"
        params = { noise = 0.3 }
        [methods.fomaml]
        algorithm = "maml"
        first_order = true
        beta = 0.003
        families.sine = { beta = 0.004, alpha = 0.02 }
        [methods."fomaml+ga"]
        algorithm = "maml"
        first_order = true
        aggregator = "ga"
        [methods.reptile]
        algorithm = "reptile"
        inner_steps = 2
    """)
    study = load_study(path)
    assert study.name == "s"
    assert len(study.runs) == 2 * 2 * 2 * 3
    ids = [r.run_id for r in study.runs]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "sine__fomaml__s3__outlier_fraction-0"
    assert "moons-noisy__reptile__s5__outlier_fraction-0.25" in ids
    assert [r.config.seed for r in study.runs] == [3] * 12 + [5] * 12  # seed-major
    by_id = {r.run_id: r for r in study.runs}
    sine_fo = by_id["sine__fomaml__s3__outlier_fraction-0.25"].config
    assert (sine_fo.steps, sine_fo.beta, sine_fo.alpha, sine_fo.first_order) == (11, 0.004, 0.02, True)
    assert sine_fo.outlier_fraction == 0.25
    moons_fo = by_id["moons-noisy__fomaml__s3__outlier_fraction-0"].config
    assert (moons_fo.steps, moons_fo.beta, moons_fo.alpha) == (7, 0.003, None)
    assert moons_fo.family == "moons" and moons_fo.family_params == {"noise": 0.3}
    rep = by_id["moons-noisy__reptile__s5__outlier_fraction-0.25"]
    assert (rep.config.inner_steps, rep.config.beta, rep.method_label) == (2, 0.002, "reptile")
    assert rep.family_label == "moons-noisy" and rep.setting_label == "outlier_fraction=0.25"
    assert study.pairs == {"fomaml+ga": "fomaml"}


def test_family_parameter_grid_and_family_level_settings(tmp_path):
    path = write(tmp_path, BASE + """
        [families.moons]
        settings = { "params.noise" = [0.1, 0.2] }
    """)
    study = load_study(path)
    moons = [r for r in study.runs if r.family_label == "moons"]
    assert len(moons) == 2 * 2 * 2
    assert {r.config.family_params["noise"] for r in moons} == {0.1, 0.2}
    assert "moons__maml__s0__noise-0.2" in {r.run_id for r in moons}
    assert len([r for r in study.runs if r.family_label == "sine"]) == 4


def test_tuned_alpha_beta_come_from_the_optuna_study(tmp_path):
    asked = []

    def fake(t: Tuned) -> dict[str, float]:
        asked.append(t)
        return {"alpha": 0.5, "beta": 0.01, "inner_steps": 3}

    path = write(tmp_path, BASE + """
        [methods.reptile]
        algorithm = "reptile"
        tuned = { storage = "sqlite:///x.db", study = "{family}-{method}" }
    """)
    study = load_study(path, load_tuned=fake)
    rep = [r.config for r in study.runs if r.method_label == "reptile"]
    assert all((c.alpha, c.beta) == (0.5, 0.01) for c in rep)
    assert Tuned("sqlite:///x.db", "sine-reptile") in asked


def _optuna_study(tmp_path, trials: list[tuple[str, float, float | None]]) -> str:
    """An SQLite storage holding study 'sine-maml' with the given trials (state, alpha, value;
    beta 0.01, or 0.02 - alpha / 20 for the complete ones); returns its URL."""
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    st = optuna.create_study(study_name="sine-maml", storage=storage)
    dist = {"alpha": optuna.distributions.FloatDistribution(1e-3, 1, log=True),
            "beta": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for state, alpha, value in trials:
        st.add_trial(optuna.trial.create_trial(
            params={"alpha": alpha, "beta": 0.02 - alpha / 20 if state == "COMPLETE" else 0.01},
            distributions=dist, value=value, intermediate_values={0: 2.0} if state == "PRUNED" else {},
            state=optuna.trial.TrialState[state]))
    return storage


def test_tuned_with_a_real_optuna_storage(tmp_path):
    storage = _optuna_study(tmp_path, [("COMPLETE", 0.3, 1.0), ("COMPLETE", 0.05, 0.5)])
    path = write(tmp_path, BASE.replace('[methods.maml]\nalgorithm = "maml"',
                                        f'[methods.maml]\nalgorithm = "maml"\n'
                                        f'tuned = {{ storage = "{storage}", study = "sine-maml" }}'))
    cfg = next(r.config for r in load_study(path).runs if r.method_label == "maml")
    assert (cfg.alpha, cfg.beta) == (0.05, 0.0175)
    bad = write(tmp_path, BASE.replace('[methods.maml]\nalgorithm = "maml"',
                                       f'[methods.maml]\nalgorithm = "maml"\n'
                                       f'tuned = {{ storage = "{storage}", study = "nope" }}'), "bad.toml")
    with pytest.raises(StudyError, match=r"bad\.toml: methods\.maml\.tuned: no Optuna study 'nope'"):
        load_study(bad)


def test_a_tuned_reference_with_trials_waits_for_the_optuna_study_to_hold_them(tmp_path):
    storage = _optuna_study(tmp_path, [("COMPLETE", 0.1, 1.0), ("PRUNED", 0.2, None), ("FAIL", 0.3, None)])

    def study_with(trials: object):
        ref = f'tuned = {{ storage = "{storage}", study = "sine-maml", trials = {trials} }}'
        return write(tmp_path, BASE.replace('[methods.maml]\nalgorithm = "maml"',
                                            f'[methods.maml]\nalgorithm = "maml"\n{ref}'), f"t{trials}.toml")

    assert next(r.config for r in load_study(study_with(2)).runs if r.method_label == "maml").alpha == 0.1
    with pytest.raises(StudyError, match=r"t3\.toml: methods\.maml\.tuned: .*'sine-maml'.* holds 2 of its 3 "
                                         r"trials \(tuning not finished\)"):
        load_study(study_with(3))  # complete and pruned trials count; the failed one does not
    for bad in (0, '"30"', "true"):
        with pytest.raises(StudyError, match=r"methods\.maml\.tuned\.trials: expected an integer in \[1, "):
            load_study(study_with(bad))


ERRORS = [
    ("colour = 1", "colour", "unknown key"),
    ("seeds = 0", "seeds", "count in [1, 10000]"),
    ("seeds = 9223372036854775807", "seeds", "count in [1, 10000]"),
    ("seeds = [1, 1]", "seeds", "distinct"),
    ('seeds = [0, "a"]', "seeds[1]", "integer in [0, 9223372036854775807]"),
    ("seeds = [0, -1]", "seeds[1]", "integer in [0, 9223372036854775807]"),
    ('[defaults]\nsteps = "many"', "defaults.steps", "expected an integer, got a string"),
    ("[defaults]\nsteps = 1_000_000_000_000_000", "defaults.steps", "steps=1000000000000000"),
    ("[defaults]\nval_tasks = 10_000_000_000", "defaults.val_tasks", "an integer in [1, 1000000]"),
    ("[defaults]\nbeta = 1e300", "defaults.beta", "<= 1000"),
    ("[defaults]\nfamily = 'sine'", "defaults.family", "unknown key"),
    ("[families.nope]", "families.nope", "unknown family 'nope'"),
    ("[families.x]\nfamily = 'sine'\nwidth = 3", "families.x.width", "unknown key"),
    ("[families.x]\nfamily = 'sine'\nparams = { shots = 0 }", "families.x.params.shots", "shots=0"),
    ("[families.x]\nfamily = 'sine'\nparams = { colour = 1 }", "families.x.params.colour", "sine.colour"),
    ("[methods.bad]\naggregator = 'ga'", "methods.bad.algorithm", "missing"),
    ("[methods.bad]\nalgorithm = 'sgd'", "methods.bad.algorithm", "algorithm='sgd'"),
    ("[methods.bad]\nalgorithm = 'maml'\nalpha = -1\nbaseline = 'maml'", "methods.bad.alpha",
     "alpha=-1.0"),
    ("[methods.bad]\nalgorithm = 'reptile'\nfirst_order = true", "methods.bad.first_order", "first_order"),
    ("[methods.bad]\nalgorithm = 'maml'\nfamilies.moons = { beta = 0.1 }", "methods.bad.families.moons",
     "not a family of this study"),
    ("[methods.bad]\nalgorithm = 'maml'\ntuned = { storage = 'sqlite:///a.db' }", "methods.bad.tuned.study",
     "missing"),
    ("[methods.bad]\nalgorithm = 'maml'\ntuned = { storage = 's', study = '{family.__class__}' }",
     "methods.bad.tuned.study", "only {family} and {method}"),
    ("[methods.bad]\nalgorithm = 'maml'\nalpha = 0.1\ntuned = { storage = 's', study = 't' }",
     "methods.bad.alpha", "keep one"),
    ("[methods.bad]\nalgorithm = 'maml'\naggregator = 'ga'\nbaseline = 'nope'", "methods.bad.baseline",
     "not another method"),
    ("[methods.maml2]\nalgorithm = 'maml'", 'methods."maml+ga".baseline', "several baselines match"),
    ("[methods.'a__b']\nalgorithm = 'maml'", "methods.a__b", "label"),
    ("[settings]\ncolour = [1]", "settings.colour", "unknown setting"),
    ("[settings]\noutlier_fraction = 0.1", "settings.outlier_fraction", "non-empty list"),
    ("[settings]\noutlier_fraction = [0.1, 2.0]", "settings.outlier_fraction[1]", "outlier_fraction=2.0"),
    ("[settings]\noutlier_mode = ['flip']", "settings.outlier_mode[0]", "outlier_mode='flip'"),
]


@pytest.mark.parametrize("extra,key,problem", ERRORS, ids=[e[1] + ":" + e[2] for e in ERRORS])
def test_errors_name_file_key_and_problem(tmp_path, extra, key, problem):
    if extra.startswith("seeds"):
        text = BASE.replace("seeds = 2", extra)
    elif extra.startswith("[defaults]"):
        text = BASE.replace("steps = 7", extra.partition("\n")[2])
    elif extra.startswith("["):
        text = BASE + "\n" + extra
    else:
        text = extra + "\n" + BASE
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message, message


@pytest.mark.parametrize("text,problem", [
    ("name = ", "is not valid TOML"),
    ("[families.sine]\n", "methods: missing"),
    ("[methods.maml]\nalgorithm = 'maml'\n", "families: missing"),
])
def test_file_level_errors(tmp_path, text, problem):
    with pytest.raises(StudyError, match=problem):
        load_study(write(tmp_path, text))
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "absent.toml")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, BASE + "\n[methods.bad]\nalgorithm = 'reptile'\nalpha = 0\n")
    assert main(["compare", str(path), "--out-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("gabench compare: error: ") and f"{path}: methods.bad.alpha: " in err
    assert not (tmp_path / "runs").exists()


def test_plan_flag_lists_runs_without_running(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert main(["compare", str(path), "--plan", "--out-root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"sine__{m}__s{s}\tmissing" for s in (0, 1) for m in ("maml", "maml+ga")]


def test_shipped_studies_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "studies").glob("*.toml")) + [root / "tests/regression/study.toml"]
    assert len(files) >= 5
    for f in files:
        # a [tuning] study's alpha and beta come from its journal, which may still be filling
        study = load_study(f, resolve_tuned=False)
        assert study.runs, f
        if study.tuning is not None:
            assert len(study.tuning_tasks) == len(study.runs) // len(study.seeds), f
