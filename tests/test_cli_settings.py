"""The CLI's settings tree (issue 16, item 5): each section read once per run when a
command first needs it; a bad variable is one line naming it."""

from __future__ import annotations

import os

from click.testing import CliRunner

from embcat.cli import main


def _env(**extra: str) -> dict[str, str]:
    return {"EMBCAT_DATABASE_URL": os.environ["EMBCAT_DATABASE_URL"], **extra}


def test_a_command_does_not_read_the_sections_it_does_not_use() -> None:
    result = CliRunner().invoke(main, ["db", "check"], env=_env(EMBCAT_HNSW_M="many"))
    assert result.exit_code == 0, result.output


def test_a_bad_variable_of_a_section_in_use_is_named() -> None:
    result = CliRunner().invoke(
        main, ["index", "build", "nope-collection"], env=_env(EMBCAT_HNSW_M="many")
    )
    assert result.exit_code == 1
    assert "invalid setting: EMBCAT_HNSW_M='many'" in result.output
