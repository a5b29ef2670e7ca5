"""Command-line flags derived from a configuration's fields: ``fsfm serve`` and ``fsfm worker`` map theirs onto
``Settings`` fields (``option()`` in ``service/commands.py``), ``fsfm prepare``, ``fsfm pretrain`` and
``fsfm finetune`` onto ``PrepareConfig``, ``PretrainConfig`` and ``FinetuneConfig`` fields.

Contract: a flag's own default is None, so an unset flag leaves the field to the environment, the ``--config``
file or the configuration's default; the help text ends with that default, read from the field, never written
twice. Choices are string Enums built from where the values are defined (a ``Literal`` field, a tuple), so
the help lists them, an invalid value is refused with the list, and a new choice is one edit at its source; a
command passes a choice on as its string with ``plain``. ``PrecisionChoice`` and ``TaskChoice`` are those every
command shares. Engines are a registry that may grow after the CLI loads (``fsfm.engines.registry.register``),
so ``ENGINE_CHOICE`` checks a value against the registry as it is when the value is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fsfm.engines.registry import engine_names
from fsfm.engines.select import AUTO
from fsfm.package.manifest import PRECISIONS, TASKS


def field_default(config: type[BaseModel], field: str) -> Any | None:
    """The field's default value, or None when it has none to show (required, None, or made by a factory)."""
    info = config.model_fields[field]
    if info.default is PydanticUndefined or info.default_factory is not None:
        return None
    return info.default


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def config_option(
    config: type[BaseModel], field: str, help: str, *param_decls: str, state_default: bool = True, **kwargs: Any
) -> Any:
    """A flag for ``config``'s field ``field`` (``--field-name`` unless ``param_decls`` say otherwise) whose
    help ends with the field's default, when it has one and ``state_default`` (False where the default is
    refused, as a worker's ``queue``); ``kwargs`` go to ``typer.Option``."""
    default = field_default(config, field)
    if state_default and default is not None:
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


def live_choice(values: Callable[[], Sequence[str]]) -> dict[str, Any]:
    """``typer.Option`` keywords for a string among ``values()``, read when a value is parsed; the help lists
    the values there are when the CLI loads, as Typer lists an Enum's."""

    def parse(text: str) -> str:
        allowed = values()
        if text not in allowed:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return {"parser": parse, "metavar": f"<{'|'.join(values())}>"}


ENGINE_CHOICE = live_choice(lambda: (AUTO, *engine_names()))
PrecisionChoice = choices("PrecisionChoice", (AUTO, *PRECISIONS))
TaskChoice = choices("TaskChoice", TASKS)


def plain(value: Any) -> Any:
    """A flag's value as the configuration takes it: a choice's string, anything else unchanged."""
    return value.value if isinstance(value, Enum) else value
