"""The engines fsfm can run, as data: name -> ``EngineSpec``, as timm registers its models.

An engine is one module and one ``register`` line at the end of this file. The module defines

    unavailable() -> str | None
        why the engine cannot run in this environment (and what to install), or None. It must not
        import the runtime itself: listing engines stays cheap, and the service imports no runtime
        it does not run.
    create(package: ModelPackage, selection: Selection, options: EngineOptions) -> Engine
        load the variant ``select_variant`` chose (``selection.path``) to run at
        ``selection.precision``; import the runtime here.

The spec says where the engine runs (``device``: "cpu" runs on any machine, "cuda" needs an NVIDIA
GPU) and which precisions it runs from variants of each format it reads (``reads``); ``derives``
are the precisions it makes itself from the fp32 ONNX graph (OpenVINO's bf16 hint, torch's bf16
autocast), which a package declares as a variant of that graph to record their measured drift.
Which engine and variant a package gets is decided in one place,
``fsfm.engines.select.select_variant``; ``create_engine`` makes the engine for that decision.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from fsfm.engines.base import Engine, EngineError

if TYPE_CHECKING:
    from fsfm.engines.select import Selection
    from fsfm.package import ModelPackage
    from fsfm.package.manifest import Variant


@dataclass(frozen=True)
class EngineOptions:
    """What the caller may tune, whatever the engine; an engine ignores what it has no use for."""

    threads: int | None = None  # intra-op CPU threads (None: the runtime's default, every core)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    module: str  # defines unavailable() and create(package, selection, options)
    device: Literal["cpu", "cuda"]
    reads: Mapping[str, tuple[str, ...]]  # Variant.format -> the precisions it runs from variants of that format
    derives: tuple[str, ...] = ()  # precisions it can also run from the fp32 reference graph
    needs_file: str | None = None  # a file the package must hold besides the variant (torch: model.pt)

    def _module(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.reads)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Every precision it runs, in the order its formats list them."""
        listed = [p for precisions in self.reads.values() for p in precisions] + list(self.derives)
        return tuple(dict.fromkeys(listed))

    def unavailable(self) -> str | None:
        return self._module().unavailable()

    def runs(self, variant: Variant) -> bool:
        return variant.precision in self.reads.get(variant.format, ()) or (
            variant.format == "onnx" and variant.precision in self.derives
        )

    def create(self, package: ModelPackage, selection: Selection, options: EngineOptions) -> Engine:
        return self._module().create(package, selection, options)


ENGINES: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> EngineSpec:
    """Add (or replace) an engine under ``spec.name``."""
    ENGINES[spec.name] = spec
    return spec


def engine_names() -> list[str]:
    return list(ENGINES)


def engine_spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}") from None


def combination_error(engine: str, precision: str) -> str | None:
    """Why ``engine`` can never run ``precision`` (either may be "auto"), or None."""
    if engine == "auto" or precision == "auto":
        return None
    spec = engine_spec(engine)
    if precision not in spec.precisions:
        return f"engine {engine} cannot run precision {precision}; it runs {', '.join(spec.precisions)}"
    return None


def unavailable_engines(specs: Iterable[EngineSpec] | None = None) -> dict[str, str]:
    """Engine name -> why it cannot run here, for every registered engine that cannot."""
    reasons = {spec.name: spec.unavailable() for spec in (ENGINES.values() if specs is None else specs)}
    return {name: why for name, why in reasons.items() if why is not None}


def create_engine(package: ModelPackage, selection: Selection, options: EngineOptions | None = None) -> Engine:
    """The engine ``selection`` names, loaded with the variant it chose; ``engine.selection`` says
    what was chosen and why."""
    engine = engine_spec(selection.engine).create(package, selection, options or EngineOptions())
    engine.selection = selection
    return engine


register(EngineSpec("onnxruntime", "fsfm.engines.onnxruntime", "cpu", {"onnx": ("fp32", "int8")}))
register(EngineSpec("tensorrt", "fsfm.engines.tensorrt", "cuda", {"tensorrt-plan": ("fp32", "fp16")}))
register(
    EngineSpec("torch", "fsfm.engines.torch", "cpu", {"onnx": ("fp32",)}, derives=("bf16",), needs_file="model.pt")
)
register(
    EngineSpec(
        "openvino", "fsfm.engines.openvino", "cpu", {"onnx": ("fp32",), "openvino-ir": ("int8",)}, derives=("bf16",)
    )
)
