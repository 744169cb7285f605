"""Stage two: train a student from cached teacher logits (or a live teacher, or none).

Every epoch shows each sample one stored view, chosen by a seeded policy (``cycle``: view
``e mod V`` for every sample in epoch e, so an epoch reads one view slice sequentially;
``random``: a seeded random view per (epoch, sample)). The view's augmentation is replayed
from its stored seed on the training device, and that view's teacher information is read
from the cache, so teacher and student see the same image. ``teacher_online`` swaps the cache
read for the teacher's forward pass on the same batch; nothing else changes.

The defaults are the mdistiller CIFAR recipe: SGD momentum 0.9, weight decay 5e-4, batch 64,
240 epochs, lr 0.05 (0.01 for MobileNetV2/ShuffleNet students) decayed ×0.1 at 62.5 %, 75 %
and 87.5 % of training (epochs 150, 180, 210 of 240). A language-model (``hf:``) student trains
with AdamW instead (lr 1e-3, weight decay 0.01, betas (0.9, 0.999)): transformers do not train
stably under that SGD recipe. A shorter run keeps those fractions (each
decay once, inside the run) and shortens a method's default warm-up in proportion.

``best.pt`` is the epoch with the best test accuracy (as in mdistiller: optimistic, since the
test set then selects the model), or with ``val_fraction`` the best accuracy on a seeded
hold-out of the training split that is never trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _utils
from ._seeds import _hash
from .cache_home import describe_cache, find_cache
from .datasets import Dataset, ImageDataset, open_dataset
from .distributed import barrier, local_device, wrap_ddp
from .errors import (
    BadInput,
    CacheError,
    CacheMismatch,
    CheckpointError,
    LogitcacheError,
)
from .evaluate import evaluate_model
from .info import distinct_views
from .loader import ViewBatch, augmented_batches, true_labels
from .loggers import check_loggers, open_loggers
from .methods import AUTO_PRESET, MethodInfo, ResolvedHparams, get_method, resolve_method
from .methods._common import mixed_target
from .models import ModelInput, create_model, fit_to_model, load_checkpoint, model_input, weights_sha256
from .models.inputs import first_logits
from .models.hf import CausalLM, is_hf, open_folder  # imports no transformers until a folder is opened
from .precision import Compute
from .runs import RUN_LOCK_FILE, holds_run_files, run_folder_lock
from .store.format import CacheSpec
from .store.reader import CacheReader, check_matches
from .teacher import Renormalize, build_teacher, teacher_weights_sha256
from .teacher_view import TeacherView
from .views import STRONG_FIELDS, NO_AUGMENTATION, NoAugmentation, Normalize, ViewSpec, strong_options, view_seeds

SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
VIEW_POLICIES = ("cycle", "random")
RECIPE_EPOCHS = 240  # the run length the default milestones and warm-ups were published for
MILESTONE_FRACTIONS = (150 / RECIPE_EPOCHS, 180 / RECIPE_EPOCHS, 210 / RECIPE_EPOCHS)
WARMUP_KEY = "warmup"  # the methods' hyper-parameter of linear KD warm-up, in epochs
OPTIMIZERS = ("auto", "sgd", "adamw")  # auto: adamw for hf: (language-model) students, else sgd
ADAMW_BETAS = (0.9, 0.999)
# Each optimiser's defaults: SGD the mdistiller recipe's, AdamW the usual ones for small transformers.
_SGD_MOMENTUM, _SGD_WEIGHT_DECAY = 0.9, 5e-4
_ADAMW_LR, _ADAMW_WEIGHT_DECAY = 1e-3, 0.01
CE_WEIGHT_KEY = "ce_weight"  # the weight of a KD method's "ce" term: --label-fraction drops it per sample
# The hold-out's random stream: epoch orders use [seed, epoch] with 1-based epochs, so 0 is free.
_HOLDOUT_STREAM = 0
# The labelled share's: [seed, 0, 1] is a longer entropy key than any epoch's or the hold-out's.
_LABEL_STREAM = (0, 1)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``train`` needs; the CLI (and ``--config run.toml``) builds one."""

    student: str
    dataset: str
    out: str
    method: str = "kd"
    data_root: str | None = None
    cache: str | None = None
    teacher_online: bool = False
    teacher: str | None = None
    checkpoint: str | None = None
    random_init_teacher: bool = False
    preset: str | None = "auto"
    force_preset: bool = False  # apply a pair preset published for another teacher/student pair
    logit_stand: bool = False
    overrides: tuple[str, ...] = ()  # "key=value" hyper-parameter settings
    epochs: int = 240
    batch_size: int = 64
    opt: str = "auto"  # sgd, adamw, or auto: adamw for hf: students, else sgd
    lr: float | None = None  # None: the optimiser's default (resolved_lr)
    momentum: float | None = None  # SGD only; None: 0.9
    weight_decay: float | None = None  # None: 5e-4 (SGD) or 0.01 (AdamW)
    clip_grad: float | None = None  # clip the global gradient norm to this; None: no clipping
    milestones: tuple[int, ...] | None = None  # None: 62.5/75/87.5 % of epochs
    lr_decay: float = 0.1
    val_fraction: float = 0.0  # > 0: select best.pt on this share of the training split, never trained on
    label_fraction: float = 1.0  # < 1: only this seeded share of the trained-on samples keeps its label
    view_policy: str = "cycle"
    seq_len: int | None = None  # text: tokens per packed sequence (as the cache was dumped with)
    views: int | None = None  # without a cache: augmented views to derive (None: one per epoch)
    view_seed: int = 0  # without a cache: the seed views are derived from, as a dump would
    # The student's normalisation (1 or 3 values each); None: its own config's (timm) or the dataset's.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Without a cache: strong augmentation and mixing on the dataset's views (ViewSpec fields, as dump's).
    strong: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # of the student's forward (and an online teacher's): fp32, bf16 or fp16 autocast
    channels_last: bool = False
    workers: int = 2
    sync_bn: bool = True  # under torchrun: BatchNorm over the global batch (else each rank's share)
    resume: bool = False
    progress: bool = True
    log: tuple[str, ...] = ()  # experiment loggers beside metrics.jsonl: "tensorboard", "wandb"

    def resolved_opt(self) -> str:
        if self.opt != "auto":
            return self.opt
        return "adamw" if is_hf(self.student) else "sgd"

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.resolved_opt() == "adamw":
            return _ADAMW_LR
        return 0.01 if self.student in SMALL_LR_STUDENTS else 0.05

    def resolved_momentum(self) -> float | None:
        """SGD's momentum; None under AdamW (its betas play that part)."""
        if self.resolved_opt() != "sgd":
            return None
        return _SGD_MOMENTUM if self.momentum is None else self.momentum

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return _ADAMW_WEIGHT_DECAY if self.resolved_opt() == "adamw" else _SGD_WEIGHT_DECAY

    def optimizer(self, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        """The run's optimiser over ``params``, every setting resolved."""
        if self.resolved_opt() == "adamw":
            return torch.optim.AdamW(params, lr=self.resolved_lr(), betas=ADAMW_BETAS,
                                     weight_decay=self.resolved_weight_decay())
        return torch.optim.SGD(params, lr=self.resolved_lr(), momentum=self.resolved_momentum(),
                               weight_decay=self.resolved_weight_decay())

    def optimizer_record(self) -> dict[str, Any]:
        """The resolved optimiser settings, as config.json records them."""
        record: dict[str, Any] = {"name": self.resolved_opt(), "lr": self.resolved_lr(),
                                  "weight_decay": self.resolved_weight_decay(), "clip_grad": self.clip_grad}
        if record["name"] == "adamw":
            record["betas"] = list(ADAMW_BETAS)
        else:
            record["momentum"] = self.resolved_momentum()
        return record

    def resolved_milestones(self) -> tuple[int, ...]:
        """Epochs after which lr is multiplied by ``lr_decay``: increasing, each inside the run."""
        if self.milestones is not None:
            return tuple(self.milestones)
        # In a short run the fractions round onto one epoch (which would decay twice at once) or
        # onto the last one (which would do nothing): each decay happens once, inside the run.
        stones = {round(f * self.epochs) for f in MILESTONE_FRACTIONS}
        return tuple(sorted(m for m in stones if 1 <= m < self.epochs))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class TrainResult:
    out: str
    best_acc: float
    best_epoch: int
    last_acc: float
    epochs: int
    seconds: float
    teacher_forwards_saved: int
    teacher_forwards_run: int
    hparams: dict[str, Any] = field(default_factory=dict)
    # "test": best_acc is the best test accuracy (optimistic); "val": best_epoch is the best on the
    # hold-out (best_val_acc) and best_acc the test accuracy at that epoch.
    selection: str = "test"
    best_val_acc: float | None = None
    val_samples: int = 0


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"cannot read --set {item!r}: use KEY=VALUE, e.g. --set beta=2")
        out[key.strip()] = value.strip()
    return out


class _Views:
    """The stored views a run draws from, and their seeds: the cache's, or derived as a dump would."""

    def __init__(self, n: int, reader: CacheReader | None, config: TrainConfig, *, augmented: bool = True) -> None:
        self.n, self.reader = n, reader
        if not augmented:  # text: every epoch shows the one clean view 0
            self.augmented = [0]
            self.base_seed = reader.spec.views.seed if reader is not None else config.view_seed
        elif reader is not None:
            self.augmented = list(reader.spec.views.augmented)
            self.base_seed = reader.spec.views.seed
        else:
            count = config.views if config.views is not None else config.epochs  # 0 is refused, not the default
            if count < 1:
                raise BadInput(f"--views must be >= 1, got {count}")
            self.augmented = list(range(1, count + 1))  # view 0 is the clean view, as in a dump
            self.base_seed = config.view_seed
        self._seeds: dict[int, np.ndarray] = {}

    def describe(self, view_spec: ViewSpec | NoAugmentation, policy: str, epochs: int) -> str:
        """The settings' views line: how many, whose, what ``policy`` shows in ``epochs`` and the
        augmentation replayed (the cache's, or the one derived here)."""
        if view_spec is NO_AUGMENTATION:
            return view_spec.describe()
        count = len(self.augmented)
        seen = distinct_views(count, epochs)[policy]
        source = "the cache's" if self.reader else "derived"
        return (f"{_utils.plural(count, 'augmented view')} per sample ({source}, seed {self.base_seed}), --view-policy "
                f"{policy}: {seen:.3g} distinct in {_utils.plural(epochs, 'epoch')}; {view_spec.describe()}")

    def seeds(self, view: int) -> np.ndarray:
        if self.reader is not None:
            return self.reader.seeds(view)
        if view not in self._seeds:
            self._seeds[view] = view_seeds(self.base_seed, view, np.arange(self.n))
        return self._seeds[view]

    def for_epoch(self, policy: str, epoch: int, seed: int) -> np.ndarray:
        """(N,) the stored view each sample shows in ``epoch`` (1-based)."""
        count = len(self.augmented)
        if policy == "cycle":
            return np.full(self.n, self.augmented[(epoch - 1) % count])
        pick = (_hash(seed, epoch, np.arange(self.n)) % np.uint64(count)).astype(np.int64)
        return np.asarray(self.augmented)[pick]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded sample order of an epoch: the same for any device, worker count or resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split an epoch order into batches; a trailing batch of one sample (which BatchNorm cannot
    normalise in training mode) joins the batch before it rather than being dropped, so that every
    epoch shows every sample whatever the batch size (dropping it would make the (view, sample)
    pairs an epoch reads depend on the batch size)."""
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def train(config: TrainConfig, *, rank: int = 0, world_size: int = 1,
          echo: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Run stage two; see the module docstring. Writes into ``config.out``:

    ``config.json`` (resolved config, and the cache and teacher weights really used),
    ``metrics.jsonl`` (one line per epoch), ``last.pt`` (model, optimizer, scheduler, RNG, epoch:
    for ``resume``), ``best.pt`` (weights of the best epoch, by validation accuracy with
    ``val_fraction`` else by test accuracy, loadable as a checkpoint anywhere) and
    ``summary.json``. Rank 0 holds the run folder's lock (``runs``) throughout. The resolved
    settings (schedule, method, preset, hyper-parameters, selection) are said via ``echo`` before
    the first epoch.

    A method that needs a teacher, given neither ``cache`` nor ``teacher_online``, uses the
    matching cache in the cache home (``cache_home.find_cache``; with ``checkpoint``, the cache of
    exactly those weights). Before training, ``echo`` says which cache and teacher weights are used.
    """
    # However the run ends, it releases the cache's read lock and the run folder's lock.
    with contextlib.ExitStack() as cleanup:
        return _train(config, rank, world_size, echo, cleanup)


def _train(config: TrainConfig, rank: int, world_size: int, echo: Callable[[str], None],
           cleanup: contextlib.ExitStack) -> TrainResult:
    _validate(config)
    _utils.check_output_location(config.out, "--out")
    device = local_device(_utils.resolve_device(config.device))
    compute = Compute.on(device, config.precision, config.channels_last)
    method = get_method(config.method)
    # Text is tokenised with the student's tokenizer: a cache of another tokenizer is then refused.
    train_set, test_set = (open_dataset(config.dataset, split, data_root=config.data_root, model=config.student,
                                        seq_len=config.seq_len) for split in ("train", "test"))
    _check_modality(config, train_set, method)
    data_normalize = train_set.normalize
    # The student sees its images normalised (and, without a cache, sized) as it expects itself.
    train_set, student_input = fit_to_model(train_set, config.student, mean=config.mean, std=config.std)
    test_set, _ = fit_to_model(test_set, config.student, mean=config.mean, std=config.std)

    def unusable(spec: CacheSpec) -> str | None:  # a sampled cache this method is not defined on
        if spec.encoding.kind != "sampled":
            return None
        hparams = _resolve_method(config, config.teacher or spec.teacher.name).values
        refusal = method.refusal_on_sampled(hparams, spec.encoding.temperature)
        return None if refusal is None else f"sampled, and {config.method} is not defined on a sampled cache here"

    out = Path(config.out)
    saved = _resumed_run(out) if config.resume else None
    sources = _resolve_sources(config, method.needs_teacher, train_set, device, saved, cleanup, unusable)
    if saved is not None:
        _check_resumed_sources(saved, sources, config)
    if sources.line:
        echo(sources.line)
    reader, teacher = sources.reader, sources.teacher
    if teacher is not None:  # the online teacher sees its own normalisation, whatever the student's
        wanted = _model_normalize(sources.teacher_name, data_normalize)
        if wanted != train_set.normalize:
            teacher = Renormalize(teacher, train_set.normalize, wanted)
        compute.model(teacher)  # and runs as the student does
    resolved = _resolve_method(config, sources.teacher_name)
    hparams = resolved.values
    train_samples, val_set = _holdout(train_set, config)
    labelled = _labelled(train_samples, config, method.needs_teacher, hparams)
    if labelled is not None and not method.needs_teacher:
        train_samples = labelled  # without a teacher an unlabelled image has no target at all
    if reader:
        view_spec = ViewSpec.from_json(reader.spec.views.augmentation)
        view_spec.check_replayable()  # before the run folder is written
    else:
        view_spec = dataclasses.replace(train_set.train_view, **config.strong)
    if view_spec.mixing:
        # A mixed view shows its partner's pixels and label, and partners are drawn (by the dump, for a
        # cache) from every training image: a hidden label would be used, a held-out image trained on.
        given = [opt for opt, used in (("--label-fraction", labelled is not None),
                                       ("--val-fraction", val_set is not None)) if used]
        if given:
            raise BadInput(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not combine with mixed views "
                           "(--mixup/--cutmix, of the cache or given to train: a view's partner may be any training "
                           f"image): use views without mixing, or drop {' and '.join(given)}")
    if reader is not None and not config.teacher_online and reader.spec.encoding.kind == "sampled":
        method.check_sampled(hparams, reader.spec.encoding.temperature)  # once, before anything is written
        if labelled is not None:
            raise BadInput("--label-fraction labels the hidden samples with the teacher's top-1 class, which a sampled "
                           "cache does not store: use a --full or --topk cache, or drop --label-fraction")
    views = _Views(len(train_set), reader, config, augmented=view_spec is not NO_AUGMENTATION)

    is_main = rank == 0
    torch.manual_seed(config.seed)
    student = compute.model(create_model(config.student, num_classes=train_set.num_classes).to(device))
    first_logits(student, train_set, view_spec, f"student {config.student}", compute)  # refused before the run folder
    model = _wrap_distributed(student, device, world_size, config.sync_bn)
    optimizer = config.optimizer(student.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.resolved_milestones()),
                                                     gamma=config.lr_decay)
    scaler = compute.scaler()
    if is_main:  # taken once nothing but the run folder can refuse the run, so a refusal leaves no folder
        if not (out / RUN_LOCK_FILE).exists():  # never put a lock file into a folder that is no run's
            _refuse_foreign_out(out, config)
        cleanup.enter_context(run_folder_lock(out))  # a run going on in there is refused first
    start_epoch, state = _prepare_out(out, config, is_main, saved)
    barrier()  # every rank has checked the run folder before rank 0 writes into it
    best = {"score": -1.0, "acc": -1.0, "epoch": 0}  # score: the selection's accuracy (val, else test)
    # A resumed run reports the whole run: the killed process's accuracy, time and forwards carry over.
    last_acc, forwards_run, seconds_before = float("nan"), 0, 0.0
    if state is not None:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if scaler.is_enabled():  # fp16: the loss scale goes on where it was (a resume keeps --precision)
            scaler.load_state_dict(state["scaler"])
        # A state from before --val-fraction selected on test: its score is its best test accuracy.
        best = {"score": state.get("best_score", state["best_acc"]), "acc": state["best_acc"],
                "epoch": state["best_epoch"]}
        last_acc = state.get("last_acc", last_acc)
        forwards_run, seconds_before = state.get("forwards_run", 0), state.get("seconds", 0.0)
    loggers = []
    if is_main:
        record = {**_config_record(config, hparams, sources, device),
                  **_settings_record(config, resolved, train_set, test_set, val_set, train_samples, labelled),
                  "student_input": None if student_input is None else student_input.to_json()}
        _utils.atomic_write_json(out / "config.json", record)
        loggers = open_loggers(config.log, out, record)
        for logger in loggers:  # closed however the run ends
            cleanup.callback(logger.close)
    echo(_settings_block(config, resolved, sources.teacher_name if method.needs_teacher else None, val_set,
                         len(train_set), labelled, views.describe(view_spec, config.view_policy, config.epochs)))
    teacher_input = model_input(sources.teacher_name) if teacher is not None else None
    for role, name, inp in (("student", config.student, student_input), ("teacher", sources.teacher_name, teacher_input)):
        if inp is not None:
            echo(f"  input      {role} {name}: {inp.describe(view_spec)}")

    wall = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_views = views.for_epoch(config.view_policy, epoch, config.seed)
        if reader is not None and config.view_policy == "cycle" and epoch < config.epochs:
            reader.prefetch(int(views.for_epoch("cycle", epoch + 1, config.seed)[0]))
        stats, forwards = _train_epoch(
            model, method.fn, hparams, train_set, train_samples, view_spec, views, epoch_views, reader, teacher,
            config, epoch, optimizer, scaler, compute, device, rank, world_size,
            None if labelled is None or not method.needs_teacher else _label_mask(len(train_set), labelled),
        )
        forwards_run += forwards
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test = evaluate_model(student, test_set, device=device, compute=compute)
        val = None if val_set is None else evaluate_model(student, val_set, device=device, compute=compute)
        last_acc, score = test["top1"], (test if val is None else val)["top1"]
        if score > best["score"]:
            best = {"score": score, "acc": last_acc, "epoch": epoch}
            if is_main:
                _utils.atomic_torch_save({"model": student.state_dict(), "epoch": epoch, "acc": last_acc}, out / "best.pt")
        if is_main:
            record = {"epoch": epoch, "lr": lr, **stats, **{f"val_{k}": v for k, v in (val or {}).items()},
                      **{f"test_{k}": v for k, v in test.items()}}
            _append_metrics(out / "metrics.jsonl", record)
            for logger in loggers:
                logger.log(record, epoch)
            echo(_epoch_line(epoch, config.epochs, stats, test, val, best, lr))
            _utils.atomic_torch_save({
                "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch,
                "best_acc": best["acc"], "best_epoch": best["epoch"], "best_score": best["score"], "last_acc": last_acc,
                "forwards_run": forwards_run, "seconds": seconds_before + time.perf_counter() - wall,
            }, out / "last.pt")
    seconds = seconds_before + time.perf_counter() - wall
    uses_cache = reader is not None and teacher is None and method.needs_teacher
    result = TrainResult(
        out=str(out), best_acc=best["acc"], best_epoch=best["epoch"], last_acc=last_acc, epochs=config.epochs,
        seconds=seconds, hparams=hparams, teacher_forwards_run=forwards_run,
        teacher_forwards_saved=len(train_samples) * config.epochs if uses_cache else 0,
        selection="test" if val_set is None else "val", best_val_acc=None if val_set is None else best["score"],
        val_samples=0 if val_set is None else len(val_set),
    )
    if is_main:
        _save_hf(student, out)
        _utils.atomic_write_json(out / "summary.json", dataclasses.asdict(result))
    return result


HF_FOLDER = "hf"  # a trained language model's best weights as an hf folder: --teacher hf:<run>/hf


def _save_hf(student: nn.Module, out: Path) -> None:
    """A language-model student's best epoch, saved as a Hugging Face folder (safetensors, config,
    tokenizer) so that it can be the next run's ``--teacher hf:<out>/hf``."""
    if not isinstance(student, CausalLM):
        return
    student.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"])
    student.save(out / HF_FOLDER)


def _check_modality(config: TrainConfig, train_set: Dataset, method: MethodInfo) -> None:
    """Refuse, before anything is written, what does not apply to text: a method not meaningful on
    token rows, augmentation options and --label-fraction (a position's label is the next token:
    there is nothing to hide)."""
    if isinstance(train_set, ImageDataset):
        return
    method.check_tokens()
    given = [opt for opt, used in ((strong_options(config.strong), config.strong), ("--views", config.views is not None),
                                   ("--view-policy", config.view_policy != "cycle"),  # one view: nothing to pick
                                   ("--mean/--std", config.mean is not None or config.std is not None),
                                   ("--label-fraction", config.label_fraction != 1)) if used]
    if given:
        raise BadInput(f"{config.dataset} is text (one clean view of token rows, the label of a position its next "
                       f"token): drop {', '.join(given)}")


def _check_online_tokenizer(teacher_name: str, train_set: Dataset) -> None:
    """An online teacher reads the student's token ids: it must have the same tokenizer."""
    if isinstance(train_set, ImageDataset):
        return
    if open_folder(teacher_name).tokenizer_sha256() != train_set.tokenizer:
        raise CacheMismatch(f"--teacher {teacher_name} has another tokenizer than the student {train_set.tokenizer[:12]}: "
                            "cross-tokenizer distillation is not supported; use a student with the teacher's tokenizer")


def _strong_from_cache(config: TrainConfig) -> str:
    return (f"a cache replays its own augmentation (logitcache info shows it): drop {strong_options(config.strong)}, "
            "or train without the cache")


def _model_normalize(model: str, data_normalize: Normalize) -> Normalize:
    inp = model_input(model)
    return data_normalize if inp is None else Normalize(inp.mean, inp.std)


def _validate(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 2:
        raise BadInput("--epochs must be >= 1 and --batch-size >= 2 (BatchNorm needs two samples)")
    if config.view_policy not in VIEW_POLICIES:
        raise BadInput(f"unknown --view-policy {config.view_policy!r}: use {' or '.join(VIEW_POLICIES)}")
    if config.cache and config.views is not None:
        raise BadInput("--views is taken from the cache: drop it (or drop --cache)")
    if config.cache and config.strong:
        raise BadInput(_strong_from_cache(config))
    ViewSpec(kind="crop", size=1, **config.strong)  # bad values are refused before anything is written
    _check_optimizer(config)
    _check_milestones(config)
    if not (math.isfinite(config.label_fraction) and 0 < config.label_fraction <= 1):
        raise BadInput(f"--label-fraction must be in (0, 1] (the share of training images that keep their label), "
                       f"got {config.label_fraction}")
    if not 0 <= config.val_fraction < 1:
        raise BadInput(f"--val-fraction must be in [0, 1) (the share of training images held out), "
                       f"got {config.val_fraction}")
    check_loggers(config.log)


def _check_optimizer(config: TrainConfig) -> None:
    # Each is refused here in one line; SGD would raise a bare ValueError for some, and a zero or
    # negative --lr-decay would stop or reverse training. NaN fails every test. (lr 0 stays
    # allowed: it only refreshes BatchNorm statistics, which is of use.)
    if config.opt not in OPTIMIZERS:
        raise BadInput(f"unknown --opt {config.opt!r}: use {', '.join(OPTIMIZERS)} (auto: adamw for hf: students, "
                       "else sgd)")
    if config.momentum is not None and config.resolved_opt() != "sgd":
        raise BadInput(f"--momentum is SGD's, but this run trains with {config.resolved_opt()}"
                       f"{' (--opt auto, for an hf: student)' if config.opt == 'auto' else ''}: drop --momentum "
                       "(AdamW's betas are 0.9, 0.999), or pass --opt sgd")
    checks = [("--lr", config.resolved_lr(), ">= 0", lambda v: v >= 0),
              ("--momentum", config.resolved_momentum(), "in [0, 1)", lambda v: 0 <= v < 1),
              ("--weight-decay", config.resolved_weight_decay(), ">= 0", lambda v: v >= 0),
              ("--lr-decay", config.lr_decay, "in (0, 1]", lambda v: 0 < v <= 1),
              ("--clip-grad", config.clip_grad, "> 0 (the largest global gradient norm)", lambda v: v > 0)]
    for option, value, want, ok in checks:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise BadInput(f"{option} must be {want}, got {value:g}")


def _check_milestones(config: TrainConfig) -> None:
    stones = config.milestones
    if stones is None:
        return
    if any(b <= a for a, b in zip(stones, stones[1:])):
        raise BadInput(f"--milestones {','.join(map(str, stones))} must increase and name each epoch once "
                       "(a repeated epoch would decay lr twice at once; set --lr-decay for a larger step)")
    outside = [m for m in stones if not 1 <= m < config.epochs]
    if outside:
        raise BadInput(f"--milestones {','.join(map(str, outside))} outside the run of --epochs {config.epochs}: lr "
                       f"decays after a milestone epoch, so each must be in 1..{config.epochs - 1}")


def _resolve_method(config: TrainConfig, teacher: str | None) -> ResolvedHparams:
    """The run's hyper-parameters, with a default warm-up fitted to the run length.

    A published warm-up (DKD's 20 epochs of 240) would outlast a short run, whose KD terms then
    never reach full weight: a warm-up left at its default keeps its share of the recipe
    (shortened in proportion, at least one epoch; never lengthened); one set by hand or by a
    preset is kept, and refused when longer than the run.
    """
    resolved = resolve_method(config.method, overrides=parse_overrides(config.overrides), preset=config.preset,
                              logit_stand=config.logit_stand, teacher=teacher, student=config.student,
                              force_preset=config.force_preset)
    warmup = resolved.values.get(WARMUP_KEY)
    if warmup is None or warmup <= 0:
        return resolved
    if resolved.sources[WARMUP_KEY] != "default":
        if warmup > config.epochs:
            raise BadInput(f"warmup={warmup} ({resolved.sources[WARMUP_KEY]}) is longer than --epochs {config.epochs}: "
                           f"the KD terms would never reach full weight; use --set warmup=N with N <= {config.epochs} "
                           "(0 disables it)")
        return resolved
    fitted = min(warmup, max(1, round(warmup * config.epochs / RECIPE_EPOCHS)))
    if fitted == warmup:
        return resolved
    return dataclasses.replace(
        resolved, values={**resolved.values, WARMUP_KEY: fitted},
        sources={**resolved.sources, WARMUP_KEY: f"default {warmup} of {RECIPE_EPOCHS} epochs, scaled to the run"},
    )


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training samples, held-out samples), each sorted: a pure function of (n, fraction, seed),
    so a resumed run holds out the same samples."""
    count = round(fraction * n)
    perm = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(n)
    return np.sort(perm[count:]), np.sort(perm[:count])


def _holdout(train_set: Dataset, config: TrainConfig) -> tuple[np.ndarray, Dataset | None]:
    """The samples trained on, and the validation hold-out (None without ``val_fraction``)."""
    n = len(train_set)
    if config.val_fraction == 0:
        return np.arange(n), None
    train_samples, held_out = holdout_split(n, config.val_fraction, config.seed)
    if len(held_out) < 1 or len(train_samples) < 2:
        raise BadInput(f"--val-fraction {config.val_fraction} of {n} training images holds out {len(held_out)}: "
                       "choose a fraction that leaves at least one image to validate on and two to train on")
    return train_samples, train_set.subset(held_out)


def labelled_split(train_samples: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training samples that keep their label, sorted: a pure function of (the samples trained
    on, fraction, seed), so every method and a resumed run see the same labels at the same seed."""
    count = round(fraction * len(train_samples))
    perm = np.random.default_rng([seed, *_LABEL_STREAM]).permutation(len(train_samples))
    return np.sort(train_samples[perm[:count]])


def _labelled(train_samples: np.ndarray, config: TrainConfig, needs_teacher: bool,
              hparams: dict[str, Any]) -> np.ndarray | None:
    """The samples that keep their label under ``label_fraction`` (None: every sample does)."""
    if config.label_fraction == 1:
        return None
    labelled = labelled_split(train_samples, config.label_fraction, config.seed)
    if len(labelled) < 2:
        raise BadInput(f"--label-fraction {config.label_fraction:g} of {len(train_samples)} training images leaves "
                       f"{len(labelled)} labelled: choose a fraction that keeps at least two")
    if needs_teacher and CE_WEIGHT_KEY not in hparams:
        raise BadInput(f"method {config.method} has no {CE_WEIGHT_KEY} term to drop on unlabelled images: "
                       "drop --label-fraction for it")
    return labelled


def _label_mask(n: int, labelled: np.ndarray) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(labelled)] = True
    return mask


def _settings_record(config: TrainConfig, resolved: ResolvedHparams, train_set: Dataset,
                     test_set: Dataset, val_set: Dataset | None, train_samples: np.ndarray,
                     labelled: np.ndarray | None) -> dict[str, Any]:
    """What config.json records beside the options: preset, value sources, selection, labels and the data."""
    return {
        "preset": resolved.preset,
        "hparam_sources": resolved.sources,
        "selection": {"by": "test"} if val_set is None else {
            "by": "val", "fraction": config.val_fraction, "seed": config.seed, "samples": len(val_set),
            "fingerprint": val_set.fingerprint,
        },
        "labels": {"fraction": 1.0, "labelled": len(train_samples)} if labelled is None else {
            "fraction": config.label_fraction, "seed": config.seed, "labelled": len(labelled),
            "of": len(train_set) - (0 if val_set is None else len(val_set)),
            "sha256": hashlib.sha256(labelled.astype("<i8").tobytes()).hexdigest(),
        },
        "data": {"train": train_set.describe(), "test": test_set.describe()},
    }


def _settings_block(config: TrainConfig, resolved: ResolvedHparams, teacher: str | None,
                    val_set: Dataset | None, n_train: int, labelled: np.ndarray | None, views: str) -> str:
    """The resolved settings, said once before the first epoch: what a default or preset chose is
    otherwise invisible."""
    stones = config.resolved_milestones()
    decay = (f"x{config.lr_decay:g} after epoch{'s' if len(stones) > 1 else ''} {', '.join(map(str, stones))}"
             if stones else "no decay")
    origin = "" if config.milestones is not None else (
        f" (default: {', '.join(f'{f:.1%}' for f in MILESTONE_FRACTIONS)} of {config.epochs} epochs, each once, inside the run)")
    preset = resolved.preset or "none"
    if config.preset == AUTO_PRESET and teacher is not None:
        preset += (f" (auto: the published setting for {teacher} -> {config.student})" if resolved.preset else
                   f" (auto: {config.method} has no published setting for {teacher} -> {config.student})")
    hparams = ", ".join(f"{k}={v}" + ("" if resolved.sources[k] == "default" else f" [{resolved.sources[k]}]")
                        for k, v in resolved.values.items()) or "(none)"
    if val_set is None:
        selection = "best.pt by test accuracy (optimistic: selected on the test set; --val-fraction F holds out a validation split)"
    else:
        selection = (f"best.pt by validation accuracy on {len(val_set)} of {n_train} training images "
                     f"(--val-fraction {config.val_fraction:g}, seed {config.seed}), never trained on")
    lines = [
        "settings:",
        f"  schedule   {config.epochs} epochs, lr {config.resolved_lr():g} {decay}{origin}, {_optimizer_line(config)}, "
        f"batch {config.batch_size}",
        f"  forward    {_forward_line(config)}",
        f"  method     {config.method}, preset {preset}",
        f"  hparams    {hparams}",
        f"  views      {views}",
        f"  selection  {selection}",
    ]
    if labelled is not None:
        share = f"{len(labelled)} training images keep their label (--label-fraction {config.label_fraction:g}, seed {config.seed})"
        lines.append(f"  labels     {share}; " + (
            "trained on those only (no teacher)" if teacher is None else
            f"the other {n_train - (0 if val_set is None else len(val_set)) - len(labelled)}: KD terms towards "
            "the teacher, whose top-1 class stands in for the label, no CE term"))
    return "\n".join(lines)


def _optimizer_line(config: TrainConfig) -> str:
    opt = config.resolved_opt()
    text = (f"AdamW betas {ADAMW_BETAS[0]:g}, {ADAMW_BETAS[1]:g}" if opt == "adamw"
            else f"SGD momentum {config.resolved_momentum():g}")
    if config.opt == "auto" and is_hf(config.student):
        text += " (auto: AdamW for an hf: student)"
    text += f", weight decay {config.resolved_weight_decay():g}"
    return text + (f", gradient norm clipped to {config.clip_grad:g}" if config.clip_grad is not None else "")


def _forward_line(config: TrainConfig) -> str:
    if config.precision == "fp32":
        text = "fp32"
    else:
        scaler = " with GradScaler loss scaling" if config.precision == "fp16" else ""
        text = f"{config.precision} autocast{scaler} (losses in fp32)"
    text += ", channels-last" if config.channels_last else ""
    return text + ("; the online teacher the same" if config.teacher_online else "")


def _check_cache(reader: CacheReader, train_set: Dataset, config: TrainConfig) -> None:
    described = train_set.describe()
    check_matches(reader.spec, dataset_name=train_set.name, split="train", num_samples=len(train_set.labels),
                  num_classes=train_set.num_classes, fingerprint=train_set.fingerprint,
                  tokenizer=described.get("tokenizer", ""), seq_len=described.get("seq_len", 0))
    reader.check_labels(train_set.labels, train_set.name)
    if config.teacher and config.teacher != reader.spec.teacher.name and not config.teacher_online:
        raise BadInput(
            f"--teacher {config.teacher} but the cache holds logits of {reader.spec.teacher.name}: "
            "drop --teacher or use the cache made with that teacher"
        )


@dataclass(frozen=True)
class _Sources:
    """Where a run's views and teacher logits come from: what config.json records as used."""

    cache: str | None
    reader: CacheReader | None
    teacher: nn.Module | None  # the online teacher
    teacher_name: str | None  # presets are chosen by it
    teacher_record: dict | None  # name, weights_sha256, logits ("cache" or "online"), checkpoint if online
    line: str | None  # which cache and teacher weights are used, for the user


def _resolve_sources(config: TrainConfig, needs_teacher: bool, train_set: Dataset, device: torch.device,
                     saved: dict | None, cleanup: contextlib.ExitStack,
                     unusable: Callable[[CacheSpec], str | None]) -> _Sources:
    """The cache and teacher a run uses. Weights named by --checkpoint / --random-init-teacher are
    the weights used, or the run is refused: with a cache they must be its teacher's; without one
    they choose the cache, passing over those ``unusable`` names a reason against. A resumed run
    reads the cache its config.json recorded."""
    weights_given = config.checkpoint is not None or config.random_init_teacher
    if not needs_teacher:
        unused = [name for name, given in (("--teacher-online", config.teacher_online),
                                           ("--checkpoint", config.checkpoint is not None),
                                           ("--random-init-teacher", config.random_init_teacher)) if given]
        if unused:
            raise BadInput(f"method {config.method} trains without a teacher: drop {', '.join(unused)} "
                           "(it would be recorded but never used), or choose a KD method")
    cache, notes, wanted = config.cache, [], None
    recorded = cache is None and saved is not None and isinstance((saved.get("cache") or {}).get("location"), str)
    if recorded:
        cache = saved["cache"]["location"]  # never another cache the home may hold by now
    elif cache is None and needs_teacher and not config.teacher_online:
        if weights_given:
            if config.teacher is None:
                raise BadInput("--checkpoint gives a teacher's weights but not its architecture: add --teacher NAME "
                               "(the model the checkpoint is for), or pass --cache")
            wanted = _weights_named(config, config.teacher, train_set.num_classes)
        entry, notes = find_cache(dataset_name=train_set.name, split="train", num_samples=len(train_set.labels),
                                  num_classes=train_set.num_classes, fingerprint=train_set.fingerprint,
                                  teacher=config.teacher, weights_sha256=wanted, unusable=unusable)
        cache = entry.location
        if config.views is not None:  # _validate could not know a cache would be found
            raise BadInput(f"--views is taken from the cache found ({cache}): drop --views")
        if config.strong:
            raise BadInput(f"{_strong_from_cache(config)} (found {cache})")
    reader = None
    if cache:
        try:
            reader = CacheReader(cache)
        except CacheError as e:
            if not recorded:
                raise
            raise type(e)(f"the run to resume trained from {cache}: {e}") from None
        cleanup.callback(reader.close)
        _check_cache(reader, train_set, config)
    teacher_name = config.teacher or (reader.spec.teacher.name if reader else None)
    if not needs_teacher:
        line = f"views from cache {cache} (method {config.method} uses no teacher logits)" if reader else None
        return _Sources(cache, reader, None, teacher_name, None, line)
    if config.teacher_online:
        if teacher_name is None:
            raise BadInput("--teacher-online needs --teacher NAME (and --checkpoint)")
        teacher = build_teacher(teacher_name, train_set.num_classes, checkpoint=config.checkpoint,
                                random_init=config.random_init_teacher, seed=config.view_seed, device=device)
        _check_online_tokenizer(teacher_name, train_set)
        record = {"name": teacher_name, "weights_sha256": weights_sha256(teacher), "logits": "online",
                  "checkpoint": config.checkpoint}
        line = (f"teacher {teacher_name} online, weights {record['weights_sha256'][:12]} from "
                + (config.checkpoint or f"seeded random init (seed {config.view_seed})")
                + (f"; views from cache {cache}" if reader else ""))
        return _Sources(cache, reader, teacher, teacher_name, record, line)
    assert reader is not None  # a teacher method without an online teacher always has a cache by now
    stored = reader.spec.teacher
    if weights_given:
        given = wanted or _weights_named(config, stored.name, stored.num_classes)
        if given != stored.weights_sha256:
            raise CacheMismatch(
                f"{_weights_option(config)} holds teacher weights {given[:12]}, but {cache} holds the logits of "
                f"weights {stored.weights_sha256[:12]}: pass the checkpoint that cache was dumped with, drop "
                "--checkpoint, or add --teacher-online to run those weights live"
            )
    record = {"name": stored.name, "weights_sha256": stored.weights_sha256, "logits": "cache"}
    line = (f"using cache {cache}: {describe_cache(reader.spec, reader.store.provenance.teacher_test_accuracy)}"
            + "".join(f"; {n}" for n in notes))
    return _Sources(cache, reader, None, teacher_name, record, line)


def _weights_named(config: TrainConfig, teacher: str, num_classes: int) -> str:
    """The weights hash of the teacher the options name (as a dump of it records it)."""
    return teacher_weights_sha256(teacher, num_classes, checkpoint=config.checkpoint,
                                  random_init=config.random_init_teacher, seed=config.view_seed)


def _weights_option(config: TrainConfig) -> str:
    return (f"--checkpoint {config.checkpoint}" if config.checkpoint is not None
            else f"--random-init-teacher (seed {config.view_seed})")


def _check_resumed_sources(saved: dict, sources: _Sources, config: TrainConfig) -> None:
    """A resumed run goes on with exactly the logits it started with: the cache its config.json
    records (location and spec) and the same teacher weights."""
    out = config.out
    was = saved.get("cache") if isinstance(saved.get("cache"), dict) else None
    was_location = was.get("location") if was else None
    now_location = sources.cache if sources.reader else None
    if was_location != now_location:
        raise BadInput(f"cannot resume the run in {out}: it trained from {was_location or 'no cache'}, "
                       f"not {now_location or 'no cache'}: use the same options, or start a new run with another --out")
    if was is not None and sources.reader is not None:
        try:
            diffs = CacheSpec.from_json(was["spec"]).differences(sources.reader.spec)
        except (LogitcacheError, KeyError, TypeError, ValueError):  # a config.json edited by hand
            diffs = ["the spec config.json records is unreadable"]
        if diffs:
            raise CacheMismatch(
                f"cannot resume the run in {out}: {now_location} now holds other logits than the run started with "
                f"({'; '.join(diffs)}), e.g. after `dump --overwrite`: restore that cache, or start a new run "
                "with another --out"
            )
    was_teacher, now_teacher = saved.get("teacher"), sources.teacher_record
    if isinstance(was_teacher, dict) and now_teacher is not None \
            and was_teacher.get("weights_sha256") != now_teacher["weights_sha256"]:
        raise CacheMismatch(
            f"cannot resume the run in {out}: its teacher had weights {str(was_teacher.get('weights_sha256'))[:12]}, "
            f"{_weights_option(config)} holds {now_teacher['weights_sha256'][:12]}: restore the "
            "teacher's checkpoint, or start a new run with another --out"
        )


def _saved_run(run: Path) -> dict | None:
    """A run folder's config.json, or None where there is no readable one."""
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("config"), dict) else None


def _saved_config(run: Path) -> dict | None:
    """The options a run folder's config.json records, or None where there is no readable one."""
    saved = _saved_run(run)
    return None if saved is None else saved["config"]


def _resumed_run(out: Path) -> dict:
    """The config.json of the run ``--resume`` continues; refused before anything is opened or written."""
    saved = _saved_run(out)
    if saved is None:
        raise BadInput(f"nothing to resume in {out}: no readable config.json of a run (drop --resume to start the run)")
    return saved


def _prepare_out(out: Path, config: TrainConfig, is_main: bool, resumed: dict | None) -> tuple[int, dict | None]:
    """(first epoch to run, saved state) — refusing to overwrite another run. ``resumed``: the
    config.json of the run ``--resume`` continues."""
    last = out / "last.pt"
    if resumed is not None:
        # A setting the run's config.json predates had its default then.
        saved = _with_resolved_optimizer({**TrainConfig(student="", dataset="", out="").to_json(), **resumed["config"]})
        now = _with_resolved_optimizer(config.to_json())
        diffs = [f"{_option_name(k)} {saved[k]!r} -> {v!r}" for k, v in now.items()
                 if k not in ("resume", "progress", "device", "workers", "log", "strong") and saved.get(k) != v]
        diffs += _strong_differences(saved.get("strong") or {}, now["strong"])
        if diffs:
            raise BadInput(f"--resume with other settings than the run in {out} ({', '.join(diffs)}): use the same options")
        if not last.exists():  # stopped before its first epoch ended: run it again from the start
            if is_main:
                _truncate_metrics(out / "metrics.jsonl", 0)
            return 1, None
        state = _load_state(last)
        if state["epoch"] >= config.epochs and (out / "summary.json").exists():
            raise BadInput(f"the run in {out} already finished its {config.epochs} epochs: nothing to resume "
                           "(to train longer, start a new run with another --out)")
        if is_main:
            _truncate_metrics(out / "metrics.jsonl", state["epoch"])
        return state["epoch"] + 1, state
    _refuse_foreign_out(out, config)  # again under the lock: another run may have begun since
    return 1, None


def _strong_differences(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The strong-augmentation flags a resume changes, each named, compared as the views they make
    (``rand-m9-inc1`` and ``rand-inc1-m9`` are one policy)."""
    def resolved(given: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = ViewSpec(kind="crop", size=1, **given)
        except (BadInput, TypeError):  # a config.json edited by hand: compared as it reads
            return {**defaults, **given}
        return {name: getattr(spec, name) for name in STRONG_FIELDS}

    defaults = {f.name: f.default for f in dataclasses.fields(ViewSpec) if f.name in STRONG_FIELDS}
    a, b = resolved(was), resolved(now)
    return [f"--{name.replace('_', '-')} {a[name]!r} -> {b[name]!r}" for name in STRONG_FIELDS if a.get(name) != b.get(name)]


def _with_resolved_optimizer(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (a config's JSON) with the optimiser's settings resolved, so that a resume compares
    the optimiser really used: ``--opt auto`` is ``--opt adamw`` for an hf: student, and a run
    recorded before ``--opt`` (momentum 0.9, weight decay 5e-4 spelled out) is the SGD run it was."""
    keys = ("opt", "lr", "momentum", "weight_decay")
    c = TrainConfig(student=options["student"], dataset="", out="", **{k: options[k] for k in keys})
    return {**options, "opt": c.resolved_opt(), "lr": c.resolved_lr(), "momentum": c.resolved_momentum(),
            "weight_decay": c.resolved_weight_decay()}


def _refuse_foreign_out(out: Path, config: TrainConfig) -> None:
    """A new run goes into an empty or new folder only."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file: choose a folder for the run")
    if not config.resume and holds_run_files(out):
        raise BadInput(f"{out} already holds files: pass --resume to continue that run, or choose another --out")


def _load_state(last: Path) -> dict:
    """A run's last.pt, read as tensors only; a damaged or foreign file is refused in one line."""
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, or one holding Python objects (never unpickled)
        lines = str(e).strip().splitlines()
        raise CheckpointError(f"cannot resume from {last}: it is unreadable ({type(e).__name__}: "
                              f"{lines[0] if lines else ''}); start the run again with another --out") from None
    keys = ("model", "optimizer", "scheduler", "rng", "epoch", "best_acc", "best_epoch")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise CheckpointError(f"cannot resume from {last}: it is not a checkpoint written by `logitcache train` "
                              f"(needs {', '.join(keys)}); start the run again with another --out")
    return state


def _option_name(field_name: str) -> str:
    """The command-line option of a ``TrainConfig`` field, for messages."""
    return "--set" if field_name == "overrides" else "--" + field_name.replace("_", "-")


def _config_record(config: TrainConfig, hparams: dict, sources: _Sources, device: torch.device) -> dict:
    reader = sources.reader
    return {
        "config": config.to_json(),
        "hparams": hparams,
        "lr": config.resolved_lr(),
        "optimizer": config.optimizer_record(),
        "milestones": list(config.resolved_milestones()),
        "teacher": sources.teacher_record,
        "cache": None if reader is None else {"location": sources.cache, "spec": reader.spec.to_json()},
        "device": str(device),
        "versions": {"logitcache": _utils.tool_version(), "torch": torch.__version__},
    }


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]
    _utils.atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _wrap_distributed(student: nn.Module, device: torch.device, world_size: int, sync_bn: bool) -> nn.Module:
    return student if world_size == 1 else wrap_ddp(student, device, sync_bn=sync_bn)


def _epoch_line(epoch: int, epochs: int, stats: dict[str, float], test: dict[str, float],
                val: dict[str, float] | None, best: dict[str, float], lr: float) -> str:
    # One line per epoch survives in logs (Slurm, nohup) where progress bars are carriage-return noise.
    terms = ", ".join(f"{k[len('train_'):]} {v:.3f}" for k, v in stats.items()
                      if k.startswith("train_") and k not in ("train_loss", "train_acc"))
    if val is None:
        scores = f"test {test['top1']:.2f}% (best {best['acc']:.2f}% @{best['epoch']})"
    else:
        scores = (f"val {val['top1']:.2f}%  test {test['top1']:.2f}% "
                  f"(best val {best['score']:.2f}% @{best['epoch']}: test {best['acc']:.2f}%)")
    text = "ppl" in test  # language models: accuracies are next-token accuracies; loss and perplexity matter
    if text:
        scores += "".join(f"  {name} loss {m['nll']:.3f} ppl {m['ppl']:.2f}" for name, m in (("val", val), ("test", test))
                          if m is not None)
    return (f"epoch {epoch}/{epochs}  loss {stats['train_loss']:.3f}" + (f" ({terms})" if terms else "")
            + f"  train {stats['train_acc']:.2f}%  {scores}"
            + f"  lr {lr:g}  {stats['samples_per_second']:,.0f} {'seq' if text else 'img'}/s  {stats['seconds']:.1f} s")


_SYNC_EVERY = 20  # steps between reads of the running loss sums (progress bar, NaN check)


def _train_epoch(model, loss_fn, hparams, train_set, train_samples, view_spec, views, epoch_views, reader, teacher,
                 config, epoch, optimizer, scaler: torch.amp.GradScaler, compute: Compute, device, rank, world_size,
                 has_label: torch.Tensor | None) -> tuple[dict[str, float], int]:
    model.train()
    # Without a hold-out train_samples is arange(N), and the order is the plain epoch permutation.
    order = train_samples[epoch_order(config.seed, epoch, len(train_samples))]
    batches = global_batches(order, config.batch_size)
    # Running sums stay on the device: reading them back each step would make the host wait for
    # the GPU every step, so they are read only every _SYNC_EVERY steps and at the end.
    totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=device))
    correct_t = torch.zeros((), dtype=torch.int64, device=device)
    seen = seen_rows = forwards = 0
    start = time.perf_counter()
    bar = tqdm(total=len(order), unit="seq" if config.seq_len else "img", unit_scale=True, desc=f"epoch {epoch}/{config.epochs}",
               disable=not config.progress or rank != 0, leave=False)

    def local_batches() -> Iterator[ViewBatch]:
        for g in batches:
            mine = g[rank::world_size]
            v = epoch_views[mine]
            seeds = np.empty(len(mine), dtype=np.uint32)
            for view in np.unique(v):
                pick = v == view
                seeds[pick] = views.seeds(int(view))[mine[pick]]
            yield ViewBatch(samples=mine, seeds=seeds, clean=np.zeros(len(mine), dtype=bool))

    pairs = zip(batches, augmented_batches(train_set, view_spec, local_batches(), device=device, workers=config.workers))
    for step, (g, (batch, inputs)) in enumerate(pairs, start=1):
        target = _target(train_set, view_spec, batch, device)  # per row: an image, or a token position
        rows = train_set.rows(batch.samples)
        tview = _teacher_view(reader, teacher, np.repeat(epoch_views[batch.samples], train_set.rows_per_item), rows,
                              inputs, target, device, compute)
        forwards += len(batch) if teacher is not None else 0
        # (rows, classes): text's (B, L, V) too; methods compute their losses in fp32
        logits = compute.forward(model, inputs).flatten(0, -2)
        if has_label is None:
            losses = loss_fn(logits, tview, target, epoch=epoch, **hparams)
        else:
            losses = _semi_supervised_losses(loss_fn, logits, tview, ~has_label[batch.samples].to(device),
                                             epoch, hparams)
        loss = sum(losses.values())
        # Scale so that DDP's gradient average over ranks equals the mean over the global batch.
        scale = len(batch) * world_size / len(g)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * scale).backward()
        if config.clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not fp16's scaled ones (a no-op otherwise)
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)  # fp16: skipped when the scaled gradients overflowed, as GradScaler does
        scaler.update()
        n = len(batch)
        for k, v in losses.items():
            totals[k] += v.detach().double() * n
        totals["loss"] += loss.detach().double() * n
        correct_t += (logits.detach().argmax(dim=1) == target).sum()
        seen += n
        seen_rows += len(rows)
        bar.update(len(g))
        if step % _SYNC_EVERY == 0:
            means = _read_means(totals, seen, epoch, compute)
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()} | {"acc": f"{100 * int(correct_t) / seen_rows:.1f}"})
    bar.close()
    seconds = time.perf_counter() - start
    stats = {f"train_{k}": v for k, v in _read_means(totals, seen, epoch, compute).items()}
    stats.update(train_acc=100.0 * int(correct_t) / seen_rows, seconds=seconds,
                 samples_per_second=seen * world_size / seconds)
    return stats, forwards


def _semi_supervised_losses(loss_fn, logits: torch.Tensor, tview: TeacherView, unlabelled: torch.Tensor,
                            epoch: int, hparams: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A method's terms on a batch where ``unlabelled`` rows have no label (``--label-fraction``).

    Every KD term sees the teacher's top-1 class in place of a missing label (what DKD, LoCa and
    RLD read as "the true class"; the teacher view drops the hidden label too). The CE term, the
    method's ``ce_weight`` times the batch-mean cross-entropy, counts labelled rows only: summed
    over them and divided by the whole batch, so a labelled sample weighs what it weighs in a run
    with every label, and an unlabelled one adds nothing to CE.
    """
    tview = tview.with_teacher_labels(unlabelled)
    losses = loss_fn(logits, tview, tview.target, epoch=epoch, **hparams)
    per_sample = torch.nn.functional.cross_entropy(logits.float(), tview.target, reduction="none")
    losses["ce"] = hparams[CE_WEIGHT_KEY] * (per_sample * ~unlabelled).sum() / len(per_sample)
    return losses


def _read_means(totals: dict[str, torch.Tensor], seen: int, epoch: int, compute: Compute) -> dict[str, float]:
    """Per-sample means of the running sums (one host-device sync), refusing a loss gone NaN/inf."""
    means = {k: float(v) / seen for k, v in totals.items()}
    if not math.isfinite(means["loss"]):
        amp = f", or train with --precision {'bf16 or ' if compute.precision == 'fp16' else ''}fp32" if compute.amp else ""
        raise BadInput(f"loss became {means['loss']} at epoch {epoch}: lower --lr or check --set values{amp}")
    return means


def _target(train_set: Dataset, view_spec: ViewSpec, batch: ViewBatch, device: torch.device) -> Tensor:
    """(B,) labels on the device; for mixed views the true classes carrying the pair (MixedTarget)."""
    true = torch.from_numpy(true_labels(train_set, view_spec, batch)).to(device, non_blocking=True)
    if not view_spec.mixing:
        return true
    mix = batch.mix(view_spec, len(train_set))
    own, other = (torch.from_numpy(train_set.labels[i]).to(device) for i in (batch.samples, mix.partner))
    return mixed_target(true, own, other, torch.from_numpy(mix.lam).to(device))


def _teacher_view(reader, teacher, views, rows, inputs, target, device, compute: Compute) -> TeacherView | None:
    """The teacher's information on each row of the batch (``views``: each row's view): from the
    online teacher's forward pass over the batch's inputs, else from the cache."""
    if teacher is not None:
        with torch.inference_mode():
            logits = compute.forward(teacher, inputs).flatten(0, -2)
        return TeacherView.from_logits(logits.clone(), target)
    if reader is not None:
        return reader.read(views, rows).to(device)
    return None


@dataclass
class Evaluation:
    """What ``evaluate_checkpoint`` measured, and on what."""

    model: str
    dataset: str
    split: str
    images: int
    num_classes: int
    metrics: dict[str, float]  # top1, top5 (only with 6 or more classes), nll, ece
    warnings: list[str] = field(default_factory=list)


def evaluate_checkpoint(model_name: str | None, checkpoint: str | os.PathLike, dataset: str, *, split: str = "test",
                        data_root: str | None = None, device: str = "auto", precision: str = "fp32",
                        channels_last: bool = False) -> Evaluation:
    """Top-1/top-5 (%), NLL and ECE of a checkpoint on the clean images of a dataset split, the
    forward run at ``precision`` (the metrics in fp32).

    Without ``model_name``, the checkpoint must lie in a ``train`` run folder, whose
    ``config.json`` names the model. A checkpoint in a run folder is checked against the data
    that run recorded: another class count is refused, other images are a warning.
    """
    if model_name is None:
        model_name = _run_model(Path(checkpoint))
    dev = _utils.resolve_device(device)
    compute = Compute.on(dev, precision, channels_last)
    data = _as_trained(open_dataset(dataset, split, data_root=data_root), model_name, Path(checkpoint))
    warnings = _check_run_data(Path(checkpoint), data)
    model = create_model(model_name, num_classes=data.num_classes)
    load_checkpoint(model, checkpoint)
    return Evaluation(model=model_name, dataset=data.name, split=split, images=len(data), num_classes=data.num_classes,
                      metrics=evaluate_model(compute.model(model.to(dev)), data, device=dev, compute=compute),
                      warnings=warnings)


def _as_trained(data: ImageDataset, model_name: str, checkpoint: Path) -> ImageDataset:
    """``data`` fed as the checkpoint's run fed its student (its recorded input, --mean/--std
    included), or as ``model_name`` expects outside a run folder of that model."""
    saved = _saved_run(checkpoint.parent) or {}
    recorded = saved.get("student_input")
    if isinstance(recorded, dict) and saved["config"].get("student") == model_name:
        return ModelInput.from_json(recorded).fit(data)
    return fit_to_model(data, model_name)[0]


def _check_run_data(checkpoint: Path, data: Dataset) -> list[str]:
    """Compare ``data`` with the split the checkpoint's run recorded (runs before this record: no check)."""
    ran = ((_saved_run(checkpoint.parent) or {}).get("data") or {}).get(data.split)
    if not isinstance(ran, dict):
        return []
    run = checkpoint.parent
    if ran.get("num_classes") != data.num_classes:
        raise BadInput(f"{data.name} has {data.num_classes} classes but the run in {run} trained on {ran.get('name')} "
                       f"with {ran.get('num_classes')}: evaluate on the run's dataset (--dataset {ran.get('name')})")
    if ran.get("fingerprint") != data.fingerprint:
        return [f"{data.name} {data.split} ({len(data):,} images, fingerprint {data.fingerprint[:12]}) is not the "
                f"{ran.get('name')} {data.split} split the run in {run} recorded ({ran.get('num_samples'):,} images, "
                f"fingerprint {str(ran.get('fingerprint'))[:12]}): these numbers are on other data"]
    return []


def _run_model(checkpoint: Path) -> str:
    saved = _saved_config(checkpoint.parent)
    if saved is None or "student" not in saved:
        raise BadInput(f"{checkpoint} is not in a `logitcache train` run folder (no readable config.json "
                       "beside it): pass --model NAME")
    return saved["student"]
