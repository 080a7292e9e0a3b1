"""The Optuna side of sweeps without training: search-space grammar, best config, seeding."""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from imgclf.compose import compose_params
from imgclf.sweeps import report
from imgclf.sweeps import study as st
from tests.conftest import REPO_ROOT


def test_search_space_grammar_maps_to_optuna_distributions():
    params = {
        "optimizer": "choice(adam, sgd)",
        "optimizer.learning_rate": "tag(log, interval(0.0001, 0.01))",
        "model.dropout": "interval(0.1, 0.5)",
        "model.blocks": "range(1, 4)",
        "model.filters": "choice(16, 32)",
    }
    space, fixed = st.parse_search_space(params, ["model.filters=choice(8,16)", "train.epochs=3"])
    assert space["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert space["optimizer.learning_rate"] == FloatDistribution(0.0001, 0.01, log=True)
    assert space["model.dropout"] == FloatDistribution(0.1, 0.5)
    assert space["model.blocks"] == IntDistribution(1, 3)  # range's stop is exclusive
    assert space["model.filters"] == CategoricalDistribution([8, 16])  # the command line wins
    assert fixed == ["train.epochs=3"]


def test_unsupported_sweep_fails_naming_the_key():
    with pytest.raises(st.SweepConfigError, match="model.filters"):
        st.parse_search_space({"model.filters": "shuffle(choice(8, 16))"}, [])


def test_best_config_puts_groups_in_defaults_and_skips_the_sweep(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", conf)
    overrides = ["sweep=cnn", "train.epochs=3", "optimizer=sgd", "optimizer.learning_rate=0.005"]
    text = report.best_config_text(overrides, lambda key: (conf / key).is_dir(), "best of a test")
    assert text.startswith("# @package _global_\n# best of a test\n")
    body = yaml.safe_load(text)
    assert body["defaults"] == [{"override /optimizer": "sgd"}, "_self_"]
    assert body["optimizer"] == {"learning_rate": 0.005} and body["train"] == {"epochs": 3}
    (conf / "experiment").mkdir()
    (conf / "experiment" / "best.yaml").write_text(text)
    composed = yaml.safe_load(compose_params(conf, ["+experiment=best"]))
    assert composed["optimizer"]["name"] == "sgd"
    assert composed["optimizer"]["momentum"] == pytest.approx(0.9)  # from optimizer/sgd.yaml
    assert composed["optimizer"]["learning_rate"] == pytest.approx(0.005)
    assert composed["train"]["epochs"] == 3


def test_sampler_is_seeded_per_trial_number(tmp_path):
    """Same seed, same trial number, same proposal, in any process; different numbers differ."""

    def proposals(n: int) -> list[float]:
        study = optuna.create_study(sampler=st.make_sampler(st.SamplerSettings(seed=7)))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(trial.suggest_float("x", 0.0, 1.0))
            study.tell(trial, 0.0)
        return out

    first, second = proposals(3), proposals(3)
    assert first == second
    assert len(set(first)) == 3


def test_surplus_counts_done_and_running_trials_ahead():
    study = optuna.create_study()
    for value in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(value=value))
    running = study.ask()
    late = study.ask()
    assert st.is_surplus(study, late.number, 3)
    assert not st.is_surplus(study, running.number, 3)
    assert st.count_trials(study) == (2, 2)


def test_settings_check_names_the_bad_key():
    with pytest.raises(st.SweepConfigError, match="objective"):
        st.StudySettings(objective="test_accuracy").check()
    with pytest.raises(st.SweepConfigError, match="pruner"):
        st.StudySettings(pruner=st.PrunerSettings(name="sometimes")).check()


def test_storage_defaults_beside_the_mlflow_store(mlflow_store):
    url = st.default_storage_url()
    assert url == mlflow_store.replace("mlflow.db", "optuna.db")
    assert (
        st.redact("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    )
