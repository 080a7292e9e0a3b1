"""The residual shortcut built as subsample + stride-1 1x1 conv: the strided 1x1 conv's function.

TensorFlow 2.21's oneDNN backward kernel for a strided 1x1 convolution corrupts the heap on
AVX-512/AMX Xeons (3 input channels, 8 or 16 filters); the shortcut avoids that kernel. These
tests hold it to the old layer bit for bit and to every export format.
"""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from imgclf.formats import export_and_check
from imgclf.model import build_model, inference_model, subsample_shortcut
from tests.conftest import tiny_config


def _pair(shape: tuple[int, int, int], filters: int, use_bias: bool) -> tuple[keras.Model, ...]:
    """The old layer and the new shortcut over the same input, the old weights copied."""
    old_in = keras.Input(shape)
    old = keras.Model(
        old_in,
        layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=use_bias, name="b_shortcut")(
            old_in
        ),
    )
    new_in = keras.Input(shape)
    new = keras.Model(new_in, subsample_shortcut(new_in, filters, use_bias=use_bias, name="b"))
    rng = np.random.default_rng(3)
    old.set_weights([rng.normal(size=w.shape).astype("float32") for w in old.get_weights()])
    new.get_layer("b_shortcut").set_weights(old.get_layer("b_shortcut").get_weights())
    return old, new


@pytest.mark.parametrize(
    ("shape", "filters", "use_bias"),
    [
        ((32, 48, 3), 8, False),
        ((33, 47, 3), 16, True),
        ((7, 5, 16), 24, False),
        ((1, 1, 3), 8, True),
    ],
)
def test_shortcut_equals_the_strided_1x1_conv_in_value_and_gradient(shape, filters, use_bias):
    # Odd sizes too: "same" padding of a 1x1 kernel at stride 2 pads nothing, for even or odd
    # sides alike, so output pixel i is input pixel 2i in both layers.
    old, new = _pair(shape, filters, use_bias)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, *shape)).astype("float32"))
    grads = []
    for model in (old, new):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(y * y * tf.range(1.0, filters + 1.0))
        grads.append((y, *tape.gradient(loss, [x, *model.trainable_weights])))
    for a, b in zip(*grads, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_strided_1x1_convolution_is_left_in_a_residual_model():
    cfg = replace(tiny_config().model, block="residual", blocks=3, filters=8)
    model = build_model(cfg, (32, 48, 3), 3)
    convs = [
        layer
        for block in model.layers
        if isinstance(block, keras.Model)
        for layer in block.layers
        if isinstance(layer, layers.Conv2D)
    ]
    assert convs and not [c for c in convs if c.kernel_size == (1, 1) and c.strides != (1, 1)]


def test_residual_model_loads_back_in_safe_mode(tmp_path):
    # The Keras formats, loaded with safe_mode on as predictors.py does. The session pipeline
    # (model=resnet) exports the same blocks to every other format with its parity check.
    cfg = replace(tiny_config().model, block="residual", blocks=2, filters=8)
    model = inference_model(build_model(cfg, (32, 48, 3), 3, seed=1))
    images = np.random.default_rng(2).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    results = export_and_check(model, ["h5", "keras"], tmp_path, images, max_abs_diff=1e-6)
    assert {r.format: r.reason for r in results if not r.valid} == {}
    assert [r.max_abs_diff for r in results] == [0.0, 0.0]
