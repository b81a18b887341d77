"""The ``embcat`` command line: the one composition root of the project.

Each command group lives in ``embcat/commands/<area>.py`` and is registered below. The
modules import their heavy dependencies (torch, FastAPI) inside the commands, so that
``embcat --help`` stays fast and HPC nodes never import the web stack.

Every failure ends as one line on stderr, ``error: <cause and fix>``, and a non-zero exit
status (2 for bad usage, 1 otherwise): embcat's errors (the one root
:class:`embcat.errors.EmbcatError`: catalogue, encoder, mirror and client errors), click's
usage errors and, as a last resort, any unexpected exception (its traceback only with
``-v``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from embcat import __version__
from embcat.commands import collections as collections_commands
from embcat.commands import db as db_commands
from embcat.commands import encode as encode_commands
from embcat.commands import exchange as exchange_commands
from embcat.commands import publish as publish_commands
from embcat.commands import score as score_commands
from embcat.commands import serve as serve_commands
from embcat.commands import shards as shard_commands
from embcat.errors import EmbcatError

log = logging.getLogger("embcat.cli")


def one_line(message: str) -> str:
    """A message on one line (multi-line causes joined with '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts) or "failed"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` (one line, stderr) and exit with ``code``."""
    click.secho(f"error: {one_line(message)}", fg="red", err=True)
    sys.exit(code)


class EmbcatGroup(click.Group):
    """Turns every error into one line on stderr and a non-zero exit status (no traceback)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except EmbcatError as exc:
            fail(getattr(exc, "detail", None) or str(exc))
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a trace
            if (ctx.obj or {}).get("verbose"):
                log.exception("unexpected error")
            fail(
                f"unexpected {type(exc).__name__}: {exc} (rerun with -v for the traceback"
                " and report it)"
            )

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "embcat"
            fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted")
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=EmbcatGroup)
@click.version_option(__version__, prog_name="embcat")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """embcat: STAC catalogue and data exchange for Earth-observation embeddings."""
    ctx.obj = {"verbose": verbose}
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
main.add_command(shard_commands.shard)
main.add_command(exchange_commands.stats_command)
main.add_command(collections_commands.collections)
main.add_command(score_commands.score_command)


if __name__ == "__main__":  # pragma: no cover
    main()
