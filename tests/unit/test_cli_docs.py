"""Every CLI command is documented in the README (sqlite-utils does the same)."""

from pathlib import Path

import typer.main

from sftp_pipeline.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _commands(group: typer.Typer, prefix: str = "") -> list[str]:
    names = [f"{prefix}{c.name or c.callback.__name__}" for c in group.registered_commands]  # type: ignore[union-attr]
    for sub in group.registered_groups:
        names += _commands(sub.typer_instance, f"{prefix}{sub.name} ")  # type: ignore[arg-type]
    return names


def test_every_command_is_in_the_readme() -> None:
    commands = _commands(app)
    assert {"send", "serve", "status", "keys generate", "keys list", "demo"} <= set(commands)
    missing = [c for c in commands if c != "version" and f"sftp-pipeline {c}" not in README]
    assert not missing, f"document these commands in README.md: {missing}"
