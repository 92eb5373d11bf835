"""Edge refinement's settings, and the refinement as a dense TensorFlow graph: what a SavedModel export runs
in its graph (faceseg/export.py) and what tests check the host's label maps (predict/labelmap.py) against.

Why refine: the model sees the photo at 128 or 256 px, the label map is wanted at the photo's size, and a
bilinear resize of the probabilities puts class edges only as precisely as the model's grid. The guided
filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013) makes the probabilities follow
the photo's colour edges within a few grid pixels (benchmarks/results/real_photos_trials.md, sixth round).
"""
from __future__ import annotations

REFINE_ZOOM = 4         # the guide's long side: up to this many times the model's grid
REFINE_RADIUS = 3       # the guided filter's window radius, in the model's grid pixels
REFINE_EPS = 1e-4       # its regulariser, for colours in [0, 1]: smaller follows weaker edges
REFINE_MIN_PROBABILITY = 0.1   # refinement picks only among the classes the model gave this much
UNLIKELY = 1e3          # subtracted from the refined score of any other class (finite: resized after)


def box_mean(tf, x, radius: int):
    """Mean of (h, w, k) `x` over the (2r+1)^2 window around each pixel, the window clipped to the image:
    TensorFlow's average pooling with SAME padding counts only the pixels inside; one pass per axis."""
    width = 2 * radius + 1
    return tf.nn.avg_pool2d(tf.nn.avg_pool2d(x[None], [1, width, 1, 1], 1, "SAME"), [1, 1, width, 1], 1, "SAME")[0]


def guide_coefficients(tf, pixels, probs, radius: int, eps: float):
    """(S, S, 3) uint8 model input and its (S, S, C) probabilities -> (S, S, 4C): per class, the weights of
    the three 0-255 colours, then the constant (labelmap.grid_table's layout after its probabilities)."""
    c = probs.shape[2] if probs.shape[2] is not None else tf.shape(probs)[2]
    low = tf.cast(pixels, tf.float32) / 255.0
    centre = tf.reduce_mean(low, axis=[0, 1])
    low = low - centre
    i0, i1, i2 = low[..., 0:1], low[..., 1:2], low[..., 2:3]
    stats = box_mean(tf, tf.concat([low, i0 * i0, i0 * i1, i0 * i2, i1 * i1, i1 * i2, i2 * i2,
                                    probs, i0 * probs, i1 * probs, i2 * probs], -1), radius)
    m0, m1, m2 = stats[..., 0:1], stats[..., 1:2], stats[..., 2:3]
    s00, s01, s02 = stats[..., 3:4] - m0 * m0 + eps, stats[..., 4:5] - m0 * m1, stats[..., 5:6] - m0 * m2
    s11, s12, s22 = stats[..., 6:7] - m1 * m1 + eps, stats[..., 7:8] - m1 * m2, stats[..., 8:9] - m2 * m2 + eps
    mean_p = stats[..., 9:9 + c]
    v0, v1, v2 = (stats[..., 9 + k * c:9 + (k + 1) * c] - m * mean_p for k, m in ((1, m0), (2, m1), (3, m2)))
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    a0 = (c00 * v0 + c01 * v1 + c02 * v2) / det
    a1 = (c01 * v0 + c11 * v1 + c12 * v2) / det
    a2 = (c02 * v0 + c12 * v1 + c22 * v2) / det
    b = mean_p - m0 * a0 - m1 * a1 - m2 * a2
    a0, a1, a2, b = (box_mean(tf, x, radius) for x in (a0, a1, a2, b))
    b = b - centre[0] * a0 - centre[1] * a1 - centre[2] * a2
    return tf.concat([a0 / 255.0, a1 / 255.0, a2 / 255.0, b], -1)


def guided_filter(tf, pixels, guide, probs, radius: int = REFINE_RADIUS, eps: float = REFINE_EPS):
    """The guided filter at every pixel of the (h, w, 3) guide: (h, w, C) scores."""
    h, w = tf.shape(guide)[0], tf.shape(guide)[1]
    coefficients = guide_coefficients(tf, pixels, probs, radius, eps)
    coefficients = tf.image.resize(coefficients[None], [h, w], method="bilinear")[0]                # (h, w, 4C)
    colours = tf.cast(guide, tf.float32)
    a0, a1, a2, b = tf.split(coefficients, 4, axis=-1)
    return a0 * colours[..., 0:1] + a1 * colours[..., 1:2] + a2 * colours[..., 2:3] + b


def refine_probabilities(tf, probs, pixels, guide):
    """(S, S, C) probabilities of the (S, S, 3) uint8 model input `pixels`, and an (h, w, 3) uint8 guide ->
    (h, w, C) refined scores; a class the model gave less than REFINE_MIN_PROBABILITY at a pixel is UNLIKELY."""
    refined = guided_filter(tf, pixels, guide, probs)
    plain = tf.image.resize(probs[None], tf.shape(guide)[:2], method="bilinear")[0]
    return refined - UNLIKELY * tf.cast(plain < REFINE_MIN_PROBABILITY, tf.float32)
