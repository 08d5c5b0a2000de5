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


def test_workers_per_gpu_fill_each_gpu_in_turn_then_the_cpu():
    from renas_db.cli.worker_commands import _local_devices
    assert _local_devices(5, 2, gpus=2) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cpu"]
    assert _local_devices(3, 1, gpus=1) == ["cuda:0", "cpu", "cpu"]
    assert _local_devices(2, 4, gpus=0) == ["cpu", "cpu"]
