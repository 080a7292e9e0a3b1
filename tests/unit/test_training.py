"""The training loop's pure parts: early stopping's bookkeeping, the resume state, the optimizer."""

from __future__ import annotations

import dataclasses
import math

import pytest

from imgclf.compose import compose_config
from imgclf.model import build_optimizer
from imgclf.resume import ResumeState
from imgclf.training import TrainingState, is_better
from tests.conftest import REPO_ROOT


def _run(state: TrainingState, monitored: list[float], monitor: str | None, patience: int) -> None:
    for epoch, value in enumerate(monitored):
        if state.finished(len(monitored)):
            break
        values = {"loss": 1.0 / (epoch + 1), "val_loss": value, "val_accuracy": value}
        state.record(epoch, values, monitor=monitor, patience=patience)


def test_patience_counts_epochs_since_the_best_and_keeps_the_best():
    state = TrainingState()
    _run(state, [0.9, 0.5, 0.6, 0.5, 0.7, 0.4], monitor="val_loss", patience=3)
    # 0.5 at epoch 2 stays the best: a tie is no improvement, as in Keras's EarlyStopping.
    assert (state.best_epoch, state.epochs_done, state.stopped_early) == (2, 5, True)
    assert state.best_value == 0.5 and state.wait == 3
    assert state.history["val_loss"] == [0.9, 0.5, 0.6, 0.5, 0.7]


def test_accuracy_improves_upwards():
    state = TrainingState()
    _run(state, [0.5, 0.9, 0.8, 0.9, 0.95], monitor="val_accuracy", patience=2)
    assert (state.best_epoch, state.epochs_done, state.stopped_early) == (2, 4, True)
    assert is_better("val_accuracy", 0.6, 0.5) and not is_better("val_loss", 0.6, 0.5)


def test_patience_never_stops_after_the_first_epoch():
    state = TrainingState()
    _run(state, [0.5, 0.6, 0.7], monitor="val_loss", patience=0)
    assert (state.best_epoch, state.epochs_done, state.stopped_early) == (1, 2, True)


def test_without_validation_every_epoch_runs_and_the_last_is_kept():
    state = TrainingState()
    _run(state, [0.5, 0.9, 0.9, 0.9], monitor=None, patience=1)
    assert (state.best_epoch, state.epochs_done, state.stopped_early) == (4, 4, False)
    assert state.improved


def test_a_nan_or_infinite_value_diverges_and_records_nothing():
    for bad in (math.nan, math.inf):
        state = TrainingState()
        state.record(0, {"loss": 1.0}, monitor=None, patience=1)
        state.record(1, {"loss": bad}, monitor=None, patience=1)
        assert state.diverged and state.epochs_done == 1 and state.history == {"loss": [1.0]}
    empty = TrainingState()
    empty.record(0, {}, monitor=None, patience=1)
    assert empty.diverged


def test_improved_marks_the_epoch_to_checkpoint_as_best():
    state = TrainingState()
    seen = []
    for epoch, value in enumerate([0.5, 0.6, 0.4]):
        state.record(epoch, {"val_loss": value}, monitor="val_loss", patience=5)
        seen.append(state.improved)
    assert seen == [True, False, True] and not TrainingState().improved


def test_resume_state_round_trips_through_its_json_layout():
    state = ResumeState(key="k", run_id="r")
    state.record(0, {"loss": 0.5, "val_loss": 0.4}, monitor="val_loss", patience=2)
    raw = dataclasses.asdict(state)
    assert raw["key"] == "k" and raw["history"] == {"loss": [0.5], "val_loss": [0.4]}
    back = ResumeState(**raw)
    assert back == state and back.epoch_values(0) == {"loss": 0.5, "val_loss": 0.4}


def test_adamw_weight_decay_comes_from_conf_and_a_zero_stays_zero():
    cfg = compose_config(REPO_ROOT / "conf", ["optimizer=adamw"]).optimizer
    assert cfg.weight_decay == pytest.approx(0.004)  # conf/optimizer/adamw.yaml
    assert build_optimizer(cfg).weight_decay == pytest.approx(0.004)
    zero = dataclasses.replace(cfg, weight_decay=0.0)
    assert build_optimizer(zero).weight_decay == 0.0
