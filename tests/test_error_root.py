"""One error root (issue 16): every public error class of every embcat module subclasses
``embcat.errors.EmbcatError``; the CLI's one-line handling and the API's status map both
work from that root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest
from click.testing import CliRunner

import embcat
from embcat import api, catalog, encoders
from embcat.api.errors import status_of
from embcat.errors import EmbcatError

PACKAGES: tuple[ModuleType, ...] = (embcat, catalog, encoders, api)


def _modules() -> list[ModuleType]:
    found = []
    for package in PACKAGES:
        found.append(package)
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            found.append(importlib.import_module(info.name))
    return found


def _public_errors() -> list[type[BaseException]]:
    errors = []
    for module in _modules():
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                errors.append(obj)
    return errors


def test_the_enumeration_finds_the_known_hierarchies() -> None:
    names = {cls.__qualname__ for cls in _public_errors()}
    assert {"InvalidInput", "EncodeError", "InputError", "ClientError", "RemoteError"} <= names


@pytest.mark.parametrize("cls", _public_errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_public_error_subclasses_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, EmbcatError)


def test_the_root_module_imports_neither_the_database_nor_fastapi() -> None:
    code = (
        "import sys, embcat.errors, encoders.errors, embcat.client; "
        "bad = [m for m in ('psycopg', 'sqlalchemy', 'fastapi') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_api_maps_an_encoder_error_by_the_root_to_400() -> None:
    from embcat.encoders.errors import EncoderNotFound

    assert status_of(EncoderNotFound("no encoder 'x'")) == 400


@pytest.mark.parametrize(
    "error",
    [
        "embcat.encoders.errors:InputError",
        "embcat.client:ClientError",
        "embcat.catalog.mirror:RemoteError",
        "embcat.catalog.errors:NotFound",
    ],
)
def test_the_cli_prints_any_embcat_error_as_one_line(error: str) -> None:
    import click

    from embcat.cli import main

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)
    exc = cls(404, "no such thing") if name == "ClientError" else cls("no such thing")

    @click.command("explode")
    def explode() -> None:
        raise exc

    main.add_command(explode)
    try:
        result = CliRunner().invoke(main, ["explode"])
    finally:
        main.commands.pop("explode")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such thing" in lines[0]
    assert "unexpected" not in lines[0]
