"""A checkpoint resumes only the network it was written for, and a failed load changes nothing."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from imgclf import resume


def _net(units: int, *, extra_activation: bool = False) -> keras.Model:
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4)(inputs)
    if extra_activation:  # no weights: every shape stays as it was
        x = keras.layers.Activation("relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(units)(x))
    model.compile(optimizer="adam", loss="mse")
    return model


def test_the_signature_is_the_structure_not_the_names() -> None:
    assert resume.model_signature(_net(3)) == resume.model_signature(_net(3))  # other names
    assert resume.model_signature(_net(3)) != resume.model_signature(_net(5))
    assert resume.model_signature(_net(3)) != resume.model_signature(_net(3, extra_activation=True))


def test_the_resume_key_follows_the_network(tmp_path: Path) -> None:
    data = tmp_path / "manifest.json"
    data.write_bytes(b"arrays")
    key = resume.resume_key({"epochs": 3}, [data], _net(3))
    assert key == resume.resume_key({"epochs": 3}, [data], _net(3))
    assert key != resume.resume_key({"epochs": 3}, [data], _net(3, extra_activation=True))


def _values(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in [*model.weights, *model.optimizer.variables]]


def test_a_load_that_fails_part_way_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    old = _net(3)
    old.optimizer.build(old.trainable_variables)
    writer = resume.Checkpointer(tmp_path, "key")
    writer.commit(old, resume.ResumeState(key="key", epochs_done=1), improved=True)

    new = _net(5)  # the first layer fits the file, the second does not
    new.optimizer.build(new.trainable_variables)
    fresh = _values(new)
    reader = resume.Checkpointer(tmp_path, "key")
    state, _ = reader.load()
    assert state is not None
    with pytest.raises((ValueError, UserWarning)):  # Keras raises one or warns of the other
        reader.restore_weights(new)
    for before, after in zip(fresh, _values(new), strict=True):
        np.testing.assert_array_equal(before, after)
