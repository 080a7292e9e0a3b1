"""The residual shortcut built as subsample + stride-1 1x1 conv: the strided 1x1 conv's function.

TensorFlow 2.21's oneDNN backward kernel for a strided 1x1 convolution corrupts the heap on
AVX-512 hosts, Intel and AMD alike (3 input channels, 8 or 16 filters); the shortcut avoids that
kernel. These tests hold it to the old layer's function, value and gradient, within float32
rounding (the two graphs run different kernels, which sum in another order on some CPUs), and
to every export format. tests/unit/test_upstream_canary.py says when the workaround can go.
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

pytestmark = pytest.mark.numerics  # rerun under every oneDNN ISA cap (tests/isa.py)


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


# float32 carries 24 bits (unit roundoff u = 2**-24, 6e-8). Two kernels that sum the same n
# products in another order differ by at most about n * u of the summed magnitudes, and by far
# less in practice. The longest sum here is a weight gradient over 4 images x 17 x 24 pixels
# (1,632 products): n * u = 1e-4. Seen against the float64 reference: at most 7e-7 of the largest
# magnitude, under every oneDNN ISA cap of a Zen 4 (SSE4.1 to AVX-512). RTOL = 1e-5 sits between
# the two; a kernel that reads the wrong pixel or weight is off by O(1) and still fails.
RTOL = 1e-5


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = float(np.max(np.abs(expected))) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, filters: int):
    """The strided 1x1 conv's function in float64: every 2nd pixel, then a 1x1 conv; and the
    exact gradients of the tests' loss ``sum(y * y * [1..filters])`` (x, kernel[, bias])."""
    x64, w = x.astype(np.float64), kernel.astype(np.float64)[0, 0]  # (channels, filters)
    sub = x64[:, ::2, ::2, :]
    y = sub @ w + (0.0 if bias is None else bias.astype(np.float64))
    dy = 2.0 * y * np.arange(1.0, filters + 1.0)
    dx = np.zeros_like(x64)
    dx[:, ::2, ::2, :] = dy @ w.T
    dw = np.einsum("nhwc,nhwf->cf", sub, dy)[None, None]
    grads = [dx, dw] if bias is None else [dx, dw, dy.sum(axis=(0, 1, 2))]
    return [y, *grads]


def value_and_gradients(model: keras.Model, x: np.ndarray, filters: int) -> list[np.ndarray]:
    """``model(x)`` and the gradients of the tests' loss, as :func:`reference` orders them."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        loss = tf.reduce_sum(y * y * tf.range(1.0, filters + 1.0))
    return [t.numpy() for t in (y, *tape.gradient(loss, [xt, *model.trainable_weights]))]


CASES = [
    ((32, 48, 3), 8, False),
    ((33, 47, 3), 16, True),
    ((7, 5, 16), 24, False),
    ((1, 1, 3), 8, True),
]


def case(shape: tuple[int, int, int], filters: int, use_bias: bool):
    """The old layer, the shortcut, the input and the reference for one parametrised case."""
    old, new = _pair(shape, filters, use_bias)
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    weights = old.get_layer("b_shortcut").get_weights()
    return old, new, x, reference(x, weights[0], weights[1] if use_bias else None, filters)


@pytest.mark.parametrize(("shape", "filters", "use_bias"), CASES)
def test_shortcut_computes_the_strided_1x1_conv_and_its_exact_gradient(shape, filters, use_bias):
    # Odd sizes too: "same" padding of a 1x1 kernel at stride 2 pads nothing, for even or odd
    # sides alike, so output pixel i is input pixel 2i in both layers.
    old, new, x, want = case(shape, filters, use_bias)
    got = value_and_gradients(new, x, filters)
    assert [g.shape for g in got] == [w.shape for w in want]
    for name, g, w in zip(["value", "d/dx", "d/dkernel", "d/dbias"], got, want, strict=False):
        _close(g, w, name)
    # A pixel the layer never reads gets exactly zero gradient (no rounding involved).
    assert not got[1][:, 1::2].any() and not got[1][:, :, 1::2].any()
    # The old layer computes the same function. Its gradients are not held here: oneDNN's
    # backward kernel for it crashes, or returns a wrong kernel gradient under an AVX2 cap, on
    # AVX-512 hosts (tests/unit/test_upstream_canary.py), which is why the shortcut exists.
    _close(old(x).numpy(), want[0], "the old layer's value")


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
    # Exact by construction: a reloaded Keras file is the same graph and weights, run by the same
    # kernels in the same process, so not even the last bit may move.
    assert [r.max_abs_diff for r in results] == [0.0, 0.0]
