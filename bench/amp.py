"""11. Mixed precision and channels-last: dump and training rates under ``--precision fp32|bf16|fp16``
and ``--channels-last`` on and off, each as a ratio to fp32 contiguous in the same run.

Both are the library calls a user makes: ``dump(DumpConfig(...))`` (its stage-one loop rate,
``DumpResult.samples_per_second``: augmentation, teacher forward, encoding, writes) and
``train(TrainConfig(...))`` from the cache that fp32 dump made (the epoch's ``samples_per_second``
of ``metrics.jsonl``: replay, cache read, student forward and backward, optimizer step; not the
evaluation). The six settings alternate within each repeat, so that load on a shared machine
falls on all of them alike. On CUDA the models and sizes are larger (a GPU idles on CIFAR
``resnet8``); on a CPU they are tiny, and fp16 there is measured to show what it costs, not to
recommend it (CPUs have no fp16 matrix units; bf16 runs on AVX-512-BF16/AMX where present).

    .venv/bin/python -m bench --only amp --device cuda      # where a GPU is
    .venv/bin/python -m bench.amp --device cpu              # this section alone, printed
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from logitcache.dump import DumpConfig, dump
from logitcache.train import TrainConfig, train

from ._common import Ctx, Section, median, spread, table

SETTINGS = [(p, cl) for cl in (False, True) for p in ("fp32", "bf16", "fp16")]


def _sizes(ctx: Ctx) -> dict:
    if ctx.device.type == "cuda":
        # Random-init weights: resnet32x4's logits stay near 50 (resnet110's reach 1e8, beyond fp16).
        return dict(n=ctx.n(16384, 2048), teacher="resnet32x4", student="resnet8x4", dump_batch=512, train_batch=256)
    # fp16 trains at a few samples/s on a CPU: 128 samples keep its six epochs to minutes.
    return dict(n=ctx.n(128, 64), teacher="resnet20", student="resnet8", dump_batch=64, train_batch=32)


def _supported(precision: str, device: torch.device) -> bool:
    from logitcache.errors import BadInput
    from logitcache.precision import Compute

    try:
        Compute.on(device, precision)
    except BadInput:
        return False
    return True


def run(ctx: Ctx) -> Section:
    size, repeats = _sizes(ctx), ctx.n(3, 1)  # the median of 3 also drops each setting's cold first run
    dataset = f"synthetic:n={size['n']},classes=100,size=32,seed=0"
    base = DumpConfig(teacher=size["teacher"], dataset=dataset, out="", random_init=True, views=1, encoding="topk",
                      topk=10, dtype="bf16", chunk_samples=1024, device=str(ctx.device), batch_size=size["dump_batch"],
                      workers=0, progress=False)
    work = Path(ctx.workdir) / "amp"
    cache = work / "cache.zarr"
    dump(replace(base, out=str(cache)))  # the cache every training run reads; also the warm-up
    settings = [s for s in SETTINGS if _supported(s[0], ctx.device)]
    rates: dict[tuple[str, bool], dict[str, list[float]]] = {s: {"dump": [], "train": []} for s in settings}
    for r in range(repeats):
        for precision, channels_last in settings:
            ctx.quiet()
            out = work / f"dump-{precision}-{channels_last}-{r}.zarr"
            result = dump(replace(base, out=str(out), precision=precision, channels_last=channels_last))
            rates[(precision, channels_last)]["dump"].append(result.samples_per_second)
            shutil.rmtree(out, ignore_errors=True)
            ctx.quiet()
            run_dir = work / f"train-{precision}-{channels_last}-{r}"
            train(TrainConfig(student=size["student"], dataset=dataset, out=str(run_dir), method="kd", cache=str(cache),
                              epochs=1, batch_size=size["train_batch"], device=str(ctx.device), workers=0,
                              progress=False, precision=precision, channels_last=channels_last))
            epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
            rates[(precision, channels_last)]["train"].append(epoch["samples_per_second"])
            shutil.rmtree(run_dir, ignore_errors=True)
    ref = rates[("fp32", False)]
    rows = []
    for (precision, channels_last), got in rates.items():
        row = [precision, "on" if channels_last else "off"]
        for stage in ("dump", "train"):
            rate = median(got[stage])
            row += [f"{rate:,.0f}", f"{rate / median(ref[stage]):.2f}", f"{spread(got[stage]):.0f} %"]
        rows.append(row)
    skipped = [f"{p}{' channels-last' if cl else ''}" for p, cl in SETTINGS if (p, cl) not in rates]
    label = "CPU" if ctx.device.type == "cpu" else torch.cuda.get_device_name(ctx.device)
    body = [
        f"**{label}** ({ctx.device}, {torch.get_num_threads()} torch threads). Dump: teacher {size['teacher']} "
        f"(random init), `{dataset}`, clean view + 1 augmented view, top-10 bf16, batch {size['dump_batch']}. "
        f"Train: student {size['student']}, kd from that cache, 1 epoch, batch {size['train_batch']}. "
        f"{repeats} alternating repeats; rates in samples/s, ratio to fp32 channels-last off."
        + (f" Not supported on this device, left out: {', '.join(skipped)}." if skipped else ""),
        table(["precision", "channels-last", "dump samples/s", "dump ×", "spread", "train samples/s", "train ×",
               "spread"], rows),
    ]
    return Section("11. Mixed precision and channels-last", "\n\n".join(body))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.amp", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (a GPU where there is one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat")
    args = parser.parse_args(argv)
    from logitcache._utils import resolve_device

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="logitcache-bench-amp-") as work:
        section = run(Ctx(quick=args.quick, workdir=Path(work), device=resolve_device(args.device)))
    print(f"## {section.title}\n\n{section.body}")


if __name__ == "__main__":
    main()
