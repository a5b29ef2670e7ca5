"""The ``fsfm`` command line, composed at the top so that no package below it imports another's commands:
the core's (``fsfm.cli``: setup), training's (``training.commands``, ``training.finetune_commands``:
prepare, pretrain, finetune, evaluate, export, calibrate, quantize, pull), the service's (``service.commands``:
serve; ``service.worker_command``: worker; ``service.analyze_command``: analyze) and the benchmarks'
(``benchmarks.commands``: the ``bench`` group).

Every command imports its heavy dependencies (torch, the service) inside its body, so ``fsfm analyze`` and
``fsfm serve`` work in an environment without PyTorch. Console script: ``fsfm = "fsfm_cli:app"``;
``python -m fsfm_cli`` runs the same app.
"""

from __future__ import annotations

import typer

from benchmarks.commands import bench_app
from fsfm.cli import setup
from service.analyze_command import analyze
from service.commands import serve
from service.worker_command import worker
from training.commands import prepare, pretrain
from training.finetune_commands import calibrate, evaluate, export, finetune, pull, quantize

# Help texts are Markdown: `code` renders as code, and a docstring's line breaks only wrap its paragraph
# (the first paragraph is the command's summary in `fsfm --help`).
HELP_MARKUP = "markdown"
COMMANDS = (setup, analyze, export, serve, worker, prepare, pretrain, finetune, evaluate, calibrate, quantize, pull)

app = typer.Typer(
    name="fsfm",
    help="FSFM face security: deepfake, liveness and diffusion-forgery detection.",
    rich_markup_mode=HELP_MARKUP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command in COMMANDS:
    app.command()(command)
app.add_typer(bench_app, name="bench")
