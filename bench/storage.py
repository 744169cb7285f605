"""4. Storage: bytes per (view, sample) on disk for every encoding and dtype, with and without
compression, next to the raw size; codec settings for the compact encodings; top-k
reconstruction error.

Stores hold one view of synthetic teacher-like logits (``_common.SyntheticTeacher``: CIFAR-100
and ImageNet presets) written through ``ZarrStore.create`` + the encodings + ``write_block``.
*Bytes per view* counts the chunk files of every per-view array (``seeds``, the encoding's
fields); ``labels`` (per sample, shared by all views) and the metadata files are listed apart.
*Raw* is the same arrays uncompressed (seed included). Reconstruction error is
KL(p_T(full) ‖ p_T(rebuilt)) per sample, with p_T = softmax(z / T), after an encode → decode
round trip (the store round trip is exact; the tests prove it).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from logitcache.store.encodings import get_encoding
from logitcache.store.format import CodecInfo, EncodingInfo
from logitcache.store.reader import CacheReader

from ._common import Ctx, Section, SyntheticTeacher, describe_synthetic, fill_stores, fmt_rate, synthetic_spec, table

PUBLISHED_K10_C1000 = 44  # 4-byte seed + 10 int16 indices + 10 fp16 values
TARGET_K10 = 30
KS = (1, 5, 10, 20)


def chunk_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of the chunk (or shard) files of each array, metadata excluded."""
    root = Path(path)
    out: dict[str, int] = {}
    for f in root.glob("*/c/**/*"):
        if f.is_file():
            name = f.relative_to(root).parts[0]
            out[name] = out.get(name, 0) + f.stat().st_size
    return out


def metadata_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("zarr.json"))


def _encodings(classes: int) -> list[EncodingInfo]:
    full = [EncodingInfo(kind="full", dtype=d) for d in ("fp32", "fp16", "bf16")]
    topk = [EncodingInfo(kind="topk", dtype=d, k=k) for k in KS for d in ("fp16", "q8")]
    return (full if classes <= 100 else full[1:2]) + topk


def _per_view(path: str, n: int) -> tuple[float, dict[str, float]]:
    b = chunk_bytes(path)
    fields = {k: v / n for k, v in b.items() if k not in ("labels", "progress")}
    return sum(fields.values()), fields


def _sizes(ctx: Ctx, classes: int, n: int) -> tuple[list[list], dict]:
    synth = SyntheticTeacher(classes)
    labels = synth.labels(n)
    codecs = {"blosc-zstd-5 shuffle (default)": CodecInfo(), "none": CodecInfo(compressor="none")}
    rows, extra = [], {}
    for enc in _encodings(classes):
        targets = [(str(Path(ctx.workdir) / f"size-{classes}-{enc.describe().replace(' ', '-')}-{i}.zarr"),
                    synthetic_spec(num_samples=n, num_classes=classes, encoding=enc, views=1, clean=False, codec=c))
                   for i, c in enumerate(codecs.values())]
        fill_stores(targets, labels, synth)
        (comp, fields), (plain, _) = (_per_view(p, n) for p, _ in targets)
        raw = get_encoding(enc, classes).raw_bytes_per_sample() + 4
        rows.append([classes, enc.describe(), raw, f"{plain:.2f}", f"**{comp:.2f}**", f"{100 * comp / raw:.0f} %",
                     ", ".join(f"{k} {v:.2f}" for k, v in fields.items())])
        extra[enc.describe()] = comp
        if enc.describe() == "top-10 q8":
            extra["labels"] = chunk_bytes(targets[0][0]).get("labels", 0) / n
            extra["metadata"] = metadata_bytes(targets[0][0])
    return rows, extra


def _codec_sweep(ctx: Ctx, classes: int, enc: EncodingInfo, n: int) -> list[list]:
    synth = SyntheticTeacher(classes)
    labels = synth.labels(n)
    codecs = [CodecInfo(cname="zstd", clevel=lvl, shuffle=sh) for sh in ("shuffle", "bitshuffle", "noshuffle")
              for lvl in (1, 3, 5, 9)] + [CodecInfo(cname="lz4", clevel=5), CodecInfo(cname="lz4hc", clevel=9)]
    targets = [(str(Path(ctx.workdir) / f"sweep-{classes}-{enc.describe().replace(' ', '-')}-{i}.zarr"),
                synthetic_spec(num_samples=n, num_classes=classes, encoding=enc, views=1, clean=False, codec=c))
               for i, c in enumerate(codecs)]
    fill_stores(targets, labels, synth)
    rows = []
    for (path, _), c in zip(targets, codecs):
        total, fields = _per_view(path, n)
        reader = CacheReader(path, check=False)
        load = min(_time(lambda: reader._load(0)) for _ in range(3))
        reader.close()
        rows.append([c.describe().replace(" + crc32c", ""), f"**{total:.2f}**",
                     ", ".join(f"{k} {v:.2f}" for k, v in fields.items()), fmt_rate(n / load)])
    return rows


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _kl(z: torch.Tensor, rebuilt: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = torch.log_softmax(z.double() / temperature, dim=1)
    log_q = torch.log_softmax(rebuilt.double() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _fidelity(classes: int, n: int) -> list[list]:
    synth = SyntheticTeacher(classes)
    labels = synth.labels(n)
    z = synth.logits(labels, key=12345)
    y = torch.from_numpy(labels)
    rows = []
    for k in KS:
        kl = {}
        for dtype in ("fp16", "q8"):
            enc = get_encoding(EncodingInfo(kind="topk", dtype=dtype, k=k), classes)
            rebuilt = enc.decode(enc.encode(z, y), y).logits
            kl[dtype] = {t: _kl(z, rebuilt, t) for t in (1.0, 4.0)}
        cells = []
        for t in (1.0, 4.0):
            for name in ("fp16", "q8"):
                cells.append(f"{float(kl[name][t].mean()):.2e} / {float(kl[name][t].max()):.2e}")
            cells.append(f"{float((kl['q8'][t] - kl['fp16'][t]).mean()):+.1e}")
        rows.append([classes, k, *cells])
    return rows


def _entropy_bits(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _fp16_entropy(n: int) -> tuple[float, float]:
    """Order-0 entropy (bytes per sample) of full fp16 values of 100 classes as stored (gaps from
    the top logit): of the two byte planes separately (what byte shuffle + an entropy coder can
    reach) and of whole 16-bit values."""
    synth = SyntheticTeacher(100)
    labels = synth.labels(n)
    z = synth.logits(labels, key=99)
    bits = (z.max(dim=1, keepdim=True).values - z).half().numpy().view(np.uint16).ravel()
    planes = _entropy_bits(bits & 0xFF) + _entropy_bits(bits >> 8)
    return planes * 100 / 8, _entropy_bits(bits) * 100 / 8


def run(ctx: Ctx) -> Section:
    n = ctx.n(16_384, 4_096)
    size_rows, extras = [], {}
    for classes in (100, 1000):
        rows, extra = _sizes(ctx, classes, n)
        size_rows += rows
        extras[classes] = extra
    q8 = extras[1000]["top-10 q8"]
    fp16_100 = extras[100]["full fp16"]
    fp16_raw = get_encoding(EncodingInfo(kind="full", dtype="fp16"), 100).raw_bytes_per_sample()  # gaps + fp32 top
    sweep_q8 = _codec_sweep(ctx, 1000, EncodingInfo(kind="topk", dtype="q8", k=10), n)
    sweep_fp16 = _codec_sweep(ctx, 100, EncodingInfo(kind="full", dtype="fp16"), n)
    fid = _fidelity(100, ctx.n(20_000, 4_000)) + _fidelity(1000, ctx.n(20_000, 4_000))
    big = ctx.shared.get("imagenet_store_bytes")
    h_planes, h_values = _fp16_entropy(n)
    body = [
        "Synthetic teacher-like logits (`bench/_common.SyntheticTeacher`): per class a unit embedding drawn around "
        "one of C/5 (CIFAR preset) or C/20 (ImageNet preset) cluster centres; per sample a latent near its class's "
        "embedding, logits = similarity to every class + Gaussian noise (σ 1.5) + a per-sample true-class margin "
        "(N(9, 3) CIFAR, N(6, 3) ImageNet; negative draws make the teacher wrong) + a per-sample offset (σ 2). "
        "Resulting statistics — " + "; ".join(describe_synthetic(c) for c in (100, 1000)) + ".",
        f"{n:,} samples, one view, chunks of 4,096, crc32c on every chunk. Bytes per view = per-view arrays "
        "(seed + fields) only. `labels` adds "
        f"{extras[100]['labels']:.2f} B (100 classes) / {extras[1000]['labels']:.2f} B (1,000 classes) per *sample* "
        f"(divide by the number of views), and each store has ~{extras[1000]['metadata'] / 1000:.0f} kB of metadata.",
        table(["classes", "encoding", "raw B/view (incl. 4 B seed)", "uncompressed on disk", "compressed (default codec)",
               "compressed / raw", "compressed, per array"], size_rows),
        f"**Targets.** top-10 q8 at 1,000 classes: **{q8:.2f} B/view** (target ≤ {TARGET_K10} B; the published "
        f"cache: {PUBLISHED_K10_C1000} B) — {'met' if q8 <= TARGET_K10 else 'MISSED'}; with one view and its labels "
        f"{q8 + extras[1000]['labels']:.2f} B, with the usual clean + 8 views {q8 + extras[1000]['labels'] / 9:.2f} B. "
        f"Full fp16 at 100 classes: **{fp16_100:.1f} B/view** against {fp16_raw} B raw "
        f"({100 * fp16_100 / (fp16_raw + 4):.0f} % of raw incl. the seed). That is close to what lossless coding can "
        f"do with such values: the order-0 entropy of their two byte planes is {h_planes:.0f} B per sample and of the "
        f"whole 16-bit values {h_values:.0f} B — a gap from the top logit of up to ~20 nats with fp16's 11-bit "
        "precision carries ~12–13 bits. "
        f"Smaller full stores need fewer bits per logit: bf16 (8-bit mantissa) is "
        f"{extras[100]['full bf16']:.0f} B.",
        "Codec settings, top-10 q8, 1,000 classes (bytes per view; `view load` = decoding a whole view):",
        table(["codec", "B/view", "per array", "view load"], sweep_q8),
        "Codec settings, full fp16, 100 classes:",
        table(["codec", "B/view", "per array", "view load"], sweep_fp16),
        f"Top-k reconstruction error, KL(full ‖ rebuilt) in nats, mean / max over {ctx.n(20_000, 4_000):,} samples; "
        "`q8 − fp16` is the mean extra KL of the compact encoding over the fp16 top-k one (int16/uint8 indices "
        "and fp16 values, the fidelity of the published 44-byte scheme, plus our exact log-normaliser and "
        "true-class logit):",
        table(["classes", "k", "T=1 fp16", "T=1 q8", "T=1 q8 − fp16", "T=4 fp16", "T=4 q8", "T=4 q8 − fp16"], fid),
    ]
    if big:
        body.insert(3, f"Cross-check at full scale: the ImageNet-shaped stores of benchmark 3 (1,281,167 samples, "
                       f"sharded) take {big}.")
    ctx.shared["q8_k10_c1000"] = q8
    return Section("4. Storage", "\n\n".join(body))
