"""``fsfm --help`` and every command's ``--help`` read well: no reStructuredText markup, one-line command
summaries, the defaults that ``Settings`` applies to ``fsfm serve``'s and ``fsfm worker``'s unset flags, and
the choices of finite options, all read from where they are defined.

Help is rendered by Typer's rich formatter in Markdown mode, on a wide, plain terminal, through
``typer.testing.CliRunner`` (in process, so this tree's code is what runs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer.main
from typer.testing import CliRunner

from fsfm.engines.registry import engine_names
from fsfm.engines.select import AUTO
from fsfm.package.manifest import PRECISIONS
from fsfm_cli import app
from service.settings import Settings
from service.worker_settings import WorkerSettings

TERMINAL = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
ROOT = typer.main.get_command(app)


def command_paths(group=ROOT, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group below ``group``, as the words that name it on the command line."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from command_paths(command, (*prefix, name))


COMMANDS = list(command_paths())


def help_text(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env=TERMINAL)
    assert result.exit_code == 0, result.output
    return result.output


def flat(text: str) -> str:
    """The help as one line of words: box drawing removed, so wrapping cannot split what a test looks for."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def listed_summaries(text: str) -> list[str]:
    """The rows of a group's Commands panel (one per line of the panel)."""
    panel = text.split("─ Commands ─", 1)[1].split("╰", 1)[0]
    return [line.strip("│ ").rstrip() for line in panel.splitlines()[1:] if line.strip("│ ")]


@pytest.mark.parametrize("words", [(), *COMMANDS], ids=lambda words: " ".join(words) or "fsfm")
def test_help_has_no_rst_markup(words: tuple[str, ...]) -> None:
    assert "``" not in help_text(*words)


def test_help_texts_have_no_tags_that_markdown_would_drop() -> None:
    """Markdown takes ``<name>`` for an HTML tag and prints nothing; write NAME instead."""

    def texts(group=ROOT) -> Iterator[tuple[str, str]]:
        for name, command in group.commands.items():
            yield name, command.help or ""
            yield from ((f"{name} --{param.name}", getattr(param, "help", None) or "") for param in command.params)
            if hasattr(command, "commands"):
                yield from texts(command)

    tagged = {where: text for where, text in texts() if re.search(r"<[A-Za-z][^>]*>", text)}
    assert not tagged


@pytest.mark.parametrize("words", [(), ("bench",)], ids=["fsfm", "fsfm bench"])
def test_every_command_has_a_one_line_summary(words: tuple[str, ...]) -> None:
    group = ROOT.commands[words[0]] if words else ROOT
    rows = listed_summaries(help_text(*words))
    assert [row.split()[0] for row in rows] == list(group.commands), rows  # no row wraps onto a second line
    for row in rows:
        summary = row.split(maxsplit=1)[1]
        assert summary[0].isupper() and summary.endswith("."), row


@pytest.mark.parametrize("field", ["host", "port", "grpc_port", "models", "max_batch_size", "detector"])
def test_serve_help_states_the_settings_defaults(field: str) -> None:
    option = f"--{field.replace('_', '-')}"
    text = flat(help_text("serve"))
    entry = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
    assert f"(default {Settings.model_fields[field].default})" in entry, entry


def test_worker_help_states_its_own_defaults_but_not_the_refused_queue_default() -> None:
    text = flat(help_text("worker"))
    for field in ("metrics_port", "claim_timeout_s", "max_deliveries", "host"):
        assert f"(default {WorkerSettings.model_fields[field].default})" in text, field
    queue = text.split(" --queue ", 1)[1].split(" --", 1)[0]
    assert "(required)" in queue and "default" not in queue


@pytest.mark.parametrize("command", ["serve", "worker", "analyze"])
def test_engine_and_precision_list_their_choices(command: str) -> None:
    text = flat(help_text(command))
    assert f"<{'|'.join((AUTO, *engine_names()))}>" in text
    assert f"<{'|'.join((AUTO, *PRECISIONS))}>" in text
    assert "<str> Inference engine" not in text


@pytest.mark.parametrize(
    "args",
    [["serve", "--engine", "cuda-magic"], ["worker", "--precision", "fp64"], ["serve", "--detector", "dlib"]],
    ids=["engine", "precision", "detector"],
)
def test_an_invalid_choice_is_a_clean_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(app, args, env=TERMINAL)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and args[-1] in result.output
    if args[1] == "--engine":
        assert all(name in result.output for name in engine_names())


def test_an_engine_registered_after_the_cli_loaded_is_accepted() -> None:
    """The engine flag checks the registry when it parses, so a plugin's engine is a valid choice; Settings then
    refuses its combination with fp64 as before (exit 2, one line), which shows the flag let it through."""
    from fsfm.engines.registry import ENGINES, EngineSpec, register

    register(EngineSpec("late-engine", "tests.recording_engine", "cpu", {"onnx": ("fp32",)}))
    try:
        result = CliRunner().invoke(app, ["serve", "--engine", "late-engine", "--precision", "int8"], env=TERMINAL)
    finally:
        ENGINES.pop("late-engine")
    assert result.exit_code == 2, result.output
    assert "error: invalid settings" in result.output and "late-engine" in result.output
