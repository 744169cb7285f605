"""``logitcache info``: metadata, size and teacher statistics of a cache."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from logitcache._utils import plural
from logitcache.info import CacheInfo, ViewStats, cache_info, distinct_views
from logitcache.models import ModelInput
from logitcache.store.format import EncodingInfo
from logitcache.views import ViewSpec

from ._options import JsonOpt, QuietOpt, human_bytes


def info_command(
    cache: Annotated[str, typer.Argument(help="Path or URL of the store.")],
    stats: Annotated[bool, typer.Option(help="Read every view to compute teacher statistics.")] = True,
    epochs: Annotated[int | None, typer.Option(help="Say how many distinct views per sample a run of this many epochs shows [default: one epoch per stored view].")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a cache holds: teacher, dataset, views, encoding, size on disk, compression,
    teacher accuracy, mis-instruction rate, mean entropy and expected calibration error."""
    asked = epochs is not None
    if asked:
        distinct_views(1, epochs)  # a bad --epochs is refused before the store is read
    info = cache_info(cache, stats=stats, progress=not quiet and not as_json)
    count = info.spec["views"]["count"]
    epochs = count if epochs is None else epochs
    # Text has no augmented views: every epoch shows the one clean view.
    seen = distinct_views(count, epochs) if count else None
    if as_json:
        d = dataclasses.asdict(info)
        d.update(compression_ratio=info.compression_ratio, bytes_per_pair=info.bytes_per_pair,
                 distinct_views=None if seen is None else {"epochs": epochs, **seen})
        if info.clean is not None:
            d["clean"]["perplexity"] = info.clean.perplexity
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(render(info))
    if seen is not None:
        typer.echo(f"epochs       a run of {plural(epochs, 'epoch')} shows each sample {seen['cycle']:g} distinct "
                   f"augmented view{'s' * (seen['cycle'] != 1)} with --view-policy cycle (a fresh view each epoch "
                   f"for {plural(count, 'epoch')}), {seen['random']:.1f} on average with random")
    elif asked:  # said, rather than --epochs ignored
        typer.echo(f"epochs       a run of {plural(epochs, 'epoch')} shows each sample its one clean view every epoch "
                   "(token rows are not augmented)")


def render(info: CacheInfo) -> str:
    s, p = info.spec, info.provenance
    t, d, v = s["teacher"], s["dataset"], s["views"]
    enc = EncodingInfo(**s["encoding"])
    acc = p.get("teacher_test_accuracy")
    layout = s["layout"]
    text = bool(d.get("seq_len"))
    lines = [
        f"cache        {info.location}  (format v{s['format_version']}, logitcache {p['tool_version']})",
        f"status       {'complete' if p['complete'] else 'INCOMPLETE'}; created {p['created_at']}"
        + (f", finished {p['finished_at']}" if p.get("finished_at") else ""),
        f"teacher      {t['name']}  weights sha256 {t['weights_sha256'][:16]}…"
        + (f"  test {'next-token ' * text}accuracy {acc:.2f}% ({plural(p['teacher_test_samples'], 'token' if text else 'image')})"
           if acc is not None else ""),
        *([f"teacher in   {ModelInput.from_json(t['input']).describe(ViewSpec.from_json(v['augmentation']))}"]
          if t.get("input") else []),
        # Stores dumped before these fields existed ran the teacher in fp32, contiguous.
        f"forward      {s.get('precision', 'fp32')}" + (", channels-last" if s.get("channels_last") else "")
        + " (the teacher's, as dumped and as verify replays it)",
        _dataset_line(d),
        "views        one clean view of token rows (text is not augmented)" if text else
        f"views        {v['count']} augmented" + (" + clean view 0" if v["clean"] else "")
        + f", seed {v['seed']}, {ViewSpec.from_json(v['augmentation']).describe()}",
        f"encoding     {enc.describe()}; chunks of {plural(layout['chunk_samples'], 'sample')}"
        + (f", {plural(layout['shard_chunks'], 'chunk')} per shard" if layout["shard_chunks"] else ""),
        f"stored as    {_stored_as(enc)}",
        f"size         {human_bytes(info.bytes_on_disk)} on disk, {human_bytes(info.raw_bytes)} raw: "
        f"ratio {info.compression_ratio:.2f}, {info.bytes_per_pair:.1f} B per "
        + ("token" if text else "sample-view"),
    ]
    for label, st in (("tokens" if text else "clean view", info.clean), ("augmented", info.augmented)):
        if st is not None:
            lines.append(_stats_line(label, st, text))
    lines += [f"note         {n}" for n in info.notes]
    return "\n".join(lines)


def _stored_as(enc: EncodingInfo) -> str:
    """What the encoding keeps of each (view, sample) pair, in words (docs/format.md has the detail)."""
    if enc.kind == "sampled":
        return (f"the distinct classes of {enc.samples} draws from the softmax at T={enc.temperature:g} with their "
                "counts; lse and the true-class logit in fp32")
    if enc.kind == "full":
        if enc.dtype == "fp32":
            return "every logit, fp32"
        return f"every logit as its gap from the top logit in {enc.dtype}, the top logit in fp32"
    k = f"the top {enc.k} logits" if enc.k > 1 else "the top logit"
    if enc.dtype == "q8":
        return f"{k} as 8-bit gaps from the top (1/16 nat), lse and true-class logit as 16-bit gaps"
    if enc.dtype == "fp32" or enc.k == 1:
        return f"{k} in fp32 with their classes, lse and the true-class logit in fp32"
    return (f"{k} as gaps from the top-1 logit in {enc.dtype} with their classes; top-1, lse and true-class "
            "logit in fp32")


def _dataset_line(d: dict) -> str:
    if d.get("seq_len"):
        return (f"dataset      {d['name']} [{d['split']}]  {plural(d['num_samples'], 'token')} in "
                f"{plural(d['num_samples'] // d['seq_len'], 'sequence')} of {d['seq_len']}, vocabulary "
                f"{d['num_classes']:,}, tokenizer {d['tokenizer'][:16]}…, fingerprint {d['fingerprint'][:16]}…")
    return (f"dataset      {d['name']} [{d['split']}]  {plural(d['num_samples'], 'sample')}, {d['num_classes']} classes, "
            f"fingerprint {d['fingerprint'][:16]}…")


def _stats_line(label: str, st: ViewStats, text: bool) -> str:
    if text:  # rows are positions, the true class the next token
        if st.misinstruction_rate is None:
            return f"{label:<12} teacher perplexity {st.perplexity:.2f}  [{plural(st.samples, 'token')}]"
        return (f"{label:<12} teacher perplexity {st.perplexity:.2f}, next-token accuracy "
                f"{100 * (1 - st.misinstruction_rate):.2f}%, mis-instruction {100 * st.misinstruction_rate:.2f}%, "
                f"ECE {st.ece:.4f}, mean entropy {st.mean_entropy:.3f} nats  [{plural(st.samples, 'token')}]")
    if st.misinstruction_rate is None:
        return f"{label:<12} mean p(true class) {st.mean_target_prob:.3f}  [{plural(st.samples, 'pair')}]"
    return (
        f"{label:<12} teacher top-1 {100 * (1 - st.misinstruction_rate):.2f}%, mis-instruction "
        f"{100 * st.misinstruction_rate:.2f}%, mean entropy {st.mean_entropy:.3f} nats, ECE {st.ece:.4f}, "
        f"mean p(true class) {st.mean_target_prob:.3f}  [{plural(st.samples, 'pair')}]"
    )


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
