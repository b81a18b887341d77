"""The command groups of ``embcat`` (registered in embcat/cli.py) and the CLI's settings.

The CLI is a composition root: ``cli_settings()`` is the settings tree of one run (the
sections of ``embcat.catalog.settings.Settings``), and the commands pass its parts down
to the library calls. Each section is read from the environment once per run, when a
command first needs it, so that a command never fails on a variable it does not use.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embcat.catalog.settings import DatabaseSettings, MirrorSettings, Settings
    from embcat.catalog.similarity import SimilaritySettings
    from embcat.catalog.store.spaces import IndexSettings

_KEY = "embcat.settings"


class CliSettings:
    """The settings tree of one command-line run, section by section on first use."""

    @cached_property
    def database(self) -> DatabaseSettings:
        from embcat.catalog.settings import DatabaseSettings, read_env

        return read_env(DatabaseSettings)

    @cached_property
    def similarity(self) -> SimilaritySettings:
        from embcat.catalog.settings import read_env
        from embcat.catalog.similarity import SimilaritySettings

        return read_env(SimilaritySettings)

    @cached_property
    def index(self) -> IndexSettings:
        from embcat.catalog.settings import read_env
        from embcat.catalog.store.spaces import IndexSettings

        return read_env(IndexSettings)

    @cached_property
    def mirror(self) -> MirrorSettings:
        from embcat.catalog.settings import MirrorSettings, read_env

        return read_env(MirrorSettings)

    def tree(self) -> Settings:
        """The whole tree (every section read)."""
        from embcat.catalog.settings import Settings

        return Settings(self.database, self.similarity, self.index, self.mirror)


def cli_settings() -> CliSettings:
    """The settings of this command-line run (one per run, kept on the root context)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return CliSettings()
    meta = ctx.find_root().meta
    found = meta.get(_KEY)
    if found is None:
        found = meta[_KEY] = CliSettings()
    return found
