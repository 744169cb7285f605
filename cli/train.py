"""``logitcache train``: train a student from a cache, a live teacher, or labels only."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.distributed import distributed_context
from logitcache.errors import BadInput
from logitcache.train import TrainConfig, train

from ._config import load_config, merge_set
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
    ReprobOpt,
    SeqLenOpt,
    StdOpt,
    channel_values,
    strong_augmentation,
)


def train_command(
    student: Annotated[str, typer.Option(help="Student model name (`logitcache models`), tv:<name>, timm:<name>[.<tag>] or hf:DIR (a causal LM folder; config-only: random init).")],
    dataset: Annotated[str, typer.Option(help="Dataset the student trains on (must match the cache).")],
    out: Annotated[str, typer.Option(help="Run folder: config.json, metrics.jsonl, last.pt, best.pt, summary.json.")],
    method: Annotated[str, typer.Option(help="KD method (`logitcache methods`); ce trains without a teacher.")] = "kd",
    cache: Annotated[str | None, typer.Option(help="Teacher-logit cache made by `logitcache dump` [default: the matching cache in LOGITCACHE_HOME].")] = None,
    teacher_online: Annotated[bool, typer.Option(help="Run the teacher live on the same replayed views instead of reading the cache.")] = False,
    teacher: Annotated[str | None, typer.Option(help="Teacher model (for --teacher-online and presets); default: the cache's.")] = None,
    checkpoint: CheckpointOpt = None,
    random_init_teacher: Annotated[bool, typer.Option(help="Online teacher with seeded random weights (tests only).")] = False,
    data_root: DataRootOpt = None,
    preset: Annotated[str | None, typer.Option(help="Hyper-parameter preset: auto (the published one for this teacher-student pair, if any), a preset name, or none.")] = "auto",
    force_preset: Annotated[bool, typer.Option(help="Apply a --preset TEACHER-STUDENT to a run of other models (refused otherwise).")] = False,
    logit_stand: Annotated[bool, typer.Option(help="Logit standardization (Sun et al. 2024) with its published weights.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Hyper-parameter override KEY=VALUE (repeatable); `logitcache methods` lists them.", callback=merge_set)] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 240,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 64,
    opt: Annotated[str, typer.Option(help="Optimiser: sgd (momentum), adamw (betas 0.9, 0.999), or auto: adamw for hf: students (transformers), sgd for the others (the mdistiller recipe).")] = "auto",
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: SGD 0.05, 0.01 for MobileNetV2/ShuffleNet; AdamW 1e-3].")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum (refused with adamw) [default: 0.9].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay of either optimiser (AdamW's decoupled) [default: SGD 5e-4; AdamW 0.01].")] = None,
    clip_grad: Annotated[float | None, typer.Option(help="Clip the global gradient norm to this each step (after fp16's unscaling) [default: no clipping].")] = None,
    milestones: Annotated[str | None, typer.Option(help="Comma-separated epochs where lr is multiplied by --lr-decay [default: 62.5/75/87.5 % of --epochs].")] = None,
    lr_decay: Annotated[float, typer.Option(help="Learning-rate factor at each milestone.")] = 0.1,
    val_fraction: Annotated[float, typer.Option(help="Hold out this share of the training images (seeded by --seed, never trained on) and pick best.pt by accuracy on it [default: 0, best.pt by test accuracy].")] = 0.0,
    label_fraction: Annotated[float, typer.Option(help="Keep the labels of only this seeded share of the training images (by --seed); KD methods train on every image, with the teacher's targets and no CE term where the label is missing, ce on the labelled ones only (docs/methods.md) [default: 1, every label].")] = 1.0,
    view_policy: Annotated[str, typer.Option(help="cycle (view e mod V in epoch e) or random (seeded random view per sample and epoch).")] = "cycle",
    views: Annotated[int | None, typer.Option(help="Without a cache: views to derive [default: one per epoch].")] = None,
    seq_len: SeqLenOpt = None,
    view_seed: Annotated[int, typer.Option(help="Without a cache: the seed views derive from (as dump --seed).")] = 0,
    aa: AaOpt = None,
    color_jitter: ColorJitterOpt = 0.0,
    reprob: ReprobOpt = 0.0,
    mixup: MixupOpt = 0.0,
    cutmix: CutmixOpt = 0.0,
    mixup_prob: MixupProbOpt = 1.0,
    mixup_switch_prob: MixupSwitchProbOpt = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the student's initialisation and the sample order.")] = 0,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = False,
    workers: Annotated[int, typer.Option(help="Loader processes for image folders.")] = 2,
    sync_bn: Annotated[bool, typer.Option(help="Under torchrun: BatchNorm statistics over the global batch, so N processes train what one process would; --no-sync-bn normalises each process's share (plain DDP, faster, most on CPUs).")] = True,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pt.")] = False,
    log: Annotated[list[str] | None, typer.Option(help="Also log metrics to tensorboard (<out>/tensorboard) or wandb (offline, <out>/wandb); repeatable; needs pip install 'logitcache[tensorboard]' / '[wandb]'.")] = None,
    config: Annotated[str | None, typer.Option(help="TOML file of options (keys as option names, hyper-parameters under set); command-line options win, --set key by key.", is_eager=True, callback=load_config)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a student with a KD method from cached teacher logits.

    Each epoch shows every sample one stored view and reads that view's teacher logits, so
    the student sees exactly the image the teacher saw. --teacher-online runs the same loop
    with the teacher computing logits live (for comparison, or without a cache); --method ce
    without a teacher trains a model from labels (this is how you make a teacher).
    """
    try:
        stones = tuple(int(s) for s in milestones.split(",")) if milestones else None
    except ValueError:
        raise BadInput(f"cannot read --milestones {milestones!r}: use comma-separated epochs, e.g. 150,180,210") from None
    cfg = TrainConfig(
        student=student, dataset=dataset, out=out, method=method, data_root=data_root, cache=cache,
        teacher_online=teacher_online, teacher=teacher, checkpoint=checkpoint, random_init_teacher=random_init_teacher,
        preset=None if preset in (None, "none") else preset, force_preset=force_preset, logit_stand=logit_stand,
        overrides=tuple(set_ or ()), epochs=epochs, batch_size=batch_size, opt=opt, lr=lr, momentum=momentum,
        weight_decay=weight_decay, clip_grad=clip_grad, milestones=stones, lr_decay=lr_decay, val_fraction=val_fraction,
        label_fraction=label_fraction,
        view_policy=view_policy, views=views, seq_len=seq_len, view_seed=view_seed,
        mean=channel_values(mean, "--mean"), std=channel_values(std, "--std"),
        strong=strong_augmentation(aa, color_jitter, reprob, mixup, cutmix, mixup_prob, mixup_switch_prob), seed=seed, device=device,
        precision=precision, channels_last=channels_last, workers=workers,
        sync_bn=sync_bn, resume=resume, progress=not quiet, log=tuple(log or ()),
    )
    # Under torchrun (WORLD_SIZE > 1) every process runs this; rank 0 alone writes and prints.
    with distributed_context() as (rank, world):
        result = train(cfg, rank=rank, world_size=world, echo=typer.echo if rank == 0 else lambda message: None)
    if rank:
        return
    hp = ", ".join(f"{k}={v}" for k, v in result.hparams.items())
    if result.selection == "val":
        chosen = (f"test top-1 {result.best_acc:.2f}% at epoch {result.best_epoch}, best by validation accuracy "
                  f"({result.best_val_acc:.2f}% on {result.val_samples:,} held-out training images)")
    else:
        chosen = (f"test top-1 {result.best_acc:.2f}% at epoch {result.best_epoch}, best by test accuracy "
                  "(optimistic: selected on the test set)")
    typer.echo(f"{method}" + (f" ({hp})" if hp else "") + f": {chosen}; last {result.last_acc:.2f}%, "
               f"{result.seconds:.1f} s; teacher forwards saved {result.teacher_forwards_saved:,}")
    typer.echo(f"run saved in {result.out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
