"""Step 3 of prediction on the host: the model's (S, S, C) probabilities -> the (H, W) label map at the
photo's size, plain (a bilinear resize of the probabilities, then the argmax) or refined along the photo's
colour edges (He and Sun's fast guided filter, below). Compiled by Numba: one pass over the output's
pixels with no temporaries, so a label map costs about what writing it does (benchmarks/results, stages).

A bilinear resize mixes, at each output pixel, the four grid points around it. Where those four agree (the
same class is the argmax at all four; or, when refining, one class alone reaches REFINE_MIN_PROBABILITY at
any of them) the mix has that answer too, so the pixel's class is read from a table of grid cells, and the
resize, the filter and the argmax run only at the other pixels: the class edges.

Resizes use half-pixel centres and clamped edges, as tf.image.resize and OpenCV's INTER_LINEAR do.
faceseg/predict/refine.py is the same computation as a dense TensorFlow graph (for exports); a test
checks the two agree on real photos.
"""
from __future__ import annotations

import numba
import numpy as np

from faceseg.predict.refine import (
    REFINE_EPS,
    REFINE_MIN_PROBABILITY,
    REFINE_RADIUS,
    UNLIKELY,
)

UNDECIDED = -1


def jit(function):
    """Compiled on first use, cached beside the module (or in the user's cache folder); nogil: label maps
    run on threads beside the network. Where no cache folder is writable, it compiles once per process."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:
        return numba.njit(nogil=True)(function)


@jit
def _tap(i, out_size, in_size):
    """Output position i of a resize from in_size to out_size: lower and upper source index, upper weight."""
    src = (np.float32(i) + np.float32(0.5)) * (np.float32(in_size) / np.float32(out_size)) - np.float32(0.5)
    src = min(max(src, np.float32(0.0)), np.float32(in_size - 1))
    low = int(np.floor(src))
    return low, min(low + 1, in_size - 1), np.float32(src - low)


@jit
def _taps(out_size, in_size):
    low, high, weight = np.empty(out_size, np.int64), np.empty(out_size, np.int64), np.empty(out_size, np.float32)
    for i in range(out_size):
        low[i], high[i], weight[i] = _tap(i, out_size, in_size)
    return low, high, weight


@jit
def _box_mean(x, radius):
    """Mean of (h, w, k) `x` over the (2r+1)^2 window around each pixel, the window clipped to the image.
    One pass down the rows: running sums of each column's window (float64, a row of them stays in cache),
    and along each row a running sum of those."""
    h, w, n = x.shape
    out = np.empty_like(x)
    columns = np.zeros((w, n), np.float64)
    acc = np.empty(n, np.float64)
    for i in range(min(radius, h - 1) + 1):
        for j in range(w):
            for k in range(n):
                columns[j, k] += x[i, j, k]
    for i in range(h):
        rows = min(i + radius, h - 1) - max(i - radius, 0) + 1
        acc[:] = 0.0
        for j in range(min(radius, w - 1) + 1):
            for k in range(n):
                acc[k] += columns[j, k]
        for j in range(w):
            inverse = 1.0 / (rows * (min(j + radius, w - 1) - max(j - radius, 0) + 1))
            for k in range(n):
                out[i, j, k] = acc[k] * inverse
            if j + radius + 1 < w:
                for k in range(n):
                    acc[k] += columns[j + radius + 1, k]
            if j - radius >= 0:
                for k in range(n):
                    acc[k] -= columns[j - radius, k]
        if i + radius + 1 < h:
            for j in range(w):
                for k in range(n):
                    columns[j, k] += x[i + radius + 1, j, k]
        if i - radius >= 0:
            for j in range(w):
                for k in range(n):
                    columns[j, k] -= x[i - radius, j, k]
    return out


@jit
def grid_table(pixels, probs, radius, eps):
    """(S, S, 3) uint8 model input and its (S, S, C) probabilities -> (S, S, 5C) float32: the probabilities,
    then the guided filter's coefficients per class: the weights of the three 0-255 colours and the constant.

    He et al.'s guided filter with a colour guide in its fast form (He and Sun, "Fast Guided Filter", 2015):
    each class's map is made a local linear function of the photo's colours, the coefficients fitted on the
    model's own grid against the very pixels the model saw, and applied at the photo's pixels. The 3x3 colour
    covariance is inverted in closed form; colours are centred (for precision), then folded back in."""
    s_h, s_w, c = probs.shape
    scale = np.float32(1 / 255)
    centre = np.zeros(3, np.float64)
    for i in range(s_h):
        for j in range(s_w):
            for ch in range(3):
                centre[ch] += pixels[i, j, ch]
    centre = (centre * scale / (s_h * s_w)).astype(np.float32)
    stats = np.empty((s_h, s_w, 9 + 4 * c), np.float32)
    for i in range(s_h):
        for j in range(s_w):
            i0 = pixels[i, j, 0] * scale - centre[0]
            i1 = pixels[i, j, 1] * scale - centre[1]
            i2 = pixels[i, j, 2] * scale - centre[2]
            stats[i, j, 0], stats[i, j, 1], stats[i, j, 2] = i0, i1, i2
            stats[i, j, 3], stats[i, j, 4], stats[i, j, 5] = i0 * i0, i0 * i1, i0 * i2
            stats[i, j, 6], stats[i, j, 7], stats[i, j, 8] = i1 * i1, i1 * i2, i2 * i2
            for k in range(c):
                p = probs[i, j, k]
                stats[i, j, 9 + k], stats[i, j, 9 + c + k] = p, i0 * p
                stats[i, j, 9 + 2 * c + k], stats[i, j, 9 + 3 * c + k] = i1 * p, i2 * p
    stats = _box_mean(stats, radius)
    linear = np.empty((s_h, s_w, 4 * c), np.float32)
    for i in range(s_h):
        for j in range(s_w):
            m0, m1, m2 = stats[i, j, 0], stats[i, j, 1], stats[i, j, 2]
            s00, s01, s02 = stats[i, j, 3] - m0 * m0 + eps, stats[i, j, 4] - m0 * m1, stats[i, j, 5] - m0 * m2
            s11, s12, s22 = stats[i, j, 6] - m1 * m1 + eps, stats[i, j, 7] - m1 * m2, stats[i, j, 8] - m2 * m2 + eps
            c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
            c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
            inverse = 1 / (s00 * c00 + s01 * c01 + s02 * c02)      # 1 / det
            for k in range(c):
                mean_p = stats[i, j, 9 + k]
                v0 = stats[i, j, 9 + c + k] - m0 * mean_p
                v1 = stats[i, j, 9 + 2 * c + k] - m1 * mean_p
                v2 = stats[i, j, 9 + 3 * c + k] - m2 * mean_p
                a0 = (c00 * v0 + c01 * v1 + c02 * v2) * inverse
                a1 = (c01 * v0 + c11 * v1 + c12 * v2) * inverse
                a2 = (c02 * v0 + c12 * v1 + c22 * v2) * inverse
                linear[i, j, k], linear[i, j, c + k], linear[i, j, 2 * c + k] = a0, a1, a2
                linear[i, j, 3 * c + k] = mean_p - m0 * a0 - m1 * a1 - m2 * a2
    linear = _box_mean(linear, radius)
    table = np.empty((s_h, s_w, 5 * c), np.float32)
    for i in range(s_h):
        for j in range(s_w):
            for k in range(c):
                a0, a1, a2 = linear[i, j, k], linear[i, j, c + k], linear[i, j, 2 * c + k]
                table[i, j, k] = probs[i, j, k]
                table[i, j, c + k], table[i, j, 2 * c + k], table[i, j, 3 * c + k] = a0 * scale, a1 * scale, a2 * scale
                # On 0-255 colours g: a . (g / 255 - centre) + b = (a / 255) . g + (b - a . centre).
                table[i, j, 4 * c + k] = linear[i, j, 3 * c + k] - centre[0] * a0 - centre[1] * a1 - centre[2] * a2
    return table


@jit
def _argmax(values):
    best = 0
    for k in range(1, values.shape[0]):
        if values[k] > values[best]:
            best = k
    return best


@jit
def _cells(probs, refine, min_probability):
    """(S, S) int16 per grid cell (corners (i, j), (i, j+1), (i+1, j), (i+1, j+1), clamped): the class every
    pixel inside takes, or UNDECIDED. Plain: the class that is the argmax at all four corners. Refined: the
    class that alone reaches min_probability at any corner (refinement chooses only among those)."""
    s_h, s_w, c = probs.shape
    cells = np.empty((s_h, s_w), np.int16)
    for i in range(s_h):
        i1 = min(i + 1, s_h - 1)
        for j in range(s_w):
            j1 = min(j + 1, s_w - 1)
            cells[i, j] = UNDECIDED
            if refine:
                found, count = 0, 0
                for k in range(c):
                    if max(probs[i, j, k], probs[i, j1, k], probs[i1, j, k], probs[i1, j1, k]) >= min_probability:
                        found, count = k, count + 1
                if count == 1:
                    cells[i, j] = found
            else:
                a, b, d, e = _argmax(probs[i, j]), _argmax(probs[i, j1]), _argmax(probs[i1, j]), _argmax(probs[i1, j1])
                if a == b == d == e:
                    cells[i, j] = a
    return cells


@jit
def _label_map(table, cells, guide, out, refine, min_probability, unlikely):
    """Fill (H, W) uint8 `out`; `table` is (S, S, C) probabilities, or grid_table's (S, S, 5C) with `refine`."""
    h, w = out.shape
    s_h, s_w, n = table.shape
    c = n // 5 if refine else n
    y0, y1, wy = _taps(h, s_h)
    x0, x1, wx = _taps(w, s_w)
    gy0, gy1, gwy = _taps(h, guide.shape[0])      # the guide's pixels: an identity when it is the output's size
    gx0, gx1, gwx = _taps(w, guide.shape[1])
    same = guide.shape[0] == h and guide.shape[1] == w
    mixed = np.empty(n, np.float32)
    colour = np.empty(3, np.float32)
    for y in range(h):
        for x in range(w):
            label = cells[y0[y], x0[x]]
            if label != UNDECIDED:
                out[y, x] = label
                continue
            a, b, v, left, right, u = y0[y], y1[y], wy[y], x0[x], x1[x], wx[x]
            for k in range(n):
                top = table[a, left, k] + (table[a, right, k] - table[a, left, k]) * u
                bottom = table[b, left, k] + (table[b, right, k] - table[b, left, k]) * u
                mixed[k] = top + (bottom - top) * v
            best, best_score = 0, np.float32(-np.inf)
            if refine and same:
                for ch in range(3):
                    colour[ch] = guide[y, x, ch]
            elif refine:
                for ch in range(3):
                    top = np.float32(guide[gy0[y], gx0[x], ch]) * (1 - gwx[x]) + np.float32(guide[gy0[y], gx1[x], ch]) * gwx[x]
                    bottom = np.float32(guide[gy1[y], gx0[x], ch]) * (1 - gwx[x]) + np.float32(guide[gy1[y], gx1[x], ch]) * gwx[x]
                    colour[ch] = top * (1 - gwy[y]) + bottom * gwy[y]
            for k in range(c):
                score = mixed[k]
                if refine:
                    score = mixed[c + k] * colour[0] + mixed[2 * c + k] * colour[1] + mixed[3 * c + k] * colour[2] \
                        + mixed[4 * c + k]
                    if mixed[k] < min_probability:
                        score -= unlikely
                if score > best_score:
                    best, best_score = k, score
            out[y, x] = best


def plain_label_map(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S, C) float32 probabilities -> (height, width) uint8: argmax of their bilinear resize."""
    probs = np.ascontiguousarray(probs, np.float32)
    out = np.empty((height, width), np.uint8)
    _label_map(probs, _cells(probs, False, 0.0), np.zeros((1, 1, 3), np.uint8), out, False, 0.0, 0.0)
    return out


def refined_label_map(probs: np.ndarray, pixels: np.ndarray, guide: np.ndarray, height: int,
                      width: int) -> np.ndarray:
    """(S, S, C) float32 probabilities of the (S, S, 3) uint8 model input `pixels`, and the photo as an
    (h, w, 3) uint8 `guide` (any size; the output's own is exact) -> (height, width) uint8 label map, each
    class edge moved onto the photo's colour edges. A pixel takes only a class the model itself gave at least
    REFINE_MIN_PROBABILITY there: where two neighbouring classes share a colour (upper and lower lip), the
    filter alone would blend them."""
    probs = np.ascontiguousarray(probs, np.float32)
    table = grid_table(np.ascontiguousarray(pixels, np.uint8), probs, REFINE_RADIUS, np.float32(REFINE_EPS))
    out = np.empty((height, width), np.uint8)
    _label_map(table, _cells(probs, True, np.float32(REFINE_MIN_PROBABILITY)), np.ascontiguousarray(guide, np.uint8),
               out, True, np.float32(REFINE_MIN_PROBABILITY), np.float32(UNLIKELY))
    return out
