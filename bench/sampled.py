"""Sampled vs top-k vs full caches of one teacher at equal bytes per view (issue 12, RS-KD).

On the shipped digits: train a resnet20 teacher from labels; dump its logits as full fp16, and as
top-k fp16 and sampled with k and N chosen to match its bytes per view (and again at top-2's
bytes, where top-k leaves out more); train a resnet8 student with KD at T = 4 from each (the
sampled caches drawn at T = 4, as KD requires) over three seeds, and report test accuracy, NLL
and ECE (mean ± std). Then, with the student at its initialisation, the angle between the mean
mini-batch KD gradient (w.r.t. the student's parameters, over every stored view and batch) from
each cache and the full-logit one, and the median angle of single mini-batches.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.loader import ViewBatch, augmented_batches
from logitcache.methods import compute_loss, resolve_hparams
from logitcache.models import create_model
from logitcache.store.encodings import get_encoding
from logitcache.store.format import EncodingInfo
from logitcache.store.reader import CacheReader
from logitcache.train import TrainConfig, train
from logitcache.views import ViewSpec

from ._common import Ctx, Section, table

DATASET, TEACHER, STUDENT, TEMPERATURE, BATCH = "digits", "resnet20", "resnet8", 4.0, 64


def _bytes_per_view(info: EncodingInfo, classes: int) -> int:
    return get_encoding(info, classes).raw_bytes_per_sample() + 4  # + the uint32 view seed


def matched_encodings(classes: int) -> dict[str, EncodingInfo]:
    """Full fp16; at its bytes per view the largest top-k fp16 and sampled N that fit; and the same
    pair at top-2's bytes, where top-k leaves more of the distribution out."""
    full = EncodingInfo(kind="full", dtype="fp16")
    out = {"full fp16": full}
    for budget in (_bytes_per_view(full, classes), _bytes_per_view(EncodingInfo(kind="topk", dtype="fp16", k=2), classes)):
        k = max(k for k in range(1, classes)
                if _bytes_per_view(EncodingInfo(kind="topk", dtype="fp16", k=k), classes) <= budget)
        n = max(n for n in range(1, classes + 1) if _bytes_per_view(
            EncodingInfo(kind="sampled", dtype="fp32", samples=n, temperature=TEMPERATURE), classes) <= budget)
        out[f"top-{k} fp16"] = EncodingInfo(kind="topk", dtype="fp16", k=k)
        out[f"sampled N={n}, T={TEMPERATURE:g}"] = EncodingInfo(kind="sampled", dtype="fp32", samples=n,
                                                                temperature=TEMPERATURE)
    return out


def _dump_config(info: EncodingInfo, checkpoint: str, out: str, views: int, device: str) -> DumpConfig:
    extra = ({"encoding": "full", "dtype": info.dtype} if info.kind == "full"
             else {"encoding": "topk", "topk": info.k, "dtype": info.dtype} if info.kind == "topk"
             else {"encoding": "sampled", "samples": info.samples, "sample_temperature": info.temperature})
    return DumpConfig(teacher=TEACHER, checkpoint=checkpoint, dataset=DATASET, out=out, views=views,
                      chunk_samples=512, device=device, progress=False, **extra)


def _gradient(model: torch.nn.Module, images: torch.Tensor, view, target: torch.Tensor, hparams: dict) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    compute_loss("kd", model(images), view, target, epoch=1, hparams=hparams)["kd"].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float((a @ b) / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def gradient_angles(caches: dict[str, str], device: torch.device) -> dict[str, tuple[float, float]]:
    """name -> (angle of the mean mini-batch KD gradient to the full one, median per-batch angle), degrees."""
    readers = {name: CacheReader(path) for name, path in caches.items()}
    spec = next(iter(readers.values())).spec
    dataset = open_dataset(DATASET, "train")
    torch.manual_seed(0)
    model = create_model(STUDENT, num_classes=dataset.num_classes).to(device).eval()  # BN fixed: same model every batch
    hparams = resolve_hparams("kd", overrides={"temperature": TEMPERATURE, "ce_weight": 0.0, "kd_weight": 1.0})
    view_spec = ViewSpec.from_json(spec.views.augmentation)
    sums = {name: 0.0 for name in readers}
    per_batch: dict[str, list[float]] = {name: [] for name in readers if name != "full fp16"}
    n = spec.dataset.num_samples
    batches = []
    for v in range(spec.views.total):
        seeds = readers["full fp16"].seeds(v)
        for s in range(0, n, BATCH):
            idx = np.arange(s, min(s + BATCH, n))
            batches.append((v, ViewBatch(samples=idx, seeds=seeds[idx], clean=np.full(len(idx), spec.views.clean and v == 0))))
    stream = augmented_batches(dataset, view_spec, [b for _, b in batches], device=device)
    for (v, batch), (_, images) in zip(batches, stream):
        target = torch.from_numpy(dataset.labels[batch.samples]).long().to(device)
        grads = {name: _gradient(model, images, r.read(np.full(len(batch), v), batch.samples).to(device), target, hparams)
                 for name, r in readers.items()}
        for name, g in grads.items():
            sums[name] = sums[name] + g
            if name in per_batch:
                per_batch[name].append(_angle(g, grads["full fp16"]))
    for r in readers.values():
        r.close()
    return {name: (_angle(sums[name], sums["full fp16"]), statistics.median(per_batch[name]) if name in per_batch else 0.0)
            for name in readers}


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def run(ctx: Ctx) -> Section:
    ctx.quiet()
    device = str(ctx.device)
    teacher_epochs, student_epochs, views = ctx.n(15, 2), ctx.n(10, 1), ctx.n(4, 1)
    seeds = [0, 1, 2] if not ctx.quick else [0, 1]
    root = ctx.workdir / "sampled"
    teacher = train(TrainConfig(method="ce", student=TEACHER, dataset=DATASET, epochs=teacher_epochs, device=device,
                                out=str(root / "teacher"), progress=False))
    checkpoint = str(root / "teacher" / "best.pt")
    classes = open_dataset(DATASET, "test").num_classes
    encodings = matched_encodings(classes)
    caches, rows = {}, []
    for name, info in encodings.items():
        out = str(root / f"{info.slug()}.zarr")
        dumped = dump(_dump_config(info, checkpoint, out, views, device))
        caches[name] = out
        on_disk = CacheReader(out)
        pairs = on_disk.spec.views.total * on_disk.spec.dataset.num_samples
        disk = on_disk.store.nbytes_stored() / pairs
        on_disk.close()
        results = []
        for seed in seeds:
            run_out = root / f"{info.slug()}-s{seed}"
            train(TrainConfig(method="kd", student=STUDENT, dataset=DATASET, cache=out, epochs=student_epochs, seed=seed,
                              overrides=(f"temperature={TEMPERATURE:g}",), device=device, out=str(run_out), progress=False))
            last = json.loads((run_out / "metrics.jsonl").read_text().splitlines()[-1])
            results.append((last["test_top1"], last["test_nll"], 100 * last["test_ece"]))
        rows.append([name, _bytes_per_view(info, classes), f"{disk:.1f}",
                     _mean_std([r[0] for r in results]), _mean_std([r[1] for r in results]),
                     _mean_std([r[2] for r in results])])
        del dumped
    angles = gradient_angles(caches, torch.device(device))
    for row in rows:
        mean_angle, batch_angle = angles[row[0]]
        row += [f"{mean_angle:.1f}°", "—" if row[0] == "full fp16" else f"{batch_angle:.1f}°"]
    body = [
        f"Teacher {TEACHER} trained from labels on {DATASET} ({teacher_epochs} epochs, test accuracy "
        f"{teacher.best_acc:.2f} %); each cache stores the clean view + {views} augmented views of the 1,438 "
        f"training images. Student {STUDENT}, KD (ce 0.1, kd 0.9, T = {TEMPERATURE:g}), {student_epochs} epochs, "
        f"seeds {', '.join(map(str, seeds))}: test accuracy, NLL and ECE (15 bins, %) of the last epoch, mean ± std. "
        "Raw B/view = the per-view arrays (fields + the 4-byte seed): k and N are the largest whose bytes fit in "
        "full fp16's and in top-2's; on disk = compressed "
        "store size / (view, sample) pairs, labels and metadata included. Gradient angles: the student at its "
        f"initialisation (eval-mode BatchNorm), KD term alone, gradient w.r.t. every parameter; 'mean' sums the "
        "mini-batch gradients over every stored view and batch of 64 and compares with full fp16's sum, "
        "'per batch' is the median angle of single mini-batches.",
        table(["cache", "raw B/view", "on disk B/view", "test acc %", "test NLL", "test ECE %",
               "angle of mean KD gradient", "per-batch angle"], rows),
        "Language-model path (validation perplexity and ECE on shipped text): not measured — logitcache has no "
        "language-model path and ships no text yet.",
    ]
    return Section(title="8. Sampled vs top-k vs full at equal bytes (digits)", body="\n\n".join(body))
