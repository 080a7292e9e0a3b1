"""Model construction: ``build_model(cfg, input_shape, n_classes) -> keras.Model``, pure.

The model takes raw uint8 RGB pixels: rescaling and augmentation are layers inside it, so an
exported file predicts right with no separate preprocessing. Augmentation layers are active
only in training.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from imgclf.config import AugmentConfig, ModelConfig, OptimizerConfig, TrainConfig


def build_augmentation(cfg: AugmentConfig, seed: int) -> list[layers.Layer]:
    """Augmentations suited to photographed documents: no flips (text must stay readable)."""
    if not cfg.enabled:
        return []
    aug: list[layers.Layer] = []
    if cfg.rotation > 0:
        aug.append(layers.RandomRotation(cfg.rotation, fill_mode="nearest", seed=seed))
    if cfg.zoom > 0:
        aug.append(layers.RandomZoom(cfg.zoom, fill_mode="nearest", seed=seed + 1))
    if cfg.translation > 0:
        aug.append(
            layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode="nearest", seed=seed + 2
            )
        )
    if cfg.perspective > 0:
        # factor bounds the share of images distorted; scale how far their corners move
        aug.append(
            layers.RandomPerspective(cfg.perspective, scale=cfg.perspective_scale, seed=seed + 5)
        )
    if cfg.brightness > 0:
        aug.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 1), seed=seed + 3))
    if cfg.contrast > 0:
        aug.append(layers.RandomContrast(cfg.contrast, seed=seed + 4))
    return aug


def subsample_shortcut(
    x: keras.KerasTensor, filters: int, *, use_bias: bool, name: str
) -> keras.KerasTensor:
    """A residual block's projection shortcut: ``x[:, ::2, ::2, :]``, then a 1×1 conv, stride 1.

    The same function as ``Conv2D(filters, 1, strides=2, padding="same")`` (a 1×1 kernel at
    stride 2 never pads: output pixel i reads input pixel 2i), with the same weights under the
    same name. Built this way because TensorFlow 2.21's oneDNN backward kernel for a *strided*
    1×1 convolution over a 3-channel input (8 or 16 filters) is broken on AVX-512 hosts, Intel
    and AMD Zen 4 alike: a segfault or ``corrupted size vs. prev_size`` in the first training
    step, and under an ``ONEDNN_MAX_CPU_ISA=AVX2`` cap a silently wrong kernel gradient (49 % off
    on a Zen 4); the forward pass is fine. Upstream, TensorFlow issue 117700 (oneDNN corrupts
    memory in a matmul over a rank-4 input, a shape this convolution lowers to) looks like the
    same bug; ``tests/unit/test_upstream_canary.py`` says when a TensorFlow release fixes it and
    this workaround can go. The subsample is a built-in pooling layer with a 1×1 window (no
    weights, no custom class), so saved models load in safe mode and export to every format.
    """
    sub = layers.AveragePooling2D(pool_size=1, strides=2, name=f"{name}_shortcut_subsample")(x)
    return layers.Conv2D(filters, 1, use_bias=use_bias, name=f"{name}_shortcut")(sub)


def residual_block(
    shape: tuple[int, int, int], filters: int, cfg: ModelConfig, *, name: str
) -> keras.Model:
    """A ResNet basic block that halves the resolution (in place of conv → max-pool).

    Main path: conv 3×3 stride 2 → BN → ReLU → conv 3×3 → BN; shortcut: a 1×1 conv of the
    input subsampled by 2 (:func:`subsample_shortcut`) → BN; sum, ReLU. Built as a small
    functional model nested in the Sequential stack, so the stack stays a plain list of layers
    (``inference_model`` filters it) and saves to ``.h5`` with no custom layer classes. Without
    batch norm the convolutions get biases instead.
    """
    bn = cfg.batch_norm

    def norm(x: keras.KerasTensor, part: str) -> keras.KerasTensor:
        return layers.BatchNormalization(momentum=0.9, name=f"{name}_{part}_bn")(x) if bn else x

    def conv(x: keras.KerasTensor, size: int, stride: int, part: str) -> keras.KerasTensor:
        return layers.Conv2D(
            filters, size, strides=stride, padding="same", use_bias=not bn, name=f"{name}_{part}"
        )(x)

    inp = keras.Input(shape=shape, name=f"{name}_in")
    y = layers.ReLU(name=f"{name}_relu1")(norm(conv(inp, cfg.kernel_size, 2, "conv1"), "conv1"))
    y = norm(conv(y, cfg.kernel_size, 1, "conv2"), "conv2")
    shortcut = norm(subsample_shortcut(inp, filters, use_bias=not bn, name=name), "shortcut")
    out = layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([shortcut, y]))
    return keras.Model(inp, out, name=name)


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> keras.Model:
    """The Sequential CNN: conv → max-pool blocks, dropout, dense, softmax.

    Filters grow by ``model.filter_growth`` per block (2: doubling); ``model.block: residual``
    uses :func:`residual_block` (stride-2 ResNet basic blocks) instead of conv → max-pool.
    Output is a softmax, so the loss uses from_logits=False.
    """
    stack: list[layers.Layer] = [
        keras.Input(shape=input_shape, dtype="uint8", name="image"),
        layers.Rescaling(1.0 / 255.0, name="rescale"),
    ]
    if augment is not None:
        stack += build_augmentation(augment, seed)
    for i in range(cfg.blocks):
        filters = round(cfg.filters * cfg.filter_growth**i)
        if cfg.block == "residual":
            shape = tuple(stack[-1].output.shape[1:]) if i else input_shape
            stack.append(residual_block(shape, filters, cfg, name=f"block{i + 1}"))
            continue
        stack.append(
            layers.Conv2D(
                filters,
                cfg.kernel_size,
                padding="same",
                use_bias=not cfg.batch_norm,
                activation=None if cfg.batch_norm else "relu",
                name=f"conv{i + 1}",
            )
        )
        if cfg.batch_norm:
            stack += [layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}"), layers.ReLU()]
        stack.append(layers.MaxPooling2D(2, name=f"pool{i + 1}"))
    stack.append(layers.GlobalAveragePooling2D() if cfg.global_pool else layers.Flatten())
    stack += [
        layers.Dropout(cfg.dropout, seed=seed),
        layers.Dense(cfg.dense_units, activation="relu", name="dense"),
        layers.Dropout(cfg.dropout, seed=seed + 1),
        layers.Dense(n_classes, activation="softmax", name="probs"),
    ]
    return keras.Sequential(stack, name=f"imgclf_{cfg.name}")


AUGMENTATION_LAYERS = (
    layers.RandomRotation,
    layers.RandomZoom,
    layers.RandomTranslation,
    layers.RandomBrightness,
    layers.RandomContrast,
    layers.RandomPerspective,
)


def inference_model(model: keras.Model) -> keras.Model:
    """The same model without its augmentation layers (identity at inference anyway).

    Exported files hold only the inference graph: smaller, deterministic, and savable as
    ``.h5`` (Keras 3 cannot serialise RandomBrightness to HDF5).
    """
    kept = [layer for layer in model.layers if not isinstance(layer, AUGMENTATION_LAYERS)]
    return keras.Sequential(
        [
            keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="image"),
            *kept,
        ],
        name=model.name,
    )


# The values come from conf/optimizer/*.yaml only (adamw.yaml holds the 0.004 default): a
# configured ``weight_decay: 0`` must stay 0, so no fallback here.
OPTIMIZERS: dict[str, Any] = {
    "sgd": lambda c, lr: keras.optimizers.SGD(learning_rate=lr, momentum=c.momentum),
    "adam": lambda c, lr: keras.optimizers.Adam(learning_rate=lr),
    "adamw": lambda c, lr: keras.optimizers.AdamW(learning_rate=lr, weight_decay=c.weight_decay),
}


def learning_rate(cfg: OptimizerConfig, total_steps: int | None) -> Any:
    """The configured rate, or a cosine decay to zero over ``total_steps`` (``schedule: cosine``).

    The schedule is a function of the optimizer's step counter, which is saved with the
    optimizer state, so a resumed run continues the same curve.
    """
    if cfg.schedule == "constant":
        return cfg.learning_rate
    if not total_steps:
        raise ValueError("schedule 'cosine' needs the number of training steps")
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps)


def build_optimizer(cfg: OptimizerConfig, total_steps: int | None = None) -> Any:
    """Look up the optimizer by name (sgd | adam | adamw) with its learning-rate schedule."""
    return OPTIMIZERS[cfg.name](cfg, learning_rate(cfg, total_steps))


def compile_model(
    model: keras.Model,
    opt: OptimizerConfig,
    train: TrainConfig,
    steps_per_epoch: int | None = None,
) -> keras.Model:
    """Compile with keyword arguments (positional metrics are loss_weights in Keras 3)."""
    total = steps_per_epoch * train.epochs if steps_per_epoch else None
    model.compile(
        optimizer=build_optimizer(opt, total),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=False, label_smoothing=train.label_smoothing
        ),
        metrics=["accuracy"],
    )
    return model
