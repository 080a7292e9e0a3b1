"""The Optuna side of sweeps without training: grammar, storage, retries, the Pareto rule."""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from imgclf.compose import compose_params
from imgclf.sweeps import report
from imgclf.sweeps import space as sp
from imgclf.sweeps import study as st
from imgclf.sweeps.settings import PrunerSettings, SamplerSettings, StudySettings, SweepConfigError
from imgclf.sweeps.trial import ENV_TRIAL, TrialLink
from imgclf.sweeps.workers import on_stale_trial
from tests.conftest import REPO_ROOT


def test_search_space_grammar_maps_to_optuna_distributions():
    params = {
        "optimizer": "choice(adam, sgd)",
        "optimizer.learning_rate": "tag(log, interval(0.0001, 0.01))",
        "model.dropout": "interval(0.1, 0.5)",
        "model.blocks": "range(1, 4)",
        "model.filters": "choice(16, 32)",
    }
    space, fixed = sp.parse_search_space(params, ["model.filters=choice(8,16)", "train.epochs=3"])
    assert space["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert space["optimizer.learning_rate"] == FloatDistribution(0.0001, 0.01, log=True)
    assert space["model.dropout"] == FloatDistribution(0.1, 0.5)
    assert space["model.blocks"] == IntDistribution(1, 3)  # range's stop is exclusive
    assert space["model.filters"] == CategoricalDistribution([8, 16])  # the command line wins
    assert fixed == ["train.epochs=3"]


def test_unsupported_sweep_fails_naming_the_key():
    with pytest.raises(SweepConfigError, match="model.filters"):
        sp.parse_search_space({"model.filters": "shuffle(choice(8, 16))"}, [])


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
        study = optuna.create_study(sampler=st.make_sampler(SamplerSettings(seed=7)))
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
    assert st.count_trials(study) == (2, 2, 0)


def test_settings_check_names_the_bad_key():
    with pytest.raises(SweepConfigError, match="objective"):
        StudySettings(objective=["a", "b"], direction="maximize").check()
    with pytest.raises(SweepConfigError, match="direction"):
        StudySettings(direction=["maximize", "sideways"]).check()
    with pytest.raises(SweepConfigError, match="pruner"):
        StudySettings(pruner=PrunerSettings(name="sometimes")).check()
    with pytest.raises(SweepConfigError, match="sampler"):
        StudySettings(sampler=SamplerSettings(name="cmaes")).check()


def test_storage_defaults_beside_the_mlflow_store(mlflow_store):
    url = st.storage_url(None)
    assert url == mlflow_store.replace("mlflow.db", "optuna.db")
    assert (
        st.redact("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    )


def test_a_shared_tracking_server_refuses_a_study_local_to_this_host(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv(st.ENV_STORAGE, raising=False)
    with pytest.raises(SweepConfigError, match="hydra.sweeper.storage") as err:
        st.storage_url(None)
    assert "\n" not in str(err.value)
    with caplog.at_level("WARNING"):
        assert st.storage_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "local to this host" in caplog.text
    monkeypatch.setenv(st.ENV_STORAGE, "postgresql+psycopg://u:pw@h/db")
    assert st.storage_url(None) == "postgresql+psycopg://u:pw@h/db"


def test_pareto_rule_takes_the_smallest_within_the_tolerance_of_the_best_first_objective():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in [(0.90, 100.0), (0.95, 900.0), (0.948, 300.0), (0.80, 10.0), (0.94, 250.0)]:
        study.add_trial(optuna.trial.create_trial(values=[acc, size]))
    assert report.chosen_trial(study).number == 1  # tolerance 0: the best accuracy
    assert report.chosen_trial(study, 0.005).number == 2  # 0.948 >= 0.95 - 0.005, smaller
    assert report.chosen_trial(study, 0.011).number == 4
    single = optuna.create_study(direction="minimize")
    single.add_trial(optuna.trial.create_trial(value=3.0))
    single.add_trial(optuna.trial.create_trial(value=1.0))
    assert report.chosen_trial(single).number == 1


@pytest.mark.parametrize(
    ("value", "objective", "direction", "expected"),
    [
        (0.5, None, "minimize", [0.5]),
        (3, "loss", "minimize", [3.0]),  # a number is the value, whatever the key
        ({"loss": 1.5, "size": 2}, "loss", "minimize", [1.5]),
        ({"loss": 1.5, "size": 2}, ["loss", "size"], ["minimize", "minimize"], [1.5, 2.0]),
        ([1, 2], None, ["maximize", "minimize"], [1.0, 2.0]),
    ],
)
def test_a_job_may_return_a_number_numbers_or_a_dict_holding_the_objective(
    value, objective, direction, expected
):
    settings = StudySettings(objective=objective, direction=direction)
    assert settings.values_of(value) == expected


def test_a_return_value_without_the_objective_names_what_it_holds():
    with pytest.raises(SweepConfigError, match=r"\['acc', 'loss'\]: set hydra.sweeper.objective"):
        StudySettings().values_of({"loss": 1, "acc": 2})
    with pytest.raises(SweepConfigError, match=r"\['f1'\] not in .*\['acc', 'loss'\]"):
        StudySettings(objective="f1").values_of({"loss": 1, "acc": 2})
    with pytest.raises(SweepConfigError, match="2 objective value"):
        StudySettings().values_of([1, 2])
    with pytest.raises(SweepConfigError, match="returned str"):
        StudySettings().values_of("high")


def test_grid_takes_choices_and_ranges_but_no_interval():
    space, _ = sp.parse_search_space({"a": "choice(x, y)", "b": "range(1, 7, 2)"}, [])
    assert sp.grid_values(space) == {"a": ["x", "y"], "b": [1, 3, 5]}
    space, _ = sp.parse_search_space({"lr": "interval(0.1, 1.0)"}, [])
    with pytest.raises(SweepConfigError, match="lr: the grid sampler"):
        sp.grid_values(space)


def test_suggested_overrides_parse_back_to_the_recorded_values():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    study = optuna.create_study()
    space, _ = sp.parse_search_space(
        {"lr": "tag(log, interval(1e-5, 1.0))", "name": "choice('a b', \"it's\", 'x=1', true)"}, []
    )
    for _ in range(8):
        trial = study.ask()
        overrides = sp.suggest(trial, space)
        parsed = {
            o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)
        }
        assert parsed == trial.params
        study.tell(trial, 0.0)


def test_a_stale_trial_is_retried_with_exactly_its_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = st.make_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    space, _ = sp.parse_search_space({"lr": "interval(0.001, 0.1)", "opt": "choice(a, b)"}, [])
    dead = study.ask()
    sp.suggest(dead, space)
    dead.set_user_attr("mlflow_run_id", "")  # no run to end
    storage.record_heartbeat(dead._trial_id)
    storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)  # as fail_stale_trials does
    on_stale_trial(1, "x")(study, study.trials[0])
    retry = study.ask()
    assert sp.suggest(retry, space) == [f"lr={dead.params['lr']!r}", f"opt={dead.params['opt']}"]
    assert retry.params == dead.params
    frozen = study.trials[1]
    assert frozen.system_attrs["failed_trial"] == 0 and frozen.user_attrs == {}


def test_a_job_reaches_its_trial_through_the_storage_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0}))
    asked = study.ask()
    link = TrialLink(url, "s", asked.number, "acc", {"name": "median", "n_startup_trials": 1,
                                                      "n_warmup_steps": 0})  # fmt: skip
    env = {ENV_TRIAL: link.to_env()}
    rebuilt = TrialLink.from_env(env).open()  # as a job in another process would
    rebuilt.report(0.1, 0)
    assert rebuilt.should_prune()
    TrialLink.from_env(env).set_user_attr("mlflow_run_id", "abc")
    frozen = optuna.load_study(study_name="s", storage=url).trials[1]
    assert frozen.intermediate_values == {0: 0.1} and frozen.user_attrs["mlflow_run_id"] == "abc"
    assert TrialLink.from_env({}) is None
