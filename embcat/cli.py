"""The ``embcat`` command line: the one composition root of the project.

Each command group lives in ``embcat/commands/<area>.py`` and is registered below. The
modules import their heavy dependencies (torch, FastAPI) inside the commands, so that
``embcat --help`` stays fast and HPC nodes never import the web stack.
"""

from __future__ import annotations

import logging
import sys

import click

from catalog.errors import EmbcatError
from embcat import __version__
from embcat.commands import db as db_commands
from embcat.commands import encode as encode_commands
from embcat.commands import exchange as exchange_commands
from embcat.commands import publish as publish_commands
from embcat.commands import serve as serve_commands


class EmbcatGroup(click.Group):
    """Turns domain errors into a one-line message and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EmbcatError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=EmbcatGroup)
@click.version_option(__version__, prog_name="embcat")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """embcat: STAC catalogue and data exchange for Earth-observation embeddings."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


main.add_command(db_commands.db)
main.add_command(publish_commands.publish)
main.add_command(publish_commands.publishes)
main.add_command(publish_commands.index)
main.add_command(publish_commands.demo)
main.add_command(encode_commands.encoders)
main.add_command(encode_commands.encode_command)
main.add_command(serve_commands.serve)
main.add_command(serve_commands.keys)
main.add_command(exchange_commands.export_command)
main.add_command(exchange_commands.mirror_command)
main.add_command(exchange_commands.stats_command)


if __name__ == "__main__":  # pragma: no cover
    main()
