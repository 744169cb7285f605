"""Seeded, replayable augmented views.

Every (view v, sample i) has a 32-bit seed, a counter-based hash of (dump seed, v, i). The
augmentation parameters of that view (crop box, flip) are a pure function of the seed and the
source image size, computed on the CPU with integer or IEEE float64 arithmetic; the ops that use
them (pad + gather, flip) are exact integer operations on uint8 tensors, so a view replayed on any
device, in any batch, by any worker, is the same image to the last bit. Resized crops are
resampled by Pillow's bilinear filter (fixed-point integer arithmetic in C, on the CPU: the crop,
then the resize, as torchvision's RandomResizedCrop does on Pillow images); its output may change
between Pillow releases, so the store records the version as ``resampler`` and a replay under
another one is refused. Normalisation to float is one IEEE subtraction and one division per
pixel, which CPU and GPU both round correctly.

Stored view 0 may be the clean image (no crop offset, no flip; for resized crops the usual
resize-then-centre-crop evaluation transform); augmented views follow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._seeds import (
    _randint,
    _uniform,
    view_seeds,  # noqa: F401  (its public home: logitcache.views.view_seeds)
)
from .augment import AA_RULES, AutoAugment, Mix, Plan, mix_params, plan_views, run_plan, run_pointwise, split_pointwise
from .errors import BadInput, CacheMismatch, CacheOutdated

if TYPE_CHECKING:
    from PIL.Image import Image

# Columns of a params row: the geometry, then the view's seed and whether it is the clean view
# (which the per-sample ops of augment.py need).
TOP, LEFT, HEIGHT, WIDTH, FLIP, SEED, CLEAN = range(7)


def pillow_resampler() -> str:
    """The resampler of resized crops here: Pillow's bilinear filter, named with Pillow's version
    (another release may round differently, and its bundled JPEG decoder may differ too)."""
    import PIL

    return f"pillow-{PIL.__version__}-bilinear"


# --------------------------------------------------------------------------- spec
# ViewSpec's fields of strong augmentation and mixing: left out of the JSON at their defaults, so
# that stores made without them keep their spec and identity.
STRONG_FIELDS = ("aa", "color_jitter", "reprob", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob")
# ...and ``resampler``, which a plain crop does not have (CIFAR-style stores keep their identity).
_OMITTED_AT_DEFAULT = (*STRONG_FIELDS, "resampler", "aa_rules")
_UNIT_INTERVAL = ("reprob", "mixup_prob", "mixup_switch_prob")
# At strength 255 colour jitter's factors reach 256, which already saturates every pixel that differs
# from the degenerate image; larger ones would only overflow the integer blend.
MAX_COLOR_JITTER = 255.0
# Beta(α, α) below this α is λ = 0 or 1 to within 1e-3 for almost every view: nothing is blended.
MIN_MIX_ALPHA = 1e-3


def strong_options(strong: dict[str, Any]) -> str:
    """The command-line flags of the given ViewSpec strong fields, e.g. ``--aa, --reprob``."""
    return ", ".join(f"--{name.replace('_', '-')}" for name in STRONG_FIELDS if name in strong)


@dataclass(frozen=True)
class NoAugmentation:
    """The views of a dataset that is never augmented (text: one clean view of token rows, its
    seeds unused). Stored as an empty augmentation; answers what the loops ask a ViewSpec."""

    mixing: bool = False
    per_sample: bool = False

    def to_json(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return "none (one clean view)"

    def replay_problem(self) -> None:
        return None  # nothing is resampled: any environment replays token rows

    def check_replayable(self) -> None:
        pass


NO_AUGMENTATION = NoAugmentation()


@dataclass(frozen=True, kw_only=True)
class ViewSpec:
    """An augmentation policy whose parameters are a pure function of a seed.

    ``kind="crop"``: zero-pad by ``padding``, take a ``size``×``size`` crop at a random offset
    (CIFAR's RandomCrop). ``kind="resized_crop"``: torchvision's RandomResizedCrop box sampling
    (``scale``, ``ratio``, ten tries then a centre-crop fallback) resampled to ``size`` by
    ``resampler`` (Pillow's antialiased bilinear filter, this environment's version unless
    given); its clean view resizes the shorter side to ``eval_resize`` and centre-crops ``size``
    (as one resampling of the centre box). ``flip`` adds a horizontal flip with p = 0.5.

    Then, per sample and never on the clean view (``augment.py``): ``aa`` (timm's ``--aa``:
    ``rand-...`` or ``trivial``) or ``color_jitter``, then random erasing with probability
    ``reprob``. ``mixup``/``cutmix`` and their probabilities (timm's meanings) mix each
    augmented view with a partner drawn from its seed; ``loader.py`` does that, since it needs
    the partner's image. The new fields are left out of the JSON at their defaults, so a store
    made without them keeps its spec and identity.
    """

    kind: Literal["crop", "resized_crop"]
    size: int
    padding: int = 0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    eval_resize: int = 0
    aa: str = ""
    color_jitter: float = 0.0
    reprob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    resampler: str = ""
    aa_rules: int = 0  # AA_RULES where the policy follows a rule taken from timm later, else 0

    def __post_init__(self) -> None:
        if self.kind not in ("crop", "resized_crop"):
            raise BadInput(f"unknown augmentation kind {self.kind!r}: use 'crop' or 'resized_crop'")
        if self.size <= 0 or self.padding < 0:
            raise BadInput(f"augmentation size must be > 0 and padding >= 0, got {self}")
        if self.kind == "resized_crop":
            if self.eval_resize < self.size:
                object.__setattr__(self, "eval_resize", int(round(self.size / 0.875)))
            if not self.resampler:
                object.__setattr__(self, "resampler", pillow_resampler())
        elif self.resampler:
            raise BadInput(f"a plain crop does not resample, yet has resampler {self.resampler!r}")
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        if self.aa:
            policy = AutoAugment.parse(self.aa)
            object.__setattr__(self, "aa", policy.canonical())
            object.__setattr__(self, "aa_rules", AA_RULES if policy.follows_timm_rules else 0)
            if self.color_jitter:
                raise BadInput("--color-jitter is not applied with --aa (timm turns it off too): drop one of them")
        for name in STRONG_FIELDS[1:]:
            value = float(getattr(self, name))
            high = 1.0 if name in _UNIT_INTERVAL else MAX_COLOR_JITTER if name == "color_jitter" else math.inf
            if not 0.0 <= value <= high or math.isinf(value):  # NaN fails too
                bounds = "in [0, 1]" if high == 1 else f"in [0, {high:g}]" if high < math.inf else "finite and >= 0"
                raise BadInput(f"--{name.replace('_', '-')} must be {bounds}, got {value}")
            object.__setattr__(self, name, value)
        self._check_mixing()

    def _check_mixing(self) -> None:
        """Mixing options that would be stored yet change no view are refused, as timm gives them
        meaning: the probabilities need an alpha, the switch needs both, and alphas need P > 0."""
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if 0 < alpha < MIN_MIX_ALPHA:
                raise BadInput(f"--{name} {alpha:g} mixes nothing (Beta(α, α) is then λ = 0 or 1): use an alpha "
                               f">= {MIN_MIX_ALPHA:g} (timm's recipes: 0.8 and 1.0), or drop --{name}")
        alphas = bool(self.mixup) + bool(self.cutmix)
        if self.mixup_switch_prob != 0.5 and alphas < 2:
            raise BadInput("--mixup-switch-prob chooses between mixup and CutMix: give both --mixup and --cutmix, "
                           "or drop --mixup-switch-prob")
        if self.mixup_prob != 1.0 and not alphas:
            raise BadInput("--mixup-prob is the share of views mixed by --mixup/--cutmix: give an alpha, or drop it")
        if alphas and not self.mixup_prob:
            raise BadInput("--mixup-prob 0 mixes no view: raise it, or drop --mixup/--cutmix")

    @cached_property
    def _aa(self) -> AutoAugment | None:
        return AutoAugment.parse(self.aa) if self.aa else None

    @property
    def per_sample(self) -> bool:
        """Whether views get per-sample ops after the geometry (auto-augment, jitter, erasing)."""
        return bool(self.aa or self.color_jitter or self.reprob)

    @property
    def mixing(self) -> bool:
        return bool((self.mixup or self.cutmix) and self.mixup_prob)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        for f in fields(self):
            if f.name in _OMITTED_AT_DEFAULT and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ViewSpec | NoAugmentation:
        if not d:  # token rows: nothing is augmented
            return NO_AUGMENTATION
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise CacheMismatch(
                f"the store's augmentation uses {', '.join(sorted(unknown))}, which this logitcache does not know: "
                "upgrade logitcache (pip install -U logitcache)"
            )
        if d.get("kind") == "resized_crop" and "resampler" not in d:
            # Made before resized crops were Pillow's: their pixels were another filter's, which this
            # version no longer computes, and filling in today's resampler would mix the two.
            raise CacheOutdated(
                "the store's resized crops were resampled by logitcache's former integer filter (its augmentation "
                "has no resampler), which this logitcache does not replay: re-dump it (the same dump command with "
                "--overwrite)"
            )
        try:
            spec = cls(**{**d, "scale": tuple(d["scale"]), "ratio": tuple(d["ratio"])})
        except (KeyError, TypeError, ValueError, BadInput) as e:
            raise CacheMismatch(f"the store's augmentation is malformed ({e}): re-dump it") from None
        if d.get("aa_rules", 0) > AA_RULES:
            raise CacheMismatch("the store's augmentation follows newer rules than this logitcache knows: upgrade "
                                "logitcache (pip install -U logitcache)")
        if spec.aa_rules != d.get("aa_rules", 0):
            # Stored before logitcache followed timm's rules for this policy (or edited): its
            # teacher saw views that today's rules do not make, and the old ones are not kept.
            raise CacheOutdated(
                f"the store's --aa {d['aa']} was made before logitcache drew it as timm does (mstd above 100: uniform "
                "magnitudes; increasing enhance factors: at least 0.1), so its views are not replayed: re-dump it (the "
                "same dump command with --overwrite)"
            )
        return spec

    def replay_problem(self) -> str | None:
        """Why this environment cannot replay these views bit for bit (resized crops of another
        Pillow), or None."""
        here = pillow_resampler()
        if self.resampler and self.resampler != here:
            return f"its views were resampled by {self.resampler}, this environment has {here}"
        return None

    def check_replayable(self) -> None:
        """Refuse views this environment cannot replay bit for bit, naming the Pillow that can."""
        problem = self.replay_problem()
        if problem:
            version = self.resampler.split("-")[1]
            raise CacheMismatch(
                f"the cache: {problem}; replaying them would give other pixels: install that Pillow "
                f"(pip install pillow=={version}) or re-dump the cache (views.augmentation.resampler)"
            )

    def describe(self) -> str:
        flip = "+flip" if self.flip else ""
        if self.kind == "crop":
            text = f"crop({self.size}, pad={self.padding}){flip}"
        else:
            lo, hi = self.scale
            # What differs from torchvision's defaults is said too (a timm model's crop_pct sets eval_resize).
            extras = "" if self.ratio == (3 / 4, 4 / 3) else f", ratio=({self.ratio[0]:g},{self.ratio[1]:g})"
            extras += "" if self.eval_resize == int(round(self.size / 0.875)) else f", eval_resize={self.eval_resize}"
            text = f"resized_crop({self.size}, scale=({lo:g},{hi:g}){extras}, {self.resampler}){flip}"
        extra = [f"aa {self.aa}"] if self.aa else []
        extra += [f"color-jitter {self.color_jitter:g}"] if self.color_jitter else []
        extra += [f"reprob {self.reprob:g}"] if self.reprob else []
        if self.mixing:
            mixed = [f"mixup {self.mixup:g}"] * bool(self.mixup) + [f"cutmix {self.cutmix:g}"] * bool(self.cutmix)
            switch = f" switch {self.mixup_switch_prob:g}" if self.mixup and self.cutmix else ""
            extra.append(f"{' '.join(mixed)} prob {self.mixup_prob:g}{switch}")
        return " + ".join([text, *extra])

    @classmethod
    def parse(cls, text: str) -> ViewSpec:
        """Parse the CLI form: ``crop:SIZE[:PAD][:noflip]`` or ``resized_crop:SIZE[:MIN-MAX][:noflip]``.

        What is left out takes its default (no padding; the full scale range; flips on), which
        :meth:`describe` spells out: the dump prints it.
        """
        kind, *rest = text.split(":")
        flip = not rest or rest[-1] != "noflip"
        nums = rest if flip else rest[:-1]
        try:
            if kind == "crop" and 1 <= len(nums) <= 2:
                return cls(kind="crop", size=int(nums[0]), padding=int(nums[1]) if len(nums) > 1 else 0, flip=flip)
            if kind == "resized_crop" and 1 <= len(nums) <= 2:
                lo, hi = (float(s) for s in nums[1].split("-")) if len(nums) > 1 else (0.08, 1.0)
                return cls(kind="resized_crop", size=int(nums[0]), scale=(lo, hi), flip=flip)
        except BadInput:
            raise
        except ValueError:  # a number that does not parse
            pass
        raise BadInput(
            f"cannot read augmentation {text!r}: use crop:SIZE[:PAD][:noflip] (PAD 0 if left out) or "
            "resized_crop:SIZE[:MIN-MAX][:noflip] (scale 0.08-1 if left out); flips are on unless :noflip"
        )

    # ------------------------------------------------------------------ params
    def params(self, seeds: np.ndarray, src_hw: np.ndarray, clean: np.ndarray | bool = False) -> np.ndarray:
        """(B, 5) int64 rows ``[top, left, height, width, flip]`` for each seed.

        Args:
            seeds: (B,) uint32 view seeds.
            src_hw: (B, 2) or (2,) source image height and width.
            clean: (B,) or scalar: True where the clean (unaugmented) view is wanted.
        """
        seeds = np.asarray(seeds, dtype=np.uint32).reshape(-1)
        n = seeds.shape[0]
        hw = np.broadcast_to(np.asarray(src_hw, dtype=np.int64), (n, 2))
        clean = np.broadcast_to(np.asarray(clean, dtype=bool), (n,))
        out = np.empty((n, 7), dtype=np.int64)
        if self.kind == "crop":
            self._crop_params(seeds, hw, clean, out)
        else:
            self._resized_crop_params(seeds, hw, clean, out)
        out[:, FLIP] = 0 if not self.flip else np.where(clean, 0, _randint(seeds, 7, 2))
        out[:, SEED], out[:, CLEAN] = seeds, clean
        return out

    def _crop_params(self, seeds: np.ndarray, hw: np.ndarray, clean: np.ndarray, out: np.ndarray) -> None:
        pad = self.padding
        room = hw + 2 * pad - self.size + 1  # number of valid offsets per axis
        if (room < 1).any():
            raise BadInput(f"crop size {self.size} is larger than the padded image {hw[0].tolist()}: lower it")
        out[:, TOP] = np.where(clean, (room[:, 0] - 1) // 2, _randint(seeds, 1, room[:, 0]))
        out[:, LEFT] = np.where(clean, (room[:, 1] - 1) // 2, _randint(seeds, 2, room[:, 1]))
        out[:, HEIGHT] = self.size
        out[:, WIDTH] = self.size

    def _resized_crop_params(self, seeds: np.ndarray, hw: np.ndarray, clean: np.ndarray, out: np.ndarray) -> None:
        height, width = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        found = np.zeros(len(seeds), dtype=bool)
        for attempt in range(10):  # torchvision's RandomResizedCrop.get_params, vectorised
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _uniform(seeds, 10 + 4 * attempt))
            aspect = np.exp(log_lo + (log_hi - log_lo) * _uniform(seeds, 11 + 4 * attempt))
            w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
            h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
            ok = ~found & (w > 0) & (h > 0) & (w <= hw[:, 1]) & (h <= hw[:, 0])
            out[ok, HEIGHT], out[ok, WIDTH] = h[ok], w[ok]
            out[ok, TOP] = _randint(seeds[ok], 12 + 4 * attempt, hw[ok, 0] - h[ok] + 1)
            out[ok, LEFT] = _randint(seeds[ok], 13 + 4 * attempt, hw[ok, 1] - w[ok] + 1)
            found |= ok
        # Fallback (as torchvision): the whole image, clipped to the allowed aspect ratios.
        rest = ~found
        in_ratio = width / height
        w = np.where(in_ratio < self.ratio[0], width, np.where(in_ratio > self.ratio[1], np.round(height * self.ratio[1]), width))
        h = np.where(in_ratio < self.ratio[0], np.round(width / self.ratio[0]), height)
        self._centre(out, rest, hw, h.astype(np.int64), w.astype(np.int64))
        # Clean view: resize the shorter side to eval_resize, centre-crop size; as a source box.
        side = np.round(np.minimum(height, width) * self.size / self.eval_resize).astype(np.int64)
        side = np.clip(side, 1, np.minimum(hw[:, 0], hw[:, 1]))
        self._centre(out, clean, hw, side, side)

    @staticmethod
    def _centre(out: np.ndarray, mask: np.ndarray, hw: np.ndarray, h: np.ndarray, w: np.ndarray) -> None:
        h, w = np.broadcast_to(h, mask.shape), np.broadcast_to(w, mask.shape)
        out[mask, HEIGHT], out[mask, WIDTH] = h[mask], w[mask]
        out[mask, TOP] = (hw[mask, 0] - h[mask]) // 2
        out[mask, LEFT] = (hw[mask, 1] - w[mask]) // 2

    # ------------------------------------------------------------------ apply
    def apply(self, images: Tensor, params: np.ndarray | Tensor) -> Tensor:
        """Apply the views to a batch of same-size uint8 images (B, C, H, W) on any device (resized
        crops are resampled on the CPU, by Pillow, and come back to the images' device)."""
        if images.dtype != torch.uint8:
            raise BadInput(f"views apply to uint8 images, got {images.dtype}")
        params = torch.as_tensor(np.asarray(params), dtype=torch.int64)
        if self.kind == "crop":
            out = _crop(images, params.to(images.device), self.padding, self.size)
        else:
            host = images.cpu()
            out = torch.stack([_resample_tensor(img, p, self.size) for img, p in zip(host, params.tolist())])
            out = out.to(images.device)
        out = _flip(out, params[:, FLIP].to(images.device))
        if not self.per_sample:
            return out
        return torch.stack([run_plan(img, plan, seed) for img, plan, seed in zip(out, self.plans(params), params[:, SEED].tolist())])

    def mix(self, seeds: np.ndarray, samples: np.ndarray, clean: np.ndarray, num_samples: int) -> Mix:
        """How each view is mixed (all unmixed without --mixup/--cutmix); views are size × size."""
        return mix_params(seeds, samples, clean, num_samples, (self.size, self.size), mixup=self.mixup,
                          cutmix=self.cutmix, prob=self.mixup_prob, switch_prob=self.mixup_switch_prob)

    def plans(self, params: np.ndarray | Tensor) -> list[Plan]:
        """The auto-augment / jitter / erasing ops of each view (none on the clean view), whose
        draws are hashed for the batch at once."""
        params = np.asarray(params, dtype=np.int64).reshape(-1, CLEAN + 1)
        plans: list[Plan] = [[] for _ in params]
        augmented = np.flatnonzero(params[:, CLEAN] == 0) if self.per_sample else []
        if len(augmented):
            drawn = plan_views(params[augmented, SEED], (self.size, self.size), self._aa, self.color_jitter, self.reprob)
            for j, plan in zip(augmented.tolist(), drawn):
                plans[j] = plan
        return plans

    def apply_each(self, images: Sequence[Tensor | Image], params: np.ndarray) -> Tensor:
        """Apply view j to uint8 image j (C, H, W) of any size, or to decoded Pillow images (a
        folder's, resampled as they are: no tensor of the whole image is made); used by loader
        workers. The views are stacked: (B, C, size, size)."""
        params = np.asarray(params, dtype=np.int64)
        if self.kind == "crop" or any(isinstance(image, Tensor) for image in images):
            return torch.cat([self.apply((im if isinstance(im, Tensor) else pil_to_tensor(im))[None], p[None])
                              for im, p in zip(images, params)])
        from PIL import Image as PILImage

        out = []
        for image, p, plan in zip(images, params.tolist(), self.plans(params)):
            view = _resized(image, p, self.size)
            pointwise, rest = split_pointwise(plan)  # the ops a Pillow image takes as fast, while it is one
            view = run_pointwise(view.transpose(PILImage.FLIP_LEFT_RIGHT) if p[FLIP] else view, pointwise)
            out.append(run_plan(pil_to_tensor(view), rest, p[SEED]))
        return torch.stack(out)


def _crop(images: Tensor, params: Tensor, pad: int, size: int) -> Tensor:
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    offs = torch.arange(size, device=images.device)
    rows = (params[:, TOP, None] + offs)[:, :, None]  # (B, size, 1)
    cols = (params[:, LEFT, None] + offs)[:, None, :]  # (B, 1, size)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _flip(images: Tensor, flip: Tensor) -> Tensor:
    return torch.where(flip.bool()[:, None, None, None], images.flip(-1), images)


def _resized(image: Image, p: Sequence[int], size: int) -> Image:
    """Crop the box ``p`` out of a Pillow image and resize it to size × size.

    Crop first, then resize, as torchvision's ``resized_crop`` does on Pillow images: the filter
    sees only the box's pixels. No ``reducing_gap``: one resampling pass, whatever the scale.
    """
    from PIL import Image as PILImage

    box = (p[LEFT], p[TOP], p[LEFT] + p[WIDTH], p[TOP] + p[HEIGHT])
    return image.crop(box).resize((size, size), PILImage.BILINEAR, reducing_gap=None)


def _resample(image: Image, p: Sequence[int], size: int) -> Tensor:
    """:func:`_resized` as a (C, size, size) uint8 tensor."""
    return pil_to_tensor(_resized(image, p, size))


def _resample_tensor(image: Tensor, p: Sequence[int], size: int) -> Tensor:
    """:func:`_resample` of a (C, H, W) uint8 CPU tensor: as one RGB image, or band by band."""
    from PIL import Image as PILImage

    if image.shape[0] == 3:
        return _resample(PILImage.fromarray(image.permute(1, 2, 0).numpy()), p, size)
    return torch.cat([_resample(PILImage.fromarray(band.numpy()), p, size) for band in image])


def pil_to_tensor(image: Image) -> Tensor:
    """A Pillow image as a (C, H, W) uint8 tensor."""
    array = np.array(image)  # a writable copy: torch refuses to share Pillow's read-only buffer
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() if array.ndim == 3 else torch.from_numpy(array)[None]


# --------------------------------------------------------------------------- normalise
@dataclass(frozen=True)
class Normalize:
    """Per-channel (x / 255 - mean) / std, applied on the training device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, images: Tensor) -> Tensor:
        key = images.device
        if key not in self._cache:
            self._cache[key] = (
                torch.tensor(self.mean, dtype=torch.float32, device=key).view(1, -1, 1, 1),
                torch.tensor(self.std, dtype=torch.float32, device=key).view(1, -1, 1, 1),
            )
        mean, std = self._cache[key]
        # In place on a copy (never the caller's tensor): the same three IEEE operations per pixel,
        # without two more batch-sized tensors.
        return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)
