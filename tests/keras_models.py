"""Keras classifiers converted by tf2onnx, as users bring them, with TensorFlow's own float64 gradient.

Run as a script (TensorFlow stays out of the test process: its import takes seconds and
its threads would share the process with torch and ONNX Runtime):

    python tests/keras_models.py OUT_DIR [NAME ...]

writes, for each network, OUT_DIR/NAME.onnx exactly as `tf2onnx.convert.from_keras`
delivers it (NHWC input of any size, its default opset, the `ai.onnx.ml` import it
always declares) and OUT_DIR/NAME.npz: a non-square picture (`image`, NCHW RGB in
[0, 1]) and TensorFlow's gradient of the dream loss mean(mid^2) + mean(deep^2) at it,
in float64 (`grad64`, the oracle) and float32 (`grad32`, for float32's own noise).

Small widths, the layers of Keras' own applications: 'same' max and average pooling,
separable and depthwise convolutions, batch norm with moving statistics away from the
identity, ReLU6, residual sums, MobileNetV3's hard swish and squeeze-excitation
(which tf2onnx leaves in NHWC), InceptionV3's blocks (valid stride-2 reductions beside
a valid max pool, a 'same' 3x3 average pool branch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

PICTURE = (72, 88)  # height, width of the gradient check: not square, no power of two
APPLICATION_PICTURE = (120, 168)  # keras.applications' InceptionV3 takes 75 px at least
SEED = 0


def _conv_bn(layers, x, filters: int, kernel, strides=1, padding="same", dtype="float32", name=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, dtype=dtype)(x)
    x = layers.BatchNormalization(scale=False, dtype=dtype)(x)
    return layers.Activation("relu", dtype=dtype, name=name)(x)


def _head(layers, x, dtype: str):
    return layers.Dense(10, dtype=dtype)(layers.GlobalAveragePooling2D(dtype=dtype)(x))


def _model(keras, inputs, mid, deep, dtype: str):
    """The classifier, with the two feature maps to dream on as outputs beside its logits."""
    return keras.Model(inputs, [mid, deep, _head(keras.layers, deep, dtype)])


def vgg_same_pools(keras, dtype: str):
    """A VGG-like stack with TensorFlow's 'same' max and average pooling (auto_pad SAME_UPPER)."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3), dtype=dtype)
    x = _conv_bn(layers, inputs, 8, 3, 2, dtype=dtype)
    x = layers.MaxPooling2D(3, 2, padding="same", dtype=dtype)(x)
    mid = _conv_bn(layers, x, 12, 3, dtype=dtype, name="mid")
    x = layers.AveragePooling2D(3, 2, padding="same", dtype=dtype)(mid)
    x = layers.Conv2D(16, 3, padding="same", dtype=dtype)(x)
    deep = layers.Activation("relu", dtype=dtype, name="deep")(x)
    return _model(keras, inputs, mid, deep, dtype)


def mobilenet_separable(keras, dtype: str):
    """MobileNet's blocks: depthwise and separable convolutions, batch norm, ReLU6, a residual sum."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3), dtype=dtype)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, dtype=dtype)(inputs)
    x = layers.ReLU(6.0, dtype=dtype)(layers.BatchNormalization(dtype=dtype)(x))
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, dtype=dtype)(x)
    y = layers.ReLU(6.0, dtype=dtype)(layers.BatchNormalization(dtype=dtype)(y))
    y = layers.BatchNormalization(dtype=dtype)(layers.Conv2D(8, 1, use_bias=False, dtype=dtype)(y))
    mid = layers.Add(dtype=dtype, name="mid")([x, y])
    x = layers.SeparableConv2D(16, 3, strides=2, padding="same", dtype=dtype)(mid)
    x = layers.DepthwiseConv2D(5, strides=2, padding="same", dtype=dtype)(layers.BatchNormalization(dtype=dtype)(x))
    deep = layers.ReLU(6.0, dtype=dtype, name="deep")(x)
    return _model(keras, inputs, mid, deep, dtype)


def inception_v3_blocks(keras, dtype: str):
    """keras.applications.InceptionV3's pattern: valid stem, a block with a 'same' average pool
    branch, and a grid reduction (stride-2 valid convolutions beside a valid max pool)."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3), dtype=dtype)
    x = _conv_bn(layers, inputs, 8, 3, 2, "valid", dtype)
    x = _conv_bn(layers, x, 8, 3, padding="valid", dtype=dtype)
    x = layers.MaxPooling2D(3, 2, dtype=dtype)(x)
    branch1 = _conv_bn(layers, x, 4, 1, dtype=dtype)
    branch5 = _conv_bn(layers, _conv_bn(layers, x, 4, 1, dtype=dtype), 6, 5, dtype=dtype)
    branch3 = _conv_bn(layers, _conv_bn(layers, x, 4, 1, dtype=dtype), 6, 3, dtype=dtype)
    branch3 = _conv_bn(layers, branch3, 6, 3, dtype=dtype)
    pooled = layers.AveragePooling2D(3, 1, padding="same", dtype=dtype)(x)
    pooled = _conv_bn(layers, pooled, 4, 1, dtype=dtype)
    mid = layers.Concatenate(dtype=dtype, name="mid")([branch1, branch5, branch3, pooled])
    reduced = _conv_bn(layers, mid, 8, 3, 2, "valid", dtype)
    double = _conv_bn(layers, _conv_bn(layers, mid, 4, 1, dtype=dtype), 6, 3, dtype=dtype)
    double = _conv_bn(layers, double, 6, 3, 2, "valid", dtype)
    pooled = layers.MaxPooling2D(3, 2, dtype=dtype)(mid)
    deep = layers.Concatenate(dtype=dtype, name="deep")([reduced, double, pooled])
    return _model(keras, inputs, mid, deep, dtype)


def _hard_swish(layers, x, dtype: str):
    """keras.applications.MobileNetV3's hard swish: x * ReLU6(x + 3) / 6, in Keras ops."""
    gate = layers.ReLU(6.0, dtype=dtype)(x + 3.0) * (1.0 / 6.0)
    return layers.Multiply(dtype=dtype)([x, gate])


def mobilenet_v3_hard_swish(keras, dtype: str):
    """MobileNetV3's blocks: hard swish and squeeze-excitation in Keras ops, which tf2onnx leaves in
    NHWC (a Transpose around every convolution) rather than moving the layout through them."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3), dtype=dtype)
    x = layers.Rescaling(2.0, offset=-1.0, dtype=dtype)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, dtype=dtype)(x)
    x = _hard_swish(layers, layers.BatchNormalization(dtype=dtype)(x), dtype)
    y = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, dtype=dtype)(x)
    y = _hard_swish(layers, layers.BatchNormalization(dtype=dtype)(y), dtype)
    squeezed = layers.GlobalAveragePooling2D(keepdims=True, dtype=dtype)(y)
    excite = layers.Conv2D(8, 1, activation="relu", dtype=dtype)(layers.Conv2D(4, 1, dtype=dtype)(squeezed))
    mid = layers.Multiply(dtype=dtype, name="mid")([y, layers.ReLU(6.0, dtype=dtype)(excite + 3.0) * (1.0 / 6.0)])
    x = layers.Conv2D(16, 1, use_bias=False, dtype=dtype)(mid)
    deep = layers.Activation("relu", dtype=dtype, name="deep")(layers.BatchNormalization(dtype=dtype)(x))
    return _model(keras, inputs, mid, deep, dtype)


ARCHITECTURES: dict[str, Callable] = {
    "keras_vgg_same_pools": vgg_same_pools,
    "keras_mobilenet_separable": mobilenet_separable,
    "keras_inception_v3_blocks": inception_v3_blocks,
    "keras_mobilenet_v3_hard_swish": mobilenet_v3_hard_swish,
}


def _randomised(keras, model) -> None:
    """Batch norms with moving statistics and gains away from the identity, as trained ones have."""
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape) if "gamma" in w.path else
                    rng.uniform(-0.2, 0.2, w.shape) if "beta" in w.path or "moving_mean" in w.path else
                    rng.uniform(0.5, 1.5, w.shape)
                    for w in layer.weights
                ]
            )  # fmt: skip


def _application(name: str):
    """keras.applications' network of that name without its head, at any input size, random weights."""

    def build(keras, dtype: str):
        keras.config.set_dtype_policy(dtype)
        try:
            return getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(None, None, 3))
        finally:
            keras.config.set_dtype_policy("float32")

    return build


# Keras' own applications (DREAMSTREAM_LONG_TESTS=1: each takes a minute or two to convert).
APPLICATIONS: dict[str, Callable] = {
    f"keras_app_{name}": _application(name) for name in ("MobileNetV2", "ResNet50", "EfficientNetB0", "InceptionV3")
}


def _features(outputs) -> list:
    """The feature maps the dream loss is taken over: mid and deep (before the logits), or an
    application's one output."""
    return list(outputs[:2]) if isinstance(outputs, (list, tuple)) else [outputs]


def _dream_gradient(tf, model, image_nhwc: np.ndarray) -> np.ndarray:
    """d/d image of the mean square of each feature map, summed (mean(mid^2) + mean(deep^2)), NCHW."""
    image = tf.constant(image_nhwc)
    with tf.GradientTape() as tape:
        tape.watch(image)
        loss = sum(tf.reduce_mean(feature**2) for feature in _features(model(image, training=False)))
    return tape.gradient(loss, image).numpy().transpose(0, 3, 1, 2)


def write(out_dir: Path, names: list[str]) -> None:
    import keras
    import tensorflow as tf
    import tf2onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    networks = {**ARCHITECTURES, **APPLICATIONS}
    for name in names:
        keras.utils.set_random_seed(SEED)
        model = networks[name](keras, "float32")
        _randomised(keras, model)
        twin = networks[name](keras, "float64")
        twin.set_weights([weight.astype(np.float64) for weight in model.get_weights()])
        signature = (tf.TensorSpec((None, None, None, 3), tf.float32, name="input"),)
        converted, _ = tf2onnx.convert.from_keras(
            model, input_signature=signature, output_path=str(out_dir / f"{name}.onnx")
        )
        image = rng.uniform(0, 1, (1, *(APPLICATION_PICTURE if name in APPLICATIONS else PICTURE), 3))
        np.savez(
            out_dir / f"{name}.npz",
            image=image.transpose(0, 3, 1, 2).astype(np.float32),
            grad64=_dream_gradient(tf, twin, image),
            grad32=_dream_gradient(tf, model, image.astype(np.float32)).astype(np.float64),
            layers=np.array([output.name for output in converted.graph.output[: len(_features(model.outputs))]]),
        )


if __name__ == "__main__":
    write(Path(sys.argv[1]), sys.argv[2:] or list(ARCHITECTURES))
