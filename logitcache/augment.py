"""Strong per-sample augmentation replayed from the view seed, under timm's names.

``--aa rand-m9-mstd0.5-inc1`` (RandAugment), ``--aa trivial`` (TrivialAugment Wide),
``--color-jitter`` and ``--reprob`` (random erasing). Every random choice of a view is a draw
from its seed (``_seeds``): which ops, their magnitudes and signs, the erased box and its noise.
The draws are float64 on the CPU and are turned into integers at once (blend factors in 1/256,
affine matrices in 1/65536, thresholds, bit counts, boxes); the ops are integer arithmetic on
uint8 tensors (float32 only where it holds every value exactly), so a view is the same image on
any device, in any batch, worker or process.

The ops follow PIL's definitions (which timm's ops call) in integer form; what differs from
timm, and why, is in docs/format.md: geometric ops fill with grey 128 and use bilinear
sampling, and erasing fills with seeded uniform bytes in pixel space (timm draws N(0, 1) noise
in normalised space, which a uint8 image cannot hold).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ._seeds import _hash
from .errors import BadInput

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

FILL = 128  # grey for pixels that geometric ops move in from outside the image
_AFFINE_BITS = 16
_STREAM = 100  # first hash stream of these ops (views.py uses streams below 100)
_STREAMS = 64  # streams of the fixed draws; RandAugment's layers take 8 each after them

Plan = list[tuple[str, tuple[int, ...]]]  # the integer ops of one view, in order


# --------------------------------------------------------------------------- draws
class _Draws:
    """All the draws of one view seed (its hash of each stream, computed for a batch of seeds at
    once by :func:`plan_views`); stream k of the view is ``self.u(k)``."""

    def __init__(self, bits: list[int]) -> None:
        self.bits = bits

    def u(self, k: int) -> float:
        """float64 in [0, 1): 53 hash bits, exactly."""
        return (self.bits[k] >> 11) * (1.0 / 9007199254740992.0)

    def randint(self, k: int, high: int) -> int:
        """Integer in [0, high) by multiply-shift of 32 hash bits."""
        return ((self.bits[k] >> 32) * high) >> 32

    def sign(self, k: int) -> int:
        return -1 if self.randint(k, 2) else 1

    def gauss(self, k: int) -> float:
        """Standard normal (Box-Muller on streams k and k + 1)."""
        return math.sqrt(-2.0 * math.log(1.0 - self.u(k))) * math.cos(2.0 * math.pi * self.u(k + 1))


def _q8(factor: float) -> int:
    """A blend factor in 1/256 steps (an integer from here on)."""
    return int(round(factor * 256))


def _affine(a: float, b: float, c: float, d: float, tx: float = 0.0, ty: float = 0.0) -> tuple[int, ...]:
    """Source-from-output matrix about the image centre and translation, in 1/65536 steps."""
    return tuple(int(round(x * (1 << _AFFINE_BITS))) for x in (a, b, c, d, tx, ty))


def _rotate(deg: float) -> tuple[str, tuple[int, ...]]:
    t = math.radians(deg)
    return "affine", _affine(math.cos(t), math.sin(t), -math.sin(t), math.cos(t))


# --------------------------------------------------------------------------- policies
# Each maker turns (magnitude level in [0, 10], sign, image (H, W)) into one integer op, as timm's
# rand_augment_ops level-to-argument functions do.
def _rand_ops(increasing: bool) -> dict[str, Callable[[float, int, tuple[int, int]], tuple[str, tuple[int, ...]]]]:
    def enhance(name: str) -> Callable:
        if increasing:  # factor 1 ± 0.9 m/10: stronger with the magnitude; timm keeps it >= 0.1 above m = 10
            return lambda m, s, hw: (name, (_q8(max(0.1, 1.0 + s * 0.9 * m / 10)),))
        return lambda m, s, hw: (name, (_q8(m / 10 * 1.8 + 0.1),))

    return {
        "AutoContrast": lambda m, s, hw: ("autocontrast", ()),
        "Equalize": lambda m, s, hw: ("equalize", ()),
        "Invert": lambda m, s, hw: ("invert", ()),
        "Rotate": lambda m, s, hw: _rotate(s * 30.0 * m / 10),
        "Posterize": lambda m, s, hw: ("posterize", (4 - int(m / 10 * 4) if increasing else int(m / 10 * 4),)),
        "Solarize": lambda m, s, hw: ("solarize", (256 - int(m / 10 * 256) if increasing else int(m / 10 * 256),)),
        "SolarizeAdd": lambda m, s, hw: ("solarize_add", (int(m / 10 * 110),)),
        "Color": enhance("color"),
        "Contrast": enhance("contrast"),
        "Brightness": enhance("brightness"),
        "Sharpness": enhance("sharpness"),
        "ShearX": lambda m, s, hw: ("affine", _affine(1, s * 0.3 * m / 10, 0, 1)),
        "ShearY": lambda m, s, hw: ("affine", _affine(1, 0, s * 0.3 * m / 10, 1)),
        "TranslateXRel": lambda m, s, hw: ("affine", _affine(1, 0, 0, 1, tx=s * 0.45 * m / 10 * hw[1])),
        "TranslateYRel": lambda m, s, hw: ("affine", _affine(1, 0, 0, 1, ty=s * 0.45 * m / 10 * hw[0])),
    }


def _trivial_ops() -> list[Callable[[int, int, tuple[int, int]], tuple[str, tuple[int, ...]] | None]]:
    """torchvision's TrivialAugmentWide: (bin of 31, sign, (H, W)) -> op."""
    lin = lambda lo, hi, b: lo + (hi - lo) * b / 30  # noqa: E731  torch.linspace(lo, hi, 31)[b]
    return [
        lambda b, s, hw: None,  # Identity
        lambda b, s, hw: ("affine", _affine(1, s * lin(0, 0.99, b), 0, 1)),
        lambda b, s, hw: ("affine", _affine(1, 0, s * lin(0, 0.99, b), 1)),
        lambda b, s, hw: ("affine", _affine(1, 0, 0, 1, tx=s * int(lin(0, 32, b)))),
        lambda b, s, hw: ("affine", _affine(1, 0, 0, 1, ty=s * int(lin(0, 32, b)))),
        lambda b, s, hw: _rotate(s * lin(0, 135, b)),
        lambda b, s, hw: ("brightness", (_q8(1 + s * lin(0, 0.99, b)),)),
        lambda b, s, hw: ("color", (_q8(1 + s * lin(0, 0.99, b)),)),
        lambda b, s, hw: ("contrast", (_q8(1 + s * lin(0, 0.99, b)),)),
        lambda b, s, hw: ("sharpness", (_q8(1 + s * lin(0, 0.99, b)),)),
        lambda b, s, hw: ("posterize", (8 - int(round(b / 5)),)),
        lambda b, s, hw: ("solarize", (math.ceil(lin(255.0, 0.0, b)),)),
        lambda b, s, hw: ("autocontrast", ()),
        lambda b, s, hw: ("equalize", ()),
    ]


_TRIVIAL = _trivial_ops()
_RAND = {inc: _rand_ops(inc) for inc in (False, True)}
_RAND_KEYS = {"m": float, "n": int, "mstd": float, "mmax": float, "inc": int, "p": float}
# Limits of --aa rand: more layers than the policy has ops only cost time (100000 would hang a
# dump), and magnitudes past 100 (ten times timm's full strength) would overflow the integer ops.
MAX_LAYERS = len(_RAND[False])
MAX_MAGNITUDE = 100.0
UNIFORM_MSTD = 100.0  # timm: an mstd above 100 draws the magnitude uniformly from [0, m]
AA_RULES = 2  # the version of those rules that a store with such a policy records (1: before them)


@dataclass(frozen=True)
class AutoAugment:
    """A parsed ``--aa`` policy: ``trivial`` or timm's ``rand-m9-n2-mstd0.5-inc1`` form."""

    policy: str  # "rand" or "trivial"
    m: float = 10.0  # timm's default magnitude (_LEVEL_DENOM) where the string names none
    n: int = 2
    mstd: float = 0.0
    mmax: float = 10.0
    inc: int = 0
    p: float = 0.5

    @classmethod
    def parse(cls, text: str) -> AutoAugment:
        head, *parts = text.split("-")
        if head == "trivial" and not parts:
            return cls(policy="trivial")
        if head == "rand":
            values: dict[str, float | int] = {}
            for part in parts:
                key = next((k for k in sorted(_RAND_KEYS, key=len, reverse=True) if part.startswith(k)), None)
                try:
                    values[key] = _RAND_KEYS[key](part[len(key):])  # type: ignore[index]
                except (KeyError, ValueError):
                    break
            else:
                if values.get("mstd", 0.0) > UNIFORM_MSTD:  # one spelling of timm's uniform magnitudes
                    values["mstd"] = math.inf
                aa = cls(policy="rand", **values)  # type: ignore[arg-type]
                if not (1 <= aa.n <= MAX_LAYERS and 0 <= aa.p <= 1 and aa.mstd >= 0 and aa.inc in (0, 1)
                        and 0 <= aa.m <= aa.mmax <= MAX_MAGNITUDE):  # NaN fails too
                    raise BadInput(f"--aa {text!r}: need 1 <= n <= {MAX_LAYERS}, 0 <= p <= 1, mstd >= 0, inc 0 or 1 "
                                   f"and 0 <= m <= mmax <= {MAX_MAGNITUDE:g} (mmax 10 unless given)")
                return aa
        raise BadInput(
            f"cannot read --aa {text!r}: use trivial, or rand[-mM][-nN][-mstdS][-mmaxX][-inc1][-pP] "
            "as timm spells it, e.g. rand-m9-mstd0.5-inc1"
        )

    @property
    def follows_timm_rules(self) -> bool:
        """Whether the policy meets a rule that logitcache took from timm after this policy could
        be stored without it (mstd above 100: uniform magnitudes; increasing enhance factors'
        floor of 0.1, reached only above m = 10): its views then depend on the rules' version."""
        return self.policy == "rand" and (math.isinf(self.mstd) or bool(self.inc and self.mmax > 10))

    def canonical(self) -> str:
        """The one spelling of this policy that the store records."""
        if self.policy == "trivial":
            return "trivial"
        return f"rand-m{self.m:g}-n{self.n}-mstd{self.mstd:g}-mmax{self.mmax:g}-inc{self.inc}-p{self.p:g}"

    def plan(self, draws: _Draws, hw: tuple[int, int]) -> Plan:
        if self.policy == "trivial":
            op = _TRIVIAL[draws.randint(0, len(_TRIVIAL))](draws.randint(1, 31), draws.sign(2), hw)
            return [op] if op else []
        ops = _RAND[bool(self.inc)]
        names = list(ops)
        out: Plan = []
        for layer in range(self.n):  # timm: n ops chosen with replacement, each applied with probability p
            k = _STREAMS + 8 * layer
            name = names[draws.randint(k, len(names))]
            if draws.u(k + 1) >= self.p:
                continue
            m = self.m
            if math.isinf(self.mstd):
                m = self.m * draws.u(k + 2)
            elif self.mstd > 0:
                m = self.m + self.mstd * draws.gauss(k + 2)
            out.append(ops[name](min(max(m, 0.0), self.mmax), draws.sign(k + 4), hw))
        return out


def jitter_plan(strength: float, draws: _Draws) -> Plan:
    """torchvision's ColorJitter(strength, strength, strength): factors in [max(0, 1-s), 1+s], random order."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    ops = [(name, (_q8(lo + (hi - lo) * draws.u(32 + j)),)) for j, name in enumerate(("brightness", "contrast", "color"))]
    order = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][draws.randint(35, 6)]
    return [ops[j] for j in order]


def erase_plan(prob: float, draws: _Draws, hw: tuple[int, int]) -> Plan:
    """timm's RandomErasing (scale 0.02-1/3, ratio 0.3-3.3, ten tries, one box) with probability ``prob``."""
    height, width = hw
    if draws.u(36) >= prob:
        return []
    for attempt in range(10):
        area = height * width * (0.02 + (1 / 3 - 0.02) * draws.u(37 + 2 * attempt))
        aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * draws.u(38 + 2 * attempt))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            return [("erase", (draws.randint(57, height - h + 1), draws.randint(58, width - w + 1), h, w))]
    return []


# --------------------------------------------------------------------------- integer ops
# Each op maps a (C, H, W) uint8 image to another. The definitions (PIL's, in integers) are written
# out the slow obvious way in tests/augment_reference.py, which these equal bit for bit; here they
# are arranged for speed on a CPU, where every pass over an image and every fresh image-sized
# temporary costs more than the arithmetic: pointwise ops are one gather through a 256-entry table
# of the op's own formula, other steps run in place.
_LEVELS = np.arange(256, dtype=np.int64)


def _invert(x: Tensor | np.ndarray) -> Tensor | np.ndarray:
    return 255 - x


def _posterize(x: Tensor | np.ndarray, bits: int) -> Tensor | np.ndarray:
    return x if bits >= 8 else x & ((0xFF << (8 - bits)) & 0xFF)


@functools.lru_cache(maxsize=4096)
def _point(name: str, arg: int) -> np.ndarray:
    """The table of a pointwise op with its argument (policies draw few distinct ones)."""
    v = _LEVELS
    table = {
        "invert": lambda: _invert(v),
        "posterize": lambda: _posterize(v, arg),
        "solarize": lambda: np.where(v >= arg, 255 - v, v),
        "solarize_add": lambda: np.where(v < 128, v + arg, v),
        "brightness": lambda: _blend(v, 0, arg),
    }[name]()
    return np.clip(table, 0, 255).astype(np.uint8)


def _table(x: Tensor, table: np.ndarray) -> Tensor:
    """x through a uint8 lookup table, shared (256,) or one per channel (C, 256)."""
    index = x.to(torch.int32)
    if table.ndim == 2:
        index += torch.arange(0, 256 * x.shape[0], 256, dtype=torch.int32, device=x.device).view(-1, 1, 1)
    return torch.from_numpy(table.reshape(-1)).to(x.device).index_select(0, index.reshape(-1)).view(x.shape)


def _luma(x: Tensor) -> Tensor:
    """(1, H, W) int32 grey level: PIL's "L" conversion for RGB, the channels' rounded mean otherwise."""
    if x.shape[0] == 3:
        grey = x[0].to(torch.int32).mul_(19595)
        grey += x[1].to(torch.int32).mul_(38470)
        grey += x[2].to(torch.int32).mul_(7471)
        return grey.add_(32768).__irshift__(16)[None]
    return (x.sum(0, keepdim=True, dtype=torch.int32) + x.shape[0] // 2) // x.shape[0]


def _blend(x: Tensor | np.ndarray, degenerate: Tensor | np.ndarray | int, factor: int) -> Tensor | np.ndarray:
    """PIL's ImageEnhance: degenerate + factor (x - degenerate), factor in 1/256 steps."""
    return degenerate + ((factor * (x - degenerate) + 128) >> 8)


def _blend_pixels(x: Tensor, degenerate: Tensor, factor: int) -> Tensor:
    """:func:`_blend` of a uint8 image with an int32 one, in place on one int32 copy."""
    out = x.to(torch.int32).sub_(degenerate).mul_(factor).add_(128).__irshift__(8).add_(degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _contrast_table(luma_total: int, pixels: int, factor: int) -> np.ndarray:
    """Blend with the image's rounded mean grey level, from the sum of its grey levels."""
    return np.clip(_blend(_LEVELS, (luma_total + pixels // 2) // pixels, factor), 0, 255).astype(np.uint8)


def _autocontrast_table(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(C, 256) from each channel's lowest and highest level."""
    lo, hi = lo.astype(np.int64)[:, None], hi.astype(np.int64)[:, None]
    return np.where(hi > lo, np.maximum(_LEVELS - lo, 0) * 255 // np.maximum(hi - lo, 1), _LEVELS).astype(np.uint8)


def _equalize_table(counts: np.ndarray) -> np.ndarray:
    """(C, 256) from each channel's histogram: PIL's ImageOps.equalize in its own integer arithmetic."""
    tables = []
    for h in counts.astype(np.int64):
        present = h[h > 0]
        step = int((present.sum() - present[-1]) // 255)
        tables.append(np.minimum((np.cumsum(h) - h + step // 2) // step, 255) if step else _LEVELS)
    return np.stack(tables).astype(np.uint8)


def _contrast(x: Tensor, factor: int) -> Tensor:
    return _table(x, _contrast_table(int(_luma(x).sum()), x[0].numel(), factor))


def _sharpness(x: Tensor, factor: int) -> Tensor:
    """Blend with PIL's SMOOTH filter (3×3, centre weight 5, sum 13) inside the border; the border
    is its own degenerate, so it stays."""
    if x.shape[1] < 3 or x.shape[2] < 3:
        return x
    y = x.to(torch.int16)  # a 3×3 sum of bytes and 4 centres: at most 3,321
    rows = y[:, :, :-2] + y[:, :, 1:-1]
    rows += y[:, :, 2:]
    total = rows[:, :-2] + rows[:, 1:-1]
    total += rows[:, 2:]
    total += y[:, 1:-1, 1:-1] * 4
    smooth = total.to(torch.int32).add_(6).mul_(5042).__irshift__(16)  # = (total + 6) // 13 below 6,564 (see the test)
    out = x.clone()
    out[:, 1:-1, 1:-1] = _blend_pixels(x[:, 1:-1, 1:-1], smooth, factor)
    return out


def _autocontrast(x: Tensor) -> Tensor:
    return _table(x, _autocontrast_table(x.amin(dim=(1, 2)).cpu().numpy(), x.amax(dim=(1, 2)).cpu().numpy()))


def _equalize(x: Tensor) -> Tensor:
    return _table(x, _equalize_table(torch.stack([torch.bincount(p.reshape(-1), minlength=256) for p in x]).cpu().numpy()))


@functools.lru_cache(maxsize=64)
def _grid(size: int, device: torch.device, kind: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pixel numbers 0..size-1 and twice their centres' offsets from the image centre, 2 p + 1 - size."""
    pixels = torch.arange(size, device=device, dtype=kind)
    return pixels, 2 * pixels + 1 - size


def _warp(x: Tensor, a: int, b: int, c: int, d: int, tx: int, ty: int) -> Tensor:
    """Bilinear affine warp in fixed point: the source of each output pixel centre is
    M (p - centre) + centre + t, in 1/65536 pixel; taps outside the image read FILL.

    Computed in float32, which is exact here: every sum and product is a multiple of 1/65536
    under 256, so the lerps below are the integer formula of tests/augment_reference.py."""
    one = 1 << _AFFINE_BITS
    if a == d == one and c == 0:  # rows stay rows: translation, shear x
        return _row_warp(x, b, tx, ty)
    if a == d == one and b == 0:  # columns stay columns: shear y, as shear x of the transpose
        return _row_warp(x.transpose(1, 2), c, ty, tx).transpose(1, 2).contiguous()
    channels, h, w = x.shape
    # Coordinates in int32 where no term or sum below can reach 2**31 (any view size in practice),
    # else int64: |u| <= w and |v| <= h, whatever the image's shape.
    bound = max(abs(a) * w + abs(b) * h + (w + 3) * one + 2 * abs(tx), abs(c) * w + abs(d) * h + (h + 3) * one + 2 * abs(ty))
    kind = torch.int32 if bound < 2**31 and (h + 4) * (w + 4) < 2**31 else torch.int64
    (xs, u), (ys, v) = _grid(w, x.device, kind), _grid(h, x.device, kind)

    # 2·65536 × (source - 1/2) >> 9 is the source in 1/256 pixel, its low byte the tap's weight,
    # on the shape it depends on (a scale's per row or column, a rotation's per pixel). Taps are
    # clamped into a border of two FILL pixels (a tap pair left of, right of, above or below the
    # image then reads FILL twice), so that one gather per tap needs no mask.
    def axis(scale: int, pixels: Tensor, centres: Tensor, across: Tensor | int, size: int, t: int) -> tuple[Tensor, Tensor]:
        if scale == one:  # scale·centres = 2·65536 pixels + const: whole pixels, the fraction is across's
            q = (across + (4 * one + 2 * t)) >> (_AFFINE_BITS - 7)
            tap = pixels + (q >> 8)
        else:
            q = centres * scale + (across + ((size + 3) * one + 2 * t))  # the constant on the smaller term
            q >>= _AFFINE_BITS - 7
            tap = q >> 8
        weight = torch.as_tensor(q & 255, device=x.device) * (1 / 256)  # one pass: int to float, exactly
        return tap.clamp_(0, size + 2), weight

    ix, wx = axis(a, xs[None], u[None], b * v[:, None] if b else 0, w, tx)
    iy, wy = axis(d, ys[:, None], v[:, None], c * u[None] if c else 0, h, ty)
    # One gather per tap and channel: tap (dy, dx) reads the flat padded channel shifted by dy
    # rows and dx columns, at the same index. Channel by channel, so that what one step reads
    # stays in the cache (faster than one gather over all channels).
    index = (iy * (w + 4) + ix).reshape(-1)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=FILL).to(torch.float32).view(channels, -1)
    out = torch.empty((channels, h, w), dtype=torch.uint8, device=x.device)
    for k, flat in enumerate(padded):

        def tap(offset: int, flat: Tensor = flat) -> Tensor:
            return flat[offset:].index_select(0, index).view(h, w)

        top = tap(0).lerp_(tap(1), wx)
        out[k] = top.lerp_(tap(w + 4).lerp_(tap(w + 5), wx), wy).add_(0.5)  # >= 0: truncation is the floor
    return out


def _row_warp(x: Tensor, b: int, tx: int, ty: int) -> Tensor:
    """:func:`_warp` with a = d = 1 and c = 0: the source of (X, Y) is (X + kx_Y + fx_Y / 256,
    Y + ky + fy / 256), whole pixels and fraction of x per row, of y for all. So each tap row is
    one contiguous run of a canvas (the image in FILL, wide enough for every shift), gathered
    whole, and no per-pixel coordinate is computed."""
    channels, h, w = x.shape
    v = 2 * torch.arange(h, device=x.device, dtype=torch.int64) + 1 - h
    qx = (b * v + 2 * tx) >> (_AFFINE_BITS - 7)  # per row, in 1/256 pixel
    qy = (2 * ty) >> (_AFFINE_BITS - 7)
    # A shift past the image reads FILL only, as the shift just past it does: clamped so.
    kx, ky = (qx >> 8).clamp_(-w - 1, w + 1), min(max(qy >> 8, -h - 1), h + 1)
    lo, hi = int(kx.min()), int(kx.max())
    margin = max(0, -lo)
    width = margin + w + max(0, hi) + 1
    canvas = torch.full((channels, h + 1, width), float(FILL), dtype=torch.float32, device=x.device)
    rows = slice(max(0, -ky), min(h + 1, h - ky))  # canvas[:, r, margin + s] is pixel (r + ky, s)
    if rows.start < rows.stop:
        canvas[:, rows, margin : margin + w] = x[:, rows.start + ky : rows.stop + ky]
    if b == 0:  # a translation: one shift for every row, so the tap rows are slices
        start, fraction = lo + margin, (int(qx[0]) & 255) / 256

        def row(r: int) -> Tensor:
            taps = canvas[:, r : r + h, start : start + w + 1]
            return torch.lerp(taps[..., :w], taps[..., 1:], fraction) if fraction else taps[..., :w].clone()
    else:
        flat = canvas.view(-1)
        runs = flat.as_strided((flat.numel() - w, w + 1), (1, 1))  # runs[i] = flat[i : i + w + 1]
        starts = ((h + 1) * width * torch.arange(channels, device=x.device)[:, None]
                  + width * torch.arange(h, device=x.device) + (kx + margin)).view(-1)
        weights = (qx & 255).to(torch.float32).div_(256)[:, None]

        def row(r: int) -> Tensor:
            taps = runs.index_select(0, starts + r * width).view(channels, h, w + 1)
            return torch.lerp(taps[..., :w], taps[..., 1:], weights)

    out = row(0)
    if qy & 255:
        out.lerp_(row(1), (qy & 255) / 256)
    return out.add_(0.5).to(torch.uint8)  # >= 0, so truncation is the floor


def _erase(x: Tensor, seed: int, top: int, left: int, h: int, w: int) -> Tensor:
    noise = _hash(np.uint64(seed), _STREAM - 1, np.arange(x.shape[0] * h * w)) >> np.uint64(56)
    out = x.clone()
    out[:, top : top + h, left : left + w] = torch.from_numpy(noise.astype(np.uint8)).view(-1, h, w).to(x.device)
    return out


_OPS: dict[str, Callable[..., Tensor]] = {
    "invert": _invert,  # on a tensor cheaper than its table, as posterize
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": lambda x, t: _table(x, _point("solarize", t)),
    "solarize_add": lambda x, add: _table(x, _point("solarize_add", add)),
    "brightness": lambda x, f: _table(x, _point("brightness", f)),
    "color": lambda x, f: _blend_pixels(x, _luma(x), f),
    "contrast": _contrast,
    "sharpness": _sharpness,
    "affine": _warp,
}


def run_plan(image: Tensor, plan: Plan, seed: int) -> Tensor:
    """Apply one view's integer ops to a (C, H, W) uint8 image on its device."""
    for name, args in plan:
        image = _erase(image, seed, *args) if name == "erase" else _OPS[name](image, *args)
    return image


# --------------------------------------------------------------------------- on Pillow images
# A folder's view is a Pillow image until it becomes a tensor: the pointwise ops that lead its plan
# run there, through the same tables (its statistics from Pillow's histogram, extrema and "L"
# conversion, which is the grey level above), in Pillow's C; the rest of the plan runs on the tensor.
_POINTWISE = ("invert", "posterize", "solarize", "solarize_add", "brightness", "contrast", "autocontrast", "equalize")


def split_pointwise(plan: Plan) -> tuple[Plan, Plan]:
    """The plan's leading pointwise ops, and the rest."""
    k = next((j for j, (name, _) in enumerate(plan) if name not in _POINTWISE), len(plan))
    return plan[:k], plan[k:]


def run_pointwise(image: PILImage, plan: Plan) -> PILImage:
    """Apply pointwise ops (:func:`split_pointwise`) to an "L" or "RGB" Pillow image."""
    for name, args in plan:
        bands = len(image.getbands())
        if name == "contrast":
            grey = image.convert("L") if bands == 3 else image
            total = int(np.dot(_LEVELS, grey.histogram()))
            table = _contrast_table(total, image.width * image.height, args[0])
        elif name == "autocontrast":
            lo, hi = np.array(image.getextrema()).reshape(bands, 2).T
            table = _autocontrast_table(lo, hi)
        elif name == "equalize":
            table = _equalize_table(np.array(image.histogram()).reshape(bands, 256))
        else:
            table = _point(name, args[0] if args else 0)
        image = image.point((np.tile(table, bands) if table.ndim == 1 else table).reshape(-1).tolist())
    return image


def plan_views(
    seeds: Sequence[int] | np.ndarray, hw: tuple[int, int], aa: AutoAugment | None, color_jitter: float, reprob: float,
) -> list[Plan]:
    """The integer ops of the views with these seeds on (H, W) images, in timm's order:
    auto-augment or colour jitter, then random erasing."""
    streams = _STREAM + np.arange(_STREAMS + 8 * (aa.n if aa and aa.policy == "rand" else 0))
    plans = []
    for bits in _hash(np.asarray(seeds, dtype=np.uint64)[:, None], streams).tolist():
        draws = _Draws(bits)
        plan = aa.plan(draws, hw) if aa else jitter_plan(color_jitter, draws) if color_jitter else []
        plans.append(plan + (erase_plan(reprob, draws, hw) if reprob else []))
    return plans


# --------------------------------------------------------------------------- mixing
_MIX_STREAM = 400  # hash streams of the mixing draws (vectorised over a batch of seeds)
_GAMMA_TRIES = 12  # Marsaglia-Tsang accepts > 95 % of tries for any shape; after 12 the mean is used


def _u(seeds: np.ndarray, stream: int) -> np.ndarray:
    bits = _hash(seeds.astype(np.uint64), _MIX_STREAM + stream) >> np.uint64(11)
    return bits.astype(np.float64) * (1.0 / 9007199254740992.0)


def _int(seeds: np.ndarray, stream: int, high: np.ndarray | int) -> np.ndarray:
    bits = _hash(seeds.astype(np.uint64), _MIX_STREAM + stream) >> np.uint64(32)
    with np.errstate(over="ignore"):
        return ((bits * np.asarray(high).astype(np.uint64)) >> np.uint64(32)).astype(np.int64)


def _gamma(seeds: np.ndarray, shape: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Gamma(shape, 1) per seed by Marsaglia and Tsang (shape < 1 boosted by U^(1/shape)), and
    its log, which stays finite where the value underflows to 0 (shape well below 1)."""
    a = np.where(shape < 1, shape + 1, shape)
    d = a - 1 / 3
    c = 1 / np.sqrt(9 * d)
    out = d.copy()
    found = np.zeros(len(seeds), dtype=bool)
    for t in range(_GAMMA_TRIES):
        u1, u2, u3 = (_u(seeds, stream + 3 * t + j) for j in range(3))
        x = np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)
        v = (1 + c * x) ** 3
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = ~found & (v > 0) & (np.log1p(-u3) < 0.5 * x * x + d - d * v + d * np.log(np.where(v > 0, v, 1)))
        out[ok] = (d * v)[ok]
        found |= ok
    u = _u(seeds, stream + 3 * _GAMMA_TRIES)
    boost = np.where(shape < 1, (1 - u) ** (1 / shape), 1.0)
    return out * boost, np.log(out) + np.where(shape < 1, np.log1p(-u) / shape, 0.0)


def _beta(seeds: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Beta(alpha, alpha) per seed, as X / (X + Y) of two Gamma(alpha) draws; where both underflow
    to 0 (alpha of 0.01 and below) or their sum overflows, from the difference of their logs."""
    (x, log_x), (y, log_y) = _gamma(seeds, alpha, 10), _gamma(seeds, alpha, 50)
    with np.errstate(invalid="ignore", over="ignore"):
        beta = x / (x + y)
        bad = ~np.isfinite(beta)
        beta[bad] = 1 / (1 + np.exp(log_y[bad] - log_x[bad]))
    return beta


@dataclass(frozen=True)
class Mix:
    """How each view of a batch is mixed; everything is a function of its seed and sample index.

    ``partner`` is the other sample (the view's own where unmixed), shown with the view of seed
    ``partner_seed``; ``lam`` is the weight of the view's own image in pixels and labels (1.0
    unmixed; for CutMix the exact share of its pixels outside the box, timm's ``correct_lam``).
    CutMix views have ``cut`` and the partner's ``box`` (top, bottom, left, right); mixup views
    blend with ``weight``/256 of their own image, and ``lam`` is that fraction exactly.
    """

    partner: np.ndarray
    partner_seed: np.ndarray
    lam: np.ndarray
    cut: np.ndarray
    box: np.ndarray
    weight: np.ndarray

    @property
    def mixed(self) -> np.ndarray:
        return self.lam < 1.0

    def true_class(self, labels: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """The label of the larger share (the view's own at λ = 1/2): the "true class" that the
        stored true-class logit and LoCa, DKD and RLD use for a mixed view."""
        return np.where(self.lam >= 0.5, labels[samples], labels[self.partner])


def mix_params(
    seeds: np.ndarray, samples: np.ndarray, clean: np.ndarray, num_samples: int, hw: tuple[int, int],
    *, mixup: float, cutmix: float, prob: float, switch_prob: float,
) -> Mix:
    """timm's Mixup in ``elem`` mode, with the partner drawn from the seed instead of the batch:
    each augmented view is mixed with probability ``prob``, by CutMix with probability
    ``switch_prob`` when both alphas are > 0, λ ~ Beta(alpha, alpha); clean views never are."""
    seeds = np.asarray(seeds, dtype=np.uint32)
    samples = np.asarray(samples, dtype=np.int64)
    height, width = hw
    use = ~np.asarray(clean, dtype=bool) & (_u(seeds, 0) < prob) & (num_samples > 1) & bool(mixup or cutmix)
    if mixup and cutmix:
        cut = use & (_u(seeds, 1) < switch_prob)
    else:
        cut = use & bool(cutmix)
    alpha = np.where(cut, cutmix or 1.0, mixup or 1.0)
    beta = _beta(seeds, alpha)
    partner = _int(seeds, 2, max(num_samples - 1, 1))
    partner = np.where(use, partner + (partner >= samples), samples)  # never the sample itself
    partner_seed = (_hash(seeds.astype(np.uint64), _MIX_STREAM + 3) >> np.uint64(32)).astype(np.uint32)
    # CutMix box as timm's rand_bbox: side sqrt(1 - λ) of the image's, centre uniform, clipped.
    ratio = np.sqrt(1 - beta)
    cut_h, cut_w = (height * ratio).astype(np.int64), (width * ratio).astype(np.int64)
    cy, cx = _int(seeds, 4, height), _int(seeds, 5, width)
    box = np.stack([np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height),
                    np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)], axis=1)
    box[~cut] = 0
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    weight = np.where(use & ~cut, np.round(beta * 256).astype(np.int64), 256)
    lam = np.where(cut, 1 - area / (height * width), weight / 256)
    return Mix(partner=partner, partner_seed=partner_seed, lam=lam.astype(np.float64), cut=cut, box=box, weight=weight)


def mix_images(own: Tensor, partner: Tensor, mix: Mix, rows: np.ndarray) -> Tensor:
    """Mix uint8 images (B, C, H, W) of the ``rows`` that are mixed with their partners' images,
    in integers: mixup rounds weight·own + (256 - weight)·partner to the nearest level."""
    out = own.clone()
    for r, p in zip(rows.tolist(), partner):
        if mix.cut[r]:
            top, bottom, left, right = mix.box[r].tolist()
            out[r, :, top:bottom, left:right] = p[:, top:bottom, left:right]
        else:
            w = int(mix.weight[r])
            out[r] = ((own[r].to(torch.int32) * w + p.to(torch.int32) * (256 - w) + 128) >> 8).to(torch.uint8)
    return out
