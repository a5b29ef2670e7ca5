"""Command-line flags derived from a run configuration's fields (``PretrainConfig``, ``FinetuneConfig``), as
``option()`` in ``service/commands.py`` maps ``fsfm serve``'s flags onto ``Settings`` fields.

Contract: a flag's own default is None, so an unset flag leaves the field to the ``--config`` file or to the
configuration's default; the help text states that default, read from the field, never written twice.
Choices come from the field's ``Literal`` type, so a new choice is one edit in the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def config_option(config: type[BaseModel], field: str, help: str, *param_decls: str, **kwargs: Any) -> Any:
    """A flag for ``config``'s field ``field`` (``--field-name`` unless ``param_decls`` say otherwise) whose
    help ends with the field's default, when it has one."""
    info = config.model_fields[field]
    default = info.default
    if default is not None and default is not PydanticUndefined and info.default_factory is None:
        help = f"{help.rstrip('.')} (default {_shown(default)})."
    return typer.Option(None, *param_decls, help=help, **kwargs)


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A string Enum (what Typer lists as choices) with one member per value, named as the value."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


def literal_choices(name: str, config: type[BaseModel], field: str) -> type[Enum]:
    """``choices`` of the ``Literal`` values a field accepts (``Optional[Literal[...]]`` included)."""
    annotation = config.model_fields[field].annotation
    literals = [arg for arg in (annotation, *get_args(annotation)) if get_origin(arg) is Literal]
    if not literals:
        raise TypeError(f"{config.__name__}.{field} is not a Literal field")
    return choices(name, get_args(literals[0]))
