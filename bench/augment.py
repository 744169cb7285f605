"""7. Strong augmentation: what mixed views cost on disk, and the folder pipeline's speed with
RandAugment + random erasing against torchvision's with the same ops.

Bytes: the same dump (synthetic 32×32, 100 classes, top-10 bf16, resnet8 teacher at random init)
made with crop + flip only and with ``--aa rand-m9-mstd0.5-inc1 --reprob 0.25 --mixup 0.8
--cutmix 1.0``; the partner, λ and box of a mixed view are derived from its seed, so the store
holds the same arrays and the seed stays the only per-view cost.

Speed: an image folder of JPEGs (ImageNet-like sizes), decoded with Pillow in both pipelines,
one process, no workers: logitcache's loader (``augmented_batches``: decode, resized crop 224 +
flip, the seeded integer ops of ``rand-m9-mstd0.5-inc1`` and erasing 0.25, normalise) against
torchvision's ImageFolder + RandomResizedCrop(224) + flip + ToTensor + Normalize, without strong
ops, with torchvision's RandAugment(2, 9) + RandomErasing(0.25) (its two ops on every image, warps
with nearest sampling), and with timm's ops of the very policy (``rand_augment_transform`` and
RandomErasing in pixel mode, as timm's ``create_transform`` builds them: one op per image on
average, warps bilinear or bicubic), interleaved and repeated.
"""

from __future__ import annotations

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.info import cache_info
from logitcache.loader import ViewBatch, augmented_batches
from logitcache.views import ViewSpec, view_seeds

from ._common import Ctx, Section, jpeg_folder, median, spread, table, timed

STRONG = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0}
TARGET_BYTES = 4.0  # per view above crop + flip
TARGET_SPEED = 1.0  # logitcache / torchvision images/s, both with RandAugment + erasing


def _bytes(ctx: Ctx) -> list[list[str]]:
    n = ctx.n(4096, 512)
    rows, per = [], {}
    for name, strong in (("crop + flip", {}), ("+ aa, reprob, mixup, cutmix", STRONG)):
        out = ctx.workdir / f"augment-{len(per)}.zarr"
        dump(DumpConfig(teacher="resnet8", dataset=f"synthetic:n={n},classes=100,size=32", out=str(out), random_init=True,
                        views=2, encoding="topk", topk=10, dtype="bf16", chunk_samples=1024, device="cpu", workers=0,
                        progress=False, overwrite=True, strong=strong))
        info = cache_info(str(out), stats=False)
        per[name] = info.bytes_per_pair
        arrays = sorted(_arrays(out))
        rows.append([name, f"{info.bytes_per_pair:.2f} B", f"{info.raw_bytes / info.pairs:.2f} B", ", ".join(arrays)])
    extra = per["+ aa, reprob, mixup, cutmix"] - per["crop + flip"]
    rows.append(["difference", f"{extra:+.2f} B", "", "met" if extra <= TARGET_BYTES else "MISSED"])
    return rows


def _arrays(path) -> list[str]:
    return [p.parent.name for p in path.glob("*/zarr.json")]


def _ours(dataset, spec: ViewSpec, n: int) -> float:
    seeds = view_seeds(0, 1, np.arange(n))
    batches = [ViewBatch(samples=np.arange(s, min(s + 16, n)), seeds=seeds[s : s + 16], clean=np.zeros(min(16, n - s), bool))
               for s in range(0, n, 16)]
    return timed(lambda: [x for _, x in augmented_batches(dataset, spec, batches, device=torch.device("cpu"))])


def _torchvision(root, strong: str, n: int) -> float:
    """torchvision's ImageFolder pipeline, plain (``strong=""``), with its own RandAugment(2, 9) and
    RandomErasing (``"torchvision"``), or with timm's ops of our very policy (``"timm"``)."""
    from torchvision import datasets, transforms

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ops = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    if strong == "torchvision":
        ops += [transforms.RandAugment(num_ops=2, magnitude=9)]
    elif strong == "timm":  # as timm's create_transform builds it
        from timm.data import auto_augment
        from timm.data.auto_augment import rand_augment_transform

        auto_augment.NAME_TO_OP["PosterizeIncreasing"] = _posterize  # timm's raises on Pillow >= 10 at m = 10

        ops += [rand_augment_transform(STRONG["aa"], {"translate_const": int(224 * 0.45),
                                                      "img_mean": tuple(round(255 * m) for m in mean)})]
    ops += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if strong == "torchvision":
        ops += [transforms.RandomErasing(p=STRONG["reprob"])]
    elif strong == "timm":
        from timm.data.random_erasing import RandomErasing

        ops += [RandomErasing(STRONG["reprob"], mode="pixel", device="cpu")]
    data = datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(ops))
    loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=0)
    return timed(lambda: [x for x, _ in loader])


def _posterize(img, bits_to_keep: int, **_):
    """timm's posterize, keeping no bit as Pillow 9 did (all black; ours too): at m = 10 timm's
    PosterizeIncreasing asks for 0 bits, which Pillow 10 and later refuse with a ValueError."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep) if bits_to_keep >= 1 else img.point(lambda _: 0)


COMPARED = {"torchvision": "torchvision's RandAugment(2, 9) + RandomErasing", "timm": "timm's ops, the same policy"}


def _speed(ctx: Ctx) -> tuple[list[list[str]], dict[str, float], dict[str, float]]:
    n, repeats = ctx.n(96, 16), ctx.n(15, 1)
    root = jpeg_folder(ctx.workdir / "augment-folder" / "train", [(500, 333), (375, 500)], n).parent
    dataset = open_dataset(f"imagefolder:{root}", "train")
    plain = ViewSpec(kind="resized_crop", size=224)
    strong = ViewSpec(kind="resized_crop", size=224, aa=STRONG["aa"], reprob=STRONG["reprob"])
    plain_runs: dict[str, list[float]] = {"logitcache": [], "torchvision": []}
    strong_runs: dict[str, list[float]] = {"logitcache": [], **{name: [] for name in COMPARED}}
    for _ in range(repeats):
        ctx.quiet()
        plain_runs["logitcache"].append(n / _ours(dataset, plain, n))
        strong_runs["logitcache"].append(n / _ours(dataset, strong, n))
        plain_runs["torchvision"].append(n / _torchvision(root, "", n))
        for name in COMPARED:
            strong_runs[name].append(n / _torchvision(root, name, n))
    base = {"logitcache": median(plain_runs["logitcache"]), **{name: median(plain_runs["torchvision"]) for name in COMPARED}}
    rows = []
    for name, s in strong_runs.items():
        p = plain_runs["logitcache" if name == "logitcache" else "torchvision"]
        label = "logitcache" if name == "logitcache" else f"torchvision, {COMPARED[name]}"
        rows.append([label, f"{median(p):.1f} /s ({spread(p):.0f} %)", f"{median(s):.1f} /s ({spread(s):.0f} %)",
                     f"{median(s) / base[name]:.3f}"])
    ours = median(strong_runs["logitcache"])
    ratio = {name: ours / median(strong_runs[name]) for name in COMPARED}
    kept = {name: median(s) / base[name] for name, s in strong_runs.items()}
    return rows, ratio, kept


def _ops(ctx: Ctx) -> list[list[str]]:
    """Each op on one 224-px RGB view (median of interleaved repeats), against Pillow's op where
    Pillow has one (timm's ops call them; torchvision's RandAugment calls its tensor or Pillow
    kernels, its geometric ops with nearest sampling by default)."""
    from PIL import Image, ImageEnhance, ImageOps

    from logitcache.augment import _affine, _rotate, run_plan

    view = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8))
    pil = Image.fromarray(view.permute(1, 2, 0).numpy())
    grey, box = (128, 128, 128), (1.0, 0.3, 0.0, 0.0, 1.0, 0.0)
    shift = (1.0, 0.0, 45.3, 0.0, 1.0, 0.0)
    cases = [  # (op, our plan, Pillow's)
        ("rotate 20°", [_rotate(20.0)], lambda: pil.rotate(20, Image.BILINEAR, fillcolor=grey)),
        ("shear x 0.3", [("affine", _affine(1, 0.3, 0, 1))], lambda: pil.transform(pil.size, Image.AFFINE, box, Image.BILINEAR, fillcolor=grey)),
        ("translate 45.3 px", [("affine", _affine(1, 0, 0, 1, tx=45.3))], lambda: pil.transform(pil.size, Image.AFFINE, shift, Image.BILINEAR, fillcolor=grey)),
        ("color 1.5", [("color", (384,))], lambda: ImageEnhance.Color(pil).enhance(1.5)),
        ("contrast 1.5", [("contrast", (384,))], lambda: ImageEnhance.Contrast(pil).enhance(1.5)),
        ("brightness 1.5", [("brightness", (384,))], lambda: ImageEnhance.Brightness(pil).enhance(1.5)),
        ("sharpness 1.5", [("sharpness", (384,))], lambda: ImageEnhance.Sharpness(pil).enhance(1.5)),
        ("equalize", [("equalize", ())], lambda: ImageOps.equalize(pil)),
        ("autocontrast", [("autocontrast", ())], lambda: ImageOps.autocontrast(pil)),
        ("solarize 128", [("solarize", (128,))], lambda: ImageOps.solarize(pil, 128)),
        ("posterize 4", [("posterize", (4,))], lambda: ImageOps.posterize(pil, 4)),
        ("erase 90×100", [("erase", (10, 20, 90, 100))], None),
    ]
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in cases}
    for _ in range(ctx.n(7, 1)):
        ctx.quiet()
        for name, plan, theirs in cases:
            runs[name][0].append(timed(lambda: [run_plan(view, plan, 0) for _ in range(20)]) / 20)
            if theirs is not None:
                runs[name][1].append(timed(lambda: [theirs() for _ in range(20)]) / 20)
    rows = []
    for name, (ours, theirs) in runs.items():
        rows.append([name, f"{1e3 * median(ours):.3f} ms", f"{1e3 * median(theirs):.3f} ms" if theirs else "",
                     f"{median(ours) / median(theirs):.2f}" if theirs else ""])
    return rows


def run(ctx: Ctx) -> Section:
    bytes_rows = _bytes(ctx)
    op_rows = _ops(ctx)
    speed_rows, ratio, kept = _speed(ctx)
    verdicts = []
    for name, text in COMPARED.items():
        met = "met" if ratio[name] >= TARGET_SPEED else "MISSED"
        drop = "met" if kept["logitcache"] >= kept[name] else "MISSED"
        verdicts.append(f"Against {text}: logitcache / torchvision with the strong ops **{ratio[name]:.3f}** (target ≥ "
                        f"{TARGET_SPEED:g}: {met}); speed kept when the ops are added, logitcache "
                        f"**{kept['logitcache']:.3f}** vs {kept[name]:.3f} (target: no more lost: {drop}).")
    body = "\n\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        table(["views", "bytes per sample-view on disk", "raw", "arrays"], bytes_rows),
        f"Target: ≤ {TARGET_BYTES:g} B per view above crop + flip (the seed is the only per-view cost).",
        table(["pipeline", "images/s, crop + flip", "images/s, + RandAugment + erasing", "strong / plain"], speed_rows),
        *verdicts,
        "One op on one 224-px RGB view, one thread (ours: bit-exact integer definitions, on the uint8 "
        "tensor; Pillow's: on its image, bilinear for the geometric ops as timm asks):",
        table(["op", "logitcache", "Pillow", "ratio"], op_rows),
    ])
    return Section(title="7. Strong augmentation", body=body)
