"""Command-line output shared by every command module (``fsfm.cli``, ``training``'s and ``benchmarks``'
commands, the ``fsfm_cli`` app that mounts them).

Contract: ``fail`` writes ``error: <message>`` as one line on stderr and exits with ``code`` (2 by
default, Click's usage-error code), so errors a user can fix never show a traceback.
"""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and a non-zero exit: no traceback for errors the user can fix."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
