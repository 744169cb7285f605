"""``logitcache pack`` / ``unpack``: one file to send a cache around."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.store.pack import pack, unpack

from ._options import human_bytes


def pack_command(
    cache: Annotated[str, typer.Argument(help="Local store folder.")],
    archive: Annotated[str, typer.Argument(help="The .zip file to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing archive.")] = False,
) -> None:
    """Pack a complete store into one .zip file, readable in place by every command."""
    path = pack(cache, archive, overwrite=overwrite)
    typer.echo(f"packed {cache} into {path} ({human_bytes(path.stat().st_size)})")


def unpack_command(
    archive: Annotated[str, typer.Argument(help="A .zip made by `logitcache pack`.")],
    cache: Annotated[str, typer.Argument(help="The store folder to create.")],
) -> None:
    """Unpack a packed store into a folder."""
    typer.echo(f"unpacked {archive} into {unpack(archive, cache)}")


def register(app: typer.Typer) -> None:
    app.command("pack")(pack_command)
    app.command("unpack")(unpack_command)
