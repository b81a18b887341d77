"""The command groups of ``embcat`` (registered in embcat/cli.py) and the CLI's settings.

The CLI is a composition root: ``cli_settings()`` builds the settings tree
(``embcat.catalog.settings.Settings``) from the environment once per run, the first time a
command needs it, and the commands pass its parts down to the library calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embcat.catalog.settings import Settings

_KEY = "embcat.settings"


def cli_settings() -> Settings:
    """The settings tree of this command-line run (built on first use, then kept)."""
    import click

    from embcat.catalog.settings import Settings

    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else {}
    tree = meta.get(_KEY)
    if tree is None:
        tree = meta[_KEY] = Settings.from_env()
    return tree
