from dataclasses import replace

import keras
import numpy as np
import pytest

from imgclf.config import ModelConfig
from imgclf.model import (
    AUGMENTATION_LAYERS,
    OPTIMIZERS,
    build_model,
    build_optimizer,
    compile_model,
    inference_model,
)
from tests.conftest import tiny_config

pytestmark = pytest.mark.numerics  # rerun under every oneDNN ISA cap (tests/isa.py)

SHAPE = (24, 36, 3)
CFG = tiny_config()  # conf/ + the tests' override; each test sets the values it checks
AUGMENT = CFG.augment


def model_cfg(**values) -> ModelConfig:
    return replace(CFG.model, **values)


@pytest.mark.parametrize(
    "values",
    [
        dict(blocks=2, filters=4, dense_units=8, block="plain"),
        dict(blocks=3, filters=4, dense_units=8, block="plain", batch_norm=False),
        dict(blocks=3, filters=4, dense_units=8, block="residual"),
        dict(blocks=2, filters=4, dense_units=8, block="residual", batch_norm=False),
    ],
)
def test_outputs_are_probabilities_over_classes(values):
    model = build_model(model_cfg(**values), SHAPE, 3, augment=AUGMENT, seed=1)
    x = np.random.default_rng(0).integers(0, 255, (5, *SHAPE), dtype=np.uint8)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[-1].activation is keras.activations.softmax


def test_loss_expects_probabilities_not_logits():
    model = compile_model(
        build_model(model_cfg(blocks=1, filters=4, dense_units=4), SHAPE, 3),
        CFG.optimizer,
        CFG.train,
        steps_per_epoch=2,
    )
    assert model.loss.get_config()["from_logits"] is False


def test_model_takes_raw_uint8_and_rescales_inside():
    model = build_model(model_cfg(blocks=1, filters=2, dense_units=4), SHAPE, 3)
    assert model.inputs[0].dtype == "uint8"
    assert model.layers[0].name == "rescale"


def test_inference_model_drops_augmentation_and_predicts_the_same():
    model = build_model(model_cfg(blocks=2, filters=4, dense_units=8), SHAPE, 3, augment=AUGMENT)
    assert any(isinstance(layer, AUGMENTATION_LAYERS) for layer in model.layers)
    slim = inference_model(model)
    assert not any(isinstance(layer, AUGMENTATION_LAYERS) for layer in slim.layers)
    x = np.random.default_rng(1).integers(0, 255, (4, *SHAPE), dtype=np.uint8)
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_perspective_is_an_augmentation_layer_only_when_asked():
    plain = build_model(model_cfg(blocks=1), SHAPE, 3, augment=AUGMENT)
    assert not any(isinstance(layer, keras.layers.RandomPerspective) for layer in plain.layers)
    aug = replace(AUGMENT, perspective=0.2, perspective_scale=0.5)
    model = build_model(model_cfg(blocks=1), SHAPE, 3, augment=aug)
    (layer,) = [x for x in model.layers if isinstance(x, keras.layers.RandomPerspective)]
    assert layer.scale == 0.5
    assert not any(isinstance(x, AUGMENTATION_LAYERS) for x in inference_model(model).layers)


def test_no_horizontal_flip_of_text():
    model = build_model(model_cfg(blocks=1), SHAPE, 3, augment=AUGMENT)
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in model.layers)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_lookup(name):
    opt = build_optimizer(
        replace(CFG.optimizer, name=name, learning_rate=0.05, momentum=0.5, schedule="constant")
    )
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.05)
    assert type(opt).__name__.lower() == name


def test_cosine_schedule_decays_to_zero_over_the_training_steps():
    opt = build_optimizer(
        replace(CFG.optimizer, learning_rate=0.01, schedule="cosine"), total_steps=100
    )
    schedule = opt._learning_rate  # the schedule object; opt.learning_rate is its current value
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.005, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="number of training steps"):
        build_optimizer(replace(CFG.optimizer, schedule="cosine"))


def test_residual_blocks_halve_the_resolution_and_add_a_shortcut():
    cfg = model_cfg(blocks=3, filters=4, filter_growth=2.0, dense_units=8, block="residual")
    model = build_model(cfg, SHAPE, 3)
    blocks = [layer for layer in model.layers if layer.name.startswith("block")]
    assert [b.output.shape[1:] for b in blocks] == [(12, 18, 4), (6, 9, 8), (3, 5, 16)]
    assert all(any(isinstance(x, keras.layers.Add) for x in b.layers) for b in blocks)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)


@pytest.mark.parametrize("block", ["plain", "residual"])
def test_filter_growth_sets_the_width_of_each_block(block):
    cfg = model_cfg(blocks=3, filters=4, filter_growth=1.5, dense_units=8, block=block)
    model = build_model(cfg, SHAPE, 3)
    widths = [
        layer.output.shape[-1] for layer in model.layers if layer.name.startswith(("conv", "block"))
    ]
    assert widths == [4, 6, 9]


@pytest.mark.integration  # real MLflow store, converters or processes
def test_residual_model_survives_h5_onnx_and_tflite(tmp_path):
    """Every export format handles the nested blocks and predicts what Keras predicts."""
    from imgclf.formats import export_and_check

    cfg = model_cfg(blocks=2, filters=4, dense_units=8, block="residual")
    model = inference_model(build_model(cfg, SHAPE, 3, augment=AUGMENT, seed=3))
    x = np.random.default_rng(2).integers(0, 255, (6, *SHAPE), dtype=np.uint8)
    results = export_and_check(model, ["h5", "keras", "tflite", "onnx"], tmp_path, x, 1e-4)
    assert [(r.format, r.valid, r.reason) for r in results] == [
        (f, True, "") for f in ("h5", "keras", "tflite", "onnx")
    ]
