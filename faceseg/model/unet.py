"""U-Net for face parsing, built from stock tf-keras layers only (so saved models load in safe mode)."""
from __future__ import annotations


from faceseg.backend import keras

layers = keras.layers

from faceseg.config import ModelConfig


def _conv_block(x, filters: int, config: ModelConfig, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm, name=f"{name}_conv{i}")(x)
        if config.batch_norm:
            x = layers.BatchNormalization(momentum=config.batch_norm_momentum, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _upsample(x, filters: int, mode: str, name: str):
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize")(x)    # "resize"
    return layers.Conv2D(filters, 3, padding="same", name=f"{name}_upconv")(x)


def build_unet(config: ModelConfig, size: int | None, num_classes: int) -> keras.Model:
    """uint8 RGB (B, S, S, 3) -> float32 logits (B, S, S, num_classes). S must be divisible by 2**depth."""
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)  # [0, 255] -> [-1, 1]
    skips = []
    for level in range(config.depth):
        x = _conv_block(x, config.base_filters * 2 ** level, config, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, config.base_filters * 2 ** config.depth, config, "bottleneck")
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dropout")(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2 ** level
        x = _upsample(x, filters, config.upsampling, f"up{level}")
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, config, f"up{level}")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    # Logits stay float32 under a mixed-precision policy, for a stable softmax and loss.
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"unet_d{config.depth}_f{config.base_filters}")
