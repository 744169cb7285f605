"""``logitcache info``: metadata, size and teacher statistics of a cache."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from logitcache.info import CacheInfo, ViewStats, cache_info

from ._options import JsonOpt, QuietOpt, human_bytes


def info_command(
    cache: Annotated[str, typer.Argument(help="Path or URL of the store.")],
    stats: Annotated[bool, typer.Option(help="Read every view to compute teacher statistics.")] = True,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a cache holds: teacher, dataset, views, encoding, size on disk, compression,
    teacher accuracy, mis-instruction rate, mean entropy and expected calibration error."""
    info = cache_info(cache, stats=stats, progress=not quiet and not as_json)
    if as_json:
        d = dataclasses.asdict(info)
        d.update(compression_ratio=info.compression_ratio, bytes_per_pair=info.bytes_per_pair)
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(render(info))


def render(info: CacheInfo) -> str:
    s, p = info.spec, info.provenance
    t, d, v, e = s["teacher"], s["dataset"], s["views"], s["encoding"]
    enc = f"full {e['dtype']}" if e["kind"] == "full" else f"top-{e['k']} {e['dtype']}"
    acc = p.get("teacher_test_accuracy")
    lines = [
        f"cache        {info.location}  (format v{s['format_version']}, logitcache {p['tool_version']})",
        f"status       {'complete' if p['complete'] else 'INCOMPLETE'}; created {p['created_at']}"
        + (f", finished {p['finished_at']}" if p.get("finished_at") else ""),
        f"teacher      {t['name']}  weights sha256 {t['weights_sha256'][:16]}…"
        + (f"  test accuracy {acc:.2f}% ({p['teacher_test_samples']} images)" if acc is not None else ""),
        f"dataset      {d['name']} [{d['split']}]  {d['num_samples']:,} samples, {d['num_classes']} classes, "
        f"fingerprint {d['fingerprint'][:16]}…",
        f"views        {v['count']} augmented" + (" + clean view 0" if v["clean"] else "")
        + f", seed {v['seed']}, {_aug(v['augmentation'])}",
        f"encoding     {enc}; chunks of {s['layout']['chunk_samples']} samples"
        + (f", {s['layout']['shard_chunks']} chunks per shard" if s["layout"]["shard_chunks"] else ""),
        f"size         {human_bytes(info.bytes_on_disk)} on disk, {human_bytes(info.raw_bytes)} raw: "
        f"ratio {info.compression_ratio:.2f}, {info.bytes_per_pair:.1f} B per sample-view",
    ]
    for label, st in (("clean view", info.clean), ("augmented", info.augmented)):
        if st is not None:
            lines.append(_stats_line(label, st))
    lines += [f"note         {n}" for n in info.notes]
    return "\n".join(lines)


def _aug(a: dict) -> str:
    flip = "+flip" if a["flip"] else ""
    if a["kind"] == "crop":
        return f"crop({a['size']}, pad={a['padding']}){flip}"
    return f"resized_crop({a['size']}, scale={tuple(a['scale'])}){flip}"


def _stats_line(label: str, st: ViewStats) -> str:
    return (
        f"{label:<12} teacher top-1 {100 * (1 - st.misinstruction_rate):.2f}%, mis-instruction "
        f"{100 * st.misinstruction_rate:.2f}%, mean entropy {st.mean_entropy:.3f} nats, ECE {st.ece:.4f}, "
        f"mean p(true class) {st.mean_target_prob:.3f}  [{st.samples:,} pairs]"
    )


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
