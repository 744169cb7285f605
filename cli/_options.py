"""Options shared by several commands, so that they read the same everywhere."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

import typer

from logitcache._utils import human_bytes  # noqa: F401 (re-exported for the commands)
from logitcache.errors import BadInput
from logitcache.views import STRONG_FIELDS, ViewSpec

DeviceOpt = Annotated[str, typer.Option(help="auto (GPU if present, else CPU), cpu, cuda or cuda:N.")]
DataRootOpt = Annotated[
    str | None,
    typer.Option(help="Folder holding the dataset (e.g. the one containing cifar-100-python/). Not needed for digits/synthetic."),
]
CheckpointOpt = Annotated[str | None, typer.Option(help="Teacher weights: a state dict saved with torch.save (.pt, .pth, pytorch_model.bin) or a .safetensors file; never downloaded.")]
RandomInitOpt = Annotated[bool, typer.Option(help="Seeded random teacher weights instead of a checkpoint (tests only).")]
PrecisionOpt = Annotated[str, typer.Option(help="Forward precision: fp32, or autocast to bf16 or fp16 (GPUs; bf16 also on CPUs); losses and stored logits stay fp32-computed.")]
ChannelsLastOpt = Annotated[bool, typer.Option("--channels-last", help="Model and images in channels-last (NHWC) memory format: faster convolutions on many GPUs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
# Strong augmentation and mixing, timm's flags: dump records them in the store; train takes them only
# without a cache (a cache's own augmentation is always the one replayed).
AaOpt = Annotated[str | None, typer.Option(help="Auto-augment per view, timm's spelling: rand-m9-mstd0.5-inc1 (RandAugment) or trivial (TrivialAugment).")]
ColorJitterOpt = Annotated[float, typer.Option(help="Colour jitter strength (brightness, contrast, saturation); not with --aa, as in timm.")]
ReprobOpt = Annotated[float, typer.Option(help="Random-erasing probability per view (timm's --reprob).")]
MixupOpt = Annotated[float, typer.Option(help="Mixup Beta alpha; > 0 mixes each view with a partner drawn from its seed.")]
CutmixOpt = Annotated[float, typer.Option(help="CutMix Beta alpha; > 0 pastes a partner's box, drawn from the seed.")]
MixupProbOpt = Annotated[float, typer.Option(help="Probability that a view is mixed at all (timm's --mixup-prob).")]
MixupSwitchProbOpt = Annotated[float, typer.Option(help="Probability of CutMix rather than mixup when both are on.")]


# The model's input normalisation: the teacher's for dump, the student's for train.
MeanOpt = Annotated[str | None, typer.Option(help="Normalisation mean of the model's input, R,G,B or one value [default: its own config's (timm:), else the dataset's].")]
StdOpt = Annotated[str | None, typer.Option(help="Normalisation std of the model's input, R,G,B or one value [default: as --mean].")]


def channel_values(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` as numbers (ModelInput checks how many and their range), None if not given."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"cannot read {option} {text!r}: use one number or three, comma-separated, e.g. 0.485,0.456,0.406") from None


def strong_augmentation(aa: str | None, color_jitter: float, reprob: float, mixup: float, cutmix: float,
                        mixup_prob: float, mixup_switch_prob: float) -> dict[str, Any]:
    """The options that were given, as ViewSpec fields (an empty dict: none was)."""
    if aa is not None and not aa.strip():  # e.g. --aa "$AA" with AA unset: it would quietly augment nothing
        raise BadInput("--aa is empty: give a policy (rand-m9-mstd0.5-inc1 or trivial), or drop --aa")
    given = dict(aa=aa or "", color_jitter=color_jitter, reprob=reprob, mixup=mixup, cutmix=cutmix,
                 mixup_prob=mixup_prob, mixup_switch_prob=mixup_switch_prob)
    defaults = {f.name: f.default for f in fields(ViewSpec) if f.name in STRONG_FIELDS}
    return {k: v for k, v in given.items() if v != defaults[k]}
SeqLenOpt = Annotated[int | None, typer.Option(
    help="Text datasets: tokens per packed sequence (at most the model's max_position_embeddings).")]
