"""The integer ops of logitcache/augment.py written from their definitions, the slow obvious way
(numpy int64, every tap read through an explicit inside-the-image test), as the oracle that the
fast torch ops must equal bit for bit: what a stored view's pixels are may never change."""

from __future__ import annotations

import numpy as np

FILL = 128
ONE = 1 << 16  # affine coefficients are in 1/65536


def _luma(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 3:
        return (x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 32768) >> 16
    return (x.sum(0) + x.shape[0] // 2) // x.shape[0]


def _blend(x: np.ndarray, degenerate: np.ndarray | int, factor: int) -> np.ndarray:
    return np.clip(degenerate + ((factor * (x - degenerate) + 128) >> 8), 0, 255)


def _smooth(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    out = x.copy()
    for y in range(1, h - 1):
        for i in range(1, w - 1):
            total = x[:, y - 1 : y + 2, i - 1 : i + 2].sum(axis=(1, 2)) + 4 * x[:, y, i]
            out[:, y, i] = (total + 6) // 13
    return out


def _autocontrast(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        if hi > lo:
            out[c] = (x[c] - lo) * 255 // (hi - lo)
    return out


def _equalize(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for c in range(x.shape[0]):
        h = np.bincount(x[c].ravel(), minlength=256)
        present = h[h > 0]
        step = (present.sum() - present[-1]) // 255
        if step:
            out[c] = np.minimum((np.cumsum(h) - h + step // 2) // step, 255)[x[c]]
    return out


def _warp(x: np.ndarray, a: int, b: int, c: int, d: int, tx: int, ty: int) -> np.ndarray:
    """Source of output pixel (X, Y): M (p - centre) + centre + t, p the pixel centre; bilinear
    weights in 1/256; a tap outside the image reads FILL."""
    channels, h, w = x.shape
    out = np.empty_like(x)

    def at(row: int, col: int) -> np.ndarray:
        inside = 0 <= row < h and 0 <= col < w
        return x[:, row, col] if inside else np.full(channels, FILL, dtype=np.int64)

    for y in range(h):
        for i in range(w):
            u, v = 2 * i + 1 - w, 2 * y + 1 - h  # twice the offset from the centre
            sx = a * u + b * v + (w - 1) * ONE + 2 * tx  # 2·65536 (source x - 1/2)
            sy = c * u + d * v + (h - 1) * ONE + 2 * ty
            col, row = sx >> 17, sy >> 17
            fx, fy = (sx >> 9) & 255, (sy >> 9) & 255
            top = at(row, col) * (256 - fx) + at(row, col + 1) * fx
            bottom = at(row + 1, col) * (256 - fx) + at(row + 1, col + 1) * fx
            out[:, y, i] = (top * (256 - fy) + bottom * fy + 32768) >> 16
    return out


def _erase(x: np.ndarray, seed: int, top: int, left: int, h: int, w: int) -> np.ndarray:
    from logitcache._seeds import _hash

    out = x.copy()
    noise = _hash(np.uint64(seed), 99, np.arange(x.shape[0] * h * w)) >> np.uint64(56)
    out[:, top : top + h, left : left + w] = noise.astype(np.int64).reshape(-1, h, w)
    return out


OPS = {
    "invert": lambda x: 255 - x,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": lambda x, bits: x if bits >= 8 else x & ((0xFF << (8 - bits)) & 0xFF),
    "solarize": lambda x, t: np.where(x >= t, 255 - x, x),
    "solarize_add": lambda x, add: np.where(x < 128, np.minimum(x + add, 255), x),
    "brightness": lambda x, f: _blend(x, 0, f),
    "color": lambda x, f: _blend(x, _luma(x), f),
    "contrast": lambda x, f: _blend(x, (_luma(x).sum() + x[0].size // 2) // x[0].size, f),
    "sharpness": lambda x, f: _blend(x, _smooth(x), f),
    "affine": _warp,
}


def run_plan(image: np.ndarray, plan: list[tuple[str, tuple[int, ...]]], seed: int) -> np.ndarray:
    """(C, H, W) uint8 in and out."""
    x = image.astype(np.int64)
    for name, args in plan:
        x = _erase(x, seed, *args) if name == "erase" else OPS[name](x, *args)
    return x.astype(np.uint8)
