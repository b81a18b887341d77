"""Configuration surface: compose.yaml sets only variables the settings read, and the README
lists every setting."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import yaml
from pydantic_settings import BaseSettings

from embcat import api, catalog, encoders

ROOT = Path(__file__).resolve().parent.parent


def _settings_classes() -> list[type[BaseSettings]]:
    found: set[type[BaseSettings]] = set()
    for pkg in (catalog, api, encoders):
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseSettings)
                    and str(value.model_config.get("env_prefix", "")).startswith("EMBCAT_")
                ):
                    found.add(value)
    return sorted(found, key=lambda c: c.__qualname__)


def _env_names() -> set[str]:
    names: set[str] = set()
    for cls in _settings_classes():
        prefix = str(cls.model_config.get("env_prefix"))
        for field_name, field in cls.model_fields.items():
            if field.exclude or field_name.startswith("stac_fastapi_"):
                continue
            names.add(f"{prefix}{field_name.upper()}")
    return names


def test_compose_sets_only_variables_the_settings_read() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    readable = _env_names()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key.startswith("EMBCAT_"):
                assert key in readable, f"compose service {name} sets {key}, which nothing reads"


def test_compose_api_waits_for_a_healthy_database() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    api = compose["services"]["api"]
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["db"]
    assert "embcat db upgrade" in " ".join(api["command"])
    assert compose["volumes"] and "pgdata" in compose["volumes"]


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in _env_names() if f"`{name}`" not in readme)
    assert not missing, f"settings missing from the README's configuration table: {missing}"
