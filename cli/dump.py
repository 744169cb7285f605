"""``logitcache dump``: run a teacher over seeded views of a dataset into a zarr cache."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache._utils import plural
from logitcache.distributed import torchrun_rank
from logitcache.dump import AUTO_FULL_MAX_CLASSES, DEFAULT_TOPK, DumpConfig, dump
from logitcache.errors import BadInput
from logitcache.precision import Compute

from ._options import (
    AaOpt,
    ChannelsLastOpt,
    CheckpointOpt,
    ColorJitterOpt,
    CutmixOpt,
    DataRootOpt,
    DeviceOpt,
    MeanOpt,
    MixupOpt,
    MixupProbOpt,
    MixupSwitchProbOpt,
    PrecisionOpt,
    QuietOpt,
    RandomInitOpt,
    ReprobOpt,
    SeqLenOpt,
    StdOpt,
    channel_values,
    strong_augmentation,
)


def _resolve_shard(text: str | None) -> tuple[int, int]:
    """--shard I/N; under torchrun each process writes the shard of its rank."""
    if text is None:
        ranks = torchrun_rank()
        return (0, 1) if ranks is None else (ranks[0], ranks[1])
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BadInput(f"cannot read --shard {text!r}: use I/N, e.g. 0/4") from None
    return i, n


def dump_command(
    teacher: Annotated[str, typer.Option(help="Teacher model name (`logitcache models`), tv:<torchvision name>, timm:<timm name>[.<tag>] (`logitcache models --timm`) or hf:DIR (a causal LM folder).")],
    dataset: Annotated[str, typer.Option(help="cifar10, cifar100, digits, imagefolder:<path>, synthetic[:n=..,classes=..] or text:PATH (with an hf: teacher and --seq-len).")],
    out: Annotated[str | None, typer.Option(help="Store to write: a path or an fsspec URL (s3://bucket/c.zarr) [default: a content-addressed name in LOGITCACHE_HOME].")] = None,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    data_root: DataRootOpt = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download CIFAR into --data-root.")] = False,
    split: Annotated[str, typer.Option(help="Dataset split to cache.")] = "train",
    views: Annotated[int | None, typer.Option(help="Number of augmented views per sample [default: 8; text has only its clean view].")] = None,
    seq_len: SeqLenOpt = None,
    clean_view: Annotated[bool, typer.Option(help="Also store view 0: the clean, unaugmented image.")] = True,
    augment: Annotated[
        str | None, typer.Option(help="Augmentation: crop:SIZE:PAD[:noflip] or resized_crop:SIZE[:MIN-MAX][:noflip]. Default: the dataset's.")
    ] = None,
    aa: AaOpt = None,
    color_jitter: ColorJitterOpt = 0.0,
    reprob: ReprobOpt = 0.0,
    mixup: MixupOpt = 0.0,
    cutmix: CutmixOpt = 0.0,
    mixup_prob: MixupProbOpt = 1.0,
    mixup_switch_prob: MixupSwitchProbOpt = 0.5,
    topk: Annotated[int | None, typer.Option(help="Store the top-k logits (+ log-normaliser and true-class logit). Default: all logits up to 32 classes, the top 10 above.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Store all logits (the default up to 32 classes).")] = False,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16; top-k also q8 (8-bit gaps, the compact form). [default: fp16]")] = None,
    sample: Annotated[int | None, typer.Option(help="Store N classes drawn from the teacher's softmax (an unbiased target at top-k's size) instead of logits.")] = None,
    sample_temperature: Annotated[float | None, typer.Option(help="Temperature of the softmax --sample draws from; KD must train at the same T. [default: 1]")] = None,
    codec: Annotated[str, typer.Option(help="none or blosc-CNAME[-LEVEL[-SHUFFLE]].")] = "blosc-zstd-5",
    checksum: Annotated[bool, typer.Option(help="crc32c checksum on every chunk.")] = True,
    chunk_samples: Annotated[int | None, typer.Option(help="Samples (rows: token positions for text) per chunk [default: 4096; for text whole sequences near it].")] = None,
    shard_chunks: Annotated[int | None, typer.Option(help="Chunks per zarr shard (0: unsharded). Default: 16 for large datasets.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of every view's augmentation.")] = 0,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = False,
    batch_size: Annotated[int, typer.Option(help="Teacher forward batch size (images, or sequences for text).")] = 256,
    workers: Annotated[int, typer.Option(help="Loader processes for image folders.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store made with other settings.")] = False,
    shard: Annotated[str | None, typer.Option(help="Write only part I of N of the store (e.g. Slurm arrays): I/N. Under torchrun: RANK/WORLD_SIZE.")] = None,
    finalize: Annotated[bool, typer.Option("--finalize", help="Only check that every shard's blocks are written and mark the store complete.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the teacher once over V seeded views of every sample and store its logits.

    The same command after an interruption resumes where it stopped; the finished store equals
    an uninterrupted one. A store made with other settings is refused unless --overwrite.
    """
    if full and topk is not None:
        raise BadInput(f"--full stores every logit and --topk {topk} the top {topk}: pass one of them")
    if full and sample is not None:
        raise BadInput("--sample and --full exclude each other: choose one encoding")
    if sample is None and sample_temperature is not None:
        raise BadInput("--sample-temperature only applies to --sample N: add --sample, or drop it")
    encoding = "sampled" if sample is not None else "full" if full else "auto" if topk is None else "topk"
    sampling = {} if sample is None else {"samples": sample, "sample_temperature": 1.0 if sample_temperature is None else sample_temperature}
    config = DumpConfig(
        teacher=teacher, dataset=dataset, out=out, checkpoint=checkpoint, random_init=random_init,
        data_root=data_root, download=download, split=split, views=views, seq_len=seq_len, clean_view=clean_view,
        augmentation=augment, encoding=encoding,
        mean=channel_values(mean, "--mean"), std=channel_values(std, "--std"),
        strong=strong_augmentation(aa, color_jitter, reprob, mixup, cutmix, mixup_prob, mixup_switch_prob), topk=topk, dtype=dtype, **sampling, codec=codec,
        checksum=checksum, chunk_samples=chunk_samples, shard_chunks=shard_chunks, seed=seed, device=device,
        precision=precision, channels_last=channels_last, batch_size=batch_size, workers=workers, overwrite=overwrite, shard=_resolve_shard(shard), finalize_only=finalize,
        progress=not quiet,
    )
    result = dump(config)
    chosen = result.spec.encoding
    if precision != "fp32" or channels_last:
        typer.echo(f"teacher forward: {Compute(precision=result.spec.precision, channels_last=result.spec.channels_last).describe()} "
                   f"(logits stored as {chosen.describe()})")
    typer.echo(f"encoding: {chosen.describe()}" + (
        f" (auto for {result.spec.dataset.num_classes} classes: all logits up to {AUTO_FULL_MAX_CLASSES}, the top "
        f"{DEFAULT_TOPK} above; --full or --topk K to choose)" if encoding == "auto" else ""))
    for note in result.notes:
        typer.echo(note)
    text = bool(result.spec.dataset.seq_len)  # a text store's rows are tokens
    unit, accuracy = ("token", "next-token accuracy") if text else ("sample-view", "accuracy")
    rate = f"{result.samples_per_second:,.0f} {unit}s/s" if result.samples_written else "nothing left to write"
    typer.echo(f"wrote {plural(result.blocks_written, 'block')} ({plural(result.samples_written, unit)}) "
               f"in {result.seconds:.1f} s: {rate}")
    if result.complete:
        acc = result.teacher_test_accuracy
        typer.echo(f"complete: {result.location}" + (f" (teacher test {accuracy} {acc:.2f}%)" if acc is not None else ""))
    else:
        typer.echo(f"not complete yet: {result.location} (other shards still writing; the last to finish completes it, "
                   "or re-run this command once they are all done)")


def register(app: typer.Typer) -> None:
    app.command("dump")(dump_command)
