"""Every command's help, read from the click tree in-process: no database, no subprocess."""
from __future__ import annotations

from collections.abc import Iterator

import click

from renas_db.cli.main import cli


def _walk(group: click.Group,
          prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, prefix + (name,))


def test_every_command_has_help_with_an_example():
    commands = list(_walk(cli))
    assert len(commands) >= 12
    for path, cmd in commands:
        text = cmd.help or ""
        assert len(text.strip()) > 20, path
        assert "Example: renas-db" in text, path
